"""Pipeline x data parallelism (``--strategy pp --set mesh=dp:2,pp:2``): the layout rules, and one real
torchrun run (gloo, CPU) against one process; and ``--compile`` under pp and tp against the same one
eager process.

The mesh is ``pp:P,dp:D`` whatever order a setting names it in: ``pp`` outermost, so the ``D`` replicas
of a stage are neighbouring ranks (torchtitan's and Megatron-LM's order), exactly the groups
``init_device_mesh`` builds for that shape. The run: 4 processes, 2 pipelines of 2 stages each (1F1B
over the 2 micro-batches of ``grad_accum``), each pipeline reading half of every global micro-batch,
gradients averaged over the replicas of a stage, clipping active; after 3 steps its loss curve, its
validation and its weights equal those of one process on the same data and seed within the existing
pipeline test's tolerance (``ATOL``/``RTOL`` of :mod:`tests.test_strategies_tp_pp`: float32 summation
order only).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ampflow.cli import main
from ampflow.commands import torchrun_program
from ampflow.config import ConfigError, RunConfig, SweepSpec
from ampflow.engine import mesh
from tests.recipes_transformer import INFO, NAME, TinyTransformer, write_dataset

ROOT = Path(__file__).resolve().parents[1]
# as tests/test_strategies_tp_pp.py: float32 summation-order differences over a few AdamW steps
ATOL, RTOL = 1e-5, 1e-4
STEPS = 3
# the global gradient norms of the 3 steps are about 6.9, 4.5 and 3.2 (measured): clip_grad_norm=5 clips
# the first step only. AdamW undoes a scale common to every step, so clipping that scaled every step
# would hide a wrong norm; a norm that counted the dp replicas twice (x 1.41) clips the second step
# too, and one that missed the other stage clips less, and either moves the weights
COMMON = ["--set", "batch_size=8", "--set", "grad_accum=2", "--set", "warmup_steps=0"]
COMMON += ["--set", "lr_schedule=constant", "--set", "lr_warmup_steps=0", "--set", "clip_grad_norm=5"]
COMMON += ["--set", f"max_steps={STEPS}", "--set", f"val_every={STEPS}", "--set", "comm_profile_steps=0"]


# -- the layout, torch-free ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["dp:2,pp:2", "pp:2,dp:2", "pp:2", "dp:2"])
def test_pp_dp_mesh_puts_pp_outermost_whatever_the_spelling(text):
    layout = mesh.resolve("pp", text, world=4)
    assert layout.shape == {"pp": 2, "dp": 2} and layout.text() == "pp:2,dp:2"
    # a stage's two replicas are neighbours (0,1 run stage 0; 2,3 stage 1); a pipeline is 0,2 or 1,3
    assert [layout.coord(r, "pp") for r in range(4)] == [0, 0, 1, 1]
    assert [layout.coord(r, "dp") for r in range(4)] == [0, 1, 0, 1]


def test_pp_mesh_fills_the_missing_size_and_keeps_the_plain_pipeline():
    assert mesh.resolve("pp", None, world=4).shape == {"pp": 4}
    assert mesh.resolve("pp", "pp:4", world=4).shape == {"pp": 4}
    assert mesh.resolve("pp", "dp:1,pp:2", world=2).shape == {"pp": 2}
    assert mesh.resolve("pp", "dp:4", world=8).shape == {"pp": 2, "dp": 4}
    # the launcher's nodes x GPUs per node: mesh=pp:NODES puts one stage on each node, dp inside it
    layout = mesh.resolve("pp", "pp:2", world=8, local_world=4)
    assert layout.shape == {"pp": 2, "dp": 4}
    assert [layout.coord(r, "pp") for r in range(8)] == [r // 4 for r in range(8)]


@pytest.mark.parametrize(
    ("text", "world", "needle"),
    [
        ("dp:3", 4, "mesh dp:3: dp:3 does not divide the world size 4"),
        ("pp:3", 4, "mesh pp:3: pp:3 does not divide the world size 4"),
        ("dp:2,pp:2", 6, "mesh pp:2,dp:2 covers 4 ranks but the world size is 6"),
        ("dp:2,tp:2", 4, "strategy pp uses pp, dp, not tp"),
    ],
)
def test_pp_dp_mesh_refuses_a_layout_that_does_not_fit(text, world, needle):
    with pytest.raises(ConfigError, match=needle):
        mesh.resolve("pp", text, world=world)


def test_the_layout_is_the_device_mesh_the_process_group_builds():
    """init_device_mesh's groups for the layout's shape and names (a fake process group of 4 ranks in
    this process) are the ranks Layout.coord puts together."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    layout = mesh.resolve("pp", "dp:2,pp:2", world=4)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
    try:
        device_mesh = init_device_mesh(
            "cpu", tuple(layout.shape.values()), mesh_dim_names=tuple(layout.shape)
        )
        grid = device_mesh.mesh.tolist()  # [pp][dp] -> global rank
    finally:
        dist.destroy_process_group()
    for r in range(4):
        pp, dp = layout.coord(r, "pp"), layout.coord(r, "dp")
        assert grid[pp][dp] == r
        # the pp group of r: its pipeline (same dp index); its dp group: its stage's replicas
        assert [row[dp] for row in grid] == [q for q in range(4) if layout.coord(q, "dp") == dp]
        assert grid[pp] == [q for q in range(4) if layout.coord(q, "pp") == pp]


def _config(**kw) -> RunConfig:
    return RunConfig(recipe=NAME, strategy="pp", learning_rate=1e-3, **{"batch_size": 8, **kw})


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"mesh": "dp:1,pp:4"}, "2 layers do not split evenly into 4 stages"),
        (
            {"mesh": "dp:2,pp:2", "pp_schedule": "1f1b", "grad_accum": 1},
            "needs at least as many micro-batches",
        ),
        ({"mesh": "dp:3,pp:2"}, "batch_size 8 must be a multiple of the data-parallel size 3"),
    ],
)
def test_pp_dp_layout_rules_before_any_process_group(kw, needle):
    world = 6 if kw["mesh"] == "dp:3,pp:2" else 4
    with pytest.raises(ConfigError, match=needle):
        mesh.check(_config(**kw), TinyTransformer(), INFO, world, world)
    assert mesh.check(_config(mesh="dp:2,pp:2"), TinyTransformer(), INFO, 4, 4).shape == {"pp": 2, "dp": 2}


def test_train_refuses_a_pp_dp_mesh_that_misses_the_world_size_with_exit_2(tmp_path, monkeypatch, capsys):
    import torch.distributed as dist

    def refuse(*_a, **_k):  # reaching it would mean the layout was not checked first
        raise AssertionError("a process group was created for a bad layout")

    monkeypatch.setattr(dist, "init_process_group", refuse)
    env = {"RANK": "0", "WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "6", "MASTER_ADDR": "127.0.0.1"}
    for k, v in {**env, "MASTER_PORT": "1", "AMPFLOW_TRACKING": "off"}.items():
        monkeypatch.setenv(k, v)
    data = write_dataset(tmp_path / "data", n_train=16, n_val=4, n_test=4)
    argv = ["train", "--strategy", "pp", "--recipe", NAME, "--data", str(data), "--out", str(tmp_path / "r")]
    assert main([*argv, "--set", "max_steps=1", "--set", "mesh=dp:2,pp:2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "covers 4 ranks but the world size is 6" in err[0], err
    assert not dist.is_initialized()


def test_bench_and_launch_take_a_pp_dp_mesh(tmp_path):
    """`ampflow bench --strategies pp --set mesh=dp:2,pp:2 --nproc-per-node 4` passes bench's checks
    (the process count against the mesh, then train's layout rules per configuration); `ampflow
    launch` maps nodes x GPUs per node onto it."""
    from ampflow.kube.manifests import LaunchSpec, container_command
    from ampflow.steps.bench import _check_layouts, check_nproc

    sweep = SweepSpec.from_words("32-true", "off,on", strategies="pp")
    check_nproc(sweep, 4, "dp:2,pp:2")
    with pytest.raises(ConfigError, match="covers 4 ranks but the world size is 8"):
        check_nproc(sweep, 8, "dp:2,pp:2")
    data = write_dataset(tmp_path / "data", n_train=16, n_val=4, n_test=4)
    # the bench CLI's config carries its --set values; the strings say which keys the user set
    config = RunConfig(recipe=NAME, mesh="dp:2,pp:2", batch_size=8, grad_accum=2)
    _check_layouts(config, sweep, data, 4, ["mesh=dp:2,pp:2", "batch_size=8", "grad_accum=2"])
    with pytest.raises(ConfigError, match="batch_size 6 must be a multiple of the data-parallel size 4"):
        _check_layouts(
            config.replace(mesh="dp:4", batch_size=6), sweep, data, 8, ["mesh=dp:4", "batch_size=6"]
        )
    spec = {"recipe": "tweets-minilm", "data": "/data", "image": "reg/ampflow:1", "strategy": "pp"}
    with pytest.raises(ConfigError, match="covers 6 ranks but the world size is 4"):
        LaunchSpec(**spec, nodes=2, gpus_per_node=2, overrides={"mesh": "dp:3,pp:2"})
    argv = container_command(LaunchSpec(**spec, nodes=2, gpus_per_node=2, overrides={"mesh": "dp:2,pp:2"}))
    assert "--nnodes=2" in argv and "--nproc-per-node=2" in argv and "mesh=dp:2,pp:2" in argv


# -- real runs ----------------------------------------------------------------------------------


def _final_weights(run: Path) -> dict:
    """The run's last checkpoint's weights as one plain model's state dict, whatever its format."""
    from ampflow.engine import checkpoint

    state = checkpoint.load(run)
    if "model" in state:
        return state["model"]
    model = TinyTransformer().build_model(INFO)
    checkpoint.load_model_weights(model, state)
    return model.state_dict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The dataset and one process's run of COMMON on it (eager): ``(data, run dir, result)``."""
    tmp = tmp_path_factory.mktemp("pp_dp")
    data = write_dataset(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMPFLOW_TRACKING", "off")
        assert main(["train", "--recipe", NAME, "--data", str(data), "--out", str(tmp / "ref"), *COMMON]) == 0
    return data, tmp / "ref", json.loads((tmp / "ref" / "result.json").read_text())


def _torchrun(
    nproc: int, data: Path, out: Path, *extra: str, env: dict | None = None, strategy: str = "pp"
) -> dict:
    argv = [*torchrun_program(nproc), "train", "--strategy", strategy, "--recipe", NAME, "--data", str(data)]
    argv += ["--out", str(out), *COMMON, *extra]
    env = {
        **os.environ,
        "AMPFLOW_TRACKING": "off",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)  # noqa: S603
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def _assert_trains_like(got: dict, run: Path, want: dict, ref: Path) -> None:
    """Loss curve, validation and final weights of ``got`` (written to ``run``) are one process's."""
    import torch

    # the loss of each step is the global batch's mean, not one pipeline's
    assert [s for s, _ in got["loss_curve"]] == [s for s, _ in want["loss_curve"]] == [1, 2, 3]
    torch.testing.assert_close(
        [v for _, v in got["loss_curve"]], [v for _, v in want["loss_curve"]], atol=ATOL, rtol=RTOL
    )
    # each example of the 16 in the val split counted once (up to one near a tie)
    assert [p[0] for p in got["val_curve"]] == [p[0] for p in want["val_curve"]] == [STEPS]
    assert got["val_curve"][0][2] == pytest.approx(want["val_curve"][0][2], abs=1 / 16)
    a, b = _final_weights(run), _final_weights(ref)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=lambda msg, k=k: f"{k}: {msg}")


@pytest.mark.slow
def test_pp_dp_2x2_matches_one_process(reference, tmp_path):
    """2 pipelines x 2 stages on 4 processes train like one process on the whole global batch."""
    data, ref, want = reference
    run = tmp_path / "pp_dp"
    got = _torchrun(4, data, run, "--set", "mesh=dp:2,pp:2", "--set", "pp_schedule=1f1b")
    assert (got["strategy"], got["mesh"], got["world_size"]) == ("pp", "pp:2,dp:2", 4)
    m = got["metrics"]
    # 2 stages over 2 micro-batches: (p - 1) / (m + p - 1) idles; speed per device over all 4 ranks
    assert (m["pp_stages"], m["pp_microbatches"]) == (2, 2)
    assert m["pp_bubble_fraction"] == pytest.approx(1 / 3)
    assert m["samples_per_s_per_device"] * 4 == pytest.approx(m["samples_per_s"])
    assert m["global_batch_size"] == 16
    _assert_trains_like(got, run, want, ref)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["pp", "tp"])
def test_a_compiled_layout_matches_one_eager_process(reference, tmp_path, strategy):
    """--compile under pp (each rank's stage module) and under tp (each rank's model with DTensor
    weights): compiled by inductor on CPU, once, and trains like one eager process (fusions move
    float32 results by a few ulps only)."""
    data, ref, want = reference
    run, cache = tmp_path / f"{strategy}_compiled", tmp_path / "inductor"
    got = _torchrun(2, data, run, "--compile", env={"TORCHINDUCTOR_CACHE_DIR": str(cache)}, strategy=strategy)
    assert (got["compile"], got["mesh"]) == (True, f"{strategy}:2")
    # inductor generated the stages' kernels (a fresh cache: nothing reused), in the first step only
    assert any(cache.rglob("*.py")), "inductor compiled nothing"
    assert got["metrics"]["compile_s"] > 0 and got["metrics"]["recompiles"] == 0
    _assert_trains_like(got, run, want, ref)


@pytest.mark.slow
def test_fsdp_sharded_by_the_recipes_layers_matches_one_process(reference, tmp_path):
    """fsdp with the recipe's ``fsdp_units`` (one FSDP2 unit per encoder layer, the root holding the
    embeddings and the head) trains like one process, and writes DCP shards."""
    data, ref, want = reference
    run = tmp_path / "fsdp_units"
    got = _torchrun(2, data, run, strategy="fsdp")
    assert (got["strategy"], got["world_size"], got["checkpoint_format"]) == ("fsdp", 2, "sharded")
    _assert_trains_like(got, run, want, ref)


def test_fsdp_shards_the_recipes_units_then_the_root():
    """``fsdp_units`` decides FSDP2's units: the two encoder layers and the root (a fake process group
    of 2 ranks in this process; sharding a module needs no collective). Without the method, every
    module holding parameters directly becomes a unit."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from ampflow.engine.precision import make_policy
    from ampflow.engine.tensor_parallel import apply_fsdp

    policy = make_policy("32-true", "cpu")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        by_layer = apply_fsdp(TinyTransformer().build_model(INFO), policy, None, TinyTransformer())
        by_module = apply_fsdp(TinyTransformer().build_model(INFO), policy, None, None)
    finally:
        dist.destroy_process_group()
    units = [n for n, m in by_layer.named_modules() if isinstance(m, FSDPModule)]
    assert units == ["", "encoder.encoder.layer.0", "encoder.encoder.layer.1"]
    assert len([m for m in by_module.modules() if isinstance(m, FSDPModule)]) > 10
