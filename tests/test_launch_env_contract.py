"""The container command in the manifests works where the operator starts it.

Each "pod" here is a process started with the exact ``command`` of a replica's container and the
environment the operator injects into that pod (``tests/data/crds/README.md``): for a PyTorchJob v1
``MASTER_ADDR``/``PET_MASTER_ADDR``, ``MASTER_PORT``/``PET_MASTER_PORT``, ``WORLD_SIZE`` (replicas x
nprocPerNode), ``RANK``/``PET_NODE_RANK``, ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PYTHONUNBUFFERED``;
for a Trainer v2 TrainJob only the five ``PET_*`` variables. The address is 127.0.0.1 instead of
``<job>-master-0`` (no cluster DNS here) and the port a free local one; gloo on CPU stands in for NCCL.
No GPU and no cluster here; everything else is the real thing: real ``torchrun``, real processes.

1. torchrun's own parser reads the per-pod facts from that environment (no processes, fast);
2. the command's torchrun prefix forms the expected world (Master + Worker pods, or 2 processes in
   one pod), checked by an all-reduce in a probe script;
3. the full command, ``ampflow train --strategy ddp`` included, trains under it (2 pods x 1 process)
   on the fixture recipe ``tests.recipes_fixture:tiny``.

    .venv/bin/python -m pytest tests/test_launch_env_contract.py -q
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ampflow.kube import LaunchSpec, build_manifest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POD_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pods_of(manifest: dict[str, Any]) -> list[tuple[int, list[str], dict[str, str]]]:
    """(node rank, command, the container's own plain env) for every pod the operator would start."""
    if manifest["kind"] == "PyTorchJob":
        replicas = manifest["spec"]["pytorchReplicaSpecs"]
        out = []
        rank = 0
        for rtype in ("Master", "Worker"):
            if rtype not in replicas:
                continue
            c = replicas[rtype]["template"]["spec"]["containers"][0]
            for _ in range(replicas[rtype]["replicas"]):
                out.append((rank, c["command"], {e["name"]: e["value"] for e in c["env"] if "value" in e}))
                rank += 1
        return out
    t = manifest["spec"]["trainer"]
    env = {e["name"]: e["value"] for e in t["env"] if "value" in e}
    return [(i, t["command"], env) for i in range(t["numNodes"])]


def operator_env(manifest: dict[str, Any], node_rank: int, port: int) -> dict[str, str]:
    """What the operator adds to a pod's environment (see the module docstring)."""
    if manifest["kind"] == "PyTorchJob":
        replicas = manifest["spec"]["pytorchReplicaSpecs"]
        nnodes = sum(r["replicas"] for r in replicas.values())
        nproc = int(manifest["spec"]["nprocPerNode"])
        return {
            "MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PET_MASTER_PORT": str(port),
            "WORLD_SIZE": str(nnodes * nproc),
            "RANK": str(node_rank),
            "PET_NODE_RANK": str(node_rank),
            "PET_NNODES": str(nnodes),
            "PET_NPROC_PER_NODE": str(nproc),
            "PYTHONUNBUFFERED": "1",
        }
    t = manifest["spec"]["trainer"]
    return {
        "PET_NNODES": str(t["numNodes"]),
        "PET_NPROC_PER_NODE": str(t["numProcPerNode"]),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(port),
    }


def base_env() -> dict[str, str]:
    """This process's environment without any distributed variables it might carry."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PET_", "TORCHELASTIC_"))
        and k
        not in (
            "MASTER_ADDR",
            "MASTER_PORT",
            "WORLD_SIZE",
            "RANK",
            "LOCAL_RANK",
            "GROUP_RANK",
            "LOCAL_WORLD_SIZE",
        )
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # torchrun and ampflow, as on the image's PATH
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT)  # the fixture recipe lives in tests/
    # MLflow is not what this contract is about (and a store would land in the repository): off
    env["AMPFLOW_TRACKING"] = "off"
    return env


def run_pods(manifest: dict[str, Any], command_for: Any, tmp: Path) -> list[tuple[int, str]]:
    """Start every pod at once (as the operator does) and wait; returns (exit code, output) per pod."""
    port = free_port()
    procs = []
    for rank, command, container_env in pods_of(manifest):
        env = {**base_env(), **container_env, **operator_env(manifest, rank, port)}
        log = open(tmp / f"pod{rank}.log", "w+b")  # noqa: SIM115 - closed below
        # the manifest's own argv, no shell; a new session so a stuck pod can be killed whole
        proc = subprocess.Popen(  # noqa: S603
            command_for(command),
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append((proc, log))
    results = []
    for proc, log in procs:
        try:
            proc.wait(timeout=POD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers, which we started
            proc.wait()
        log.seek(0)
        results.append((proc.returncode, log.read().decode("utf-8", "replace")))
        log.close()
    return results


def _spec(api: str, nodes: int, gpus: int, data: str = "/unused", **kw: Any) -> LaunchSpec:
    return LaunchSpec(
        recipe="tests.recipes_fixture:tiny",
        data=data,
        nodes=nodes,
        gpus_per_node=gpus,
        image="ampflow:test",
        api=api,
        **kw,
    )


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("role", [0, 1])
def test_torchrun_reads_the_operator_env(api: str, role: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.run import config_from_args, get_args_parser

    m = build_manifest(_spec(api, nodes=2, gpus=8))
    rank, command, _ = pods_of(m)[role]
    for k, v in operator_env(m, rank, 23456).items():
        monkeypatch.setenv(k, v)
    args = get_args_parser().parse_args(command[1:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", role)
    assert (args.master_addr, args.master_port) == ("127.0.0.1", 23456)
    assert args.module and args.training_script == "ampflow" and args.training_script_args[0] == "train"
    config, _, _ = config_from_args(args)
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (2, 2, 8)


PROBE = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE")
    out = {k: os.environ.get(k) for k in keys}
    out["rank_sum"] = t.item()
    with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as fh:
        json.dump(out, fh)
    dist.destroy_process_group()
""")


@pytest.mark.slow
@pytest.mark.parametrize("api,nodes,gpus", [("pytorchjob", 2, 0), ("trainjob", 2, 0), ("pytorchjob", 1, 2)])
def test_command_forms_the_world(api: str, nodes: int, gpus: int, tmp_path: Path) -> None:
    """The manifest's torchrun prefix, per pod, under the operator's env: one world of 2 processes."""
    m = build_manifest(_spec(api, nodes, gpus))
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)

    def with_probe(command: list[str]) -> list[str]:
        return [*command[: command.index("-m")], str(probe), str(tmp_path)]

    results = run_pods(m, with_probe, tmp_path)
    for code, output in results:
        assert code == 0, output[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["WORLD_SIZE"] for r in ranks] == ["2", "2"]
    assert all(r["rank_sum"] == 1.0 for r in ranks)  # 0 + 1: both processes in one group
    # node rank of each process = the pod it runs in
    expected_groups = ["0", "1"] if nodes == 2 else ["0", "0"]
    assert [r["GROUP_RANK"] for r in ranks] == expected_groups


def test_exact_command_trains_under_the_operator_env(tmp_path: Path) -> None:
    """Master + Worker pods, each running the manifest's command verbatim: ``torchrun ... -m ampflow
    train --strategy ddp``. Rank 0 writes the result; it reports 2 processes."""
    from tests.recipes_fixture import write_dataset

    data = write_dataset(tmp_path / "data", n_train=256, n_val=64, n_test=64)
    out = tmp_path / "run"
    m = build_manifest(
        _spec(
            "pytorchjob",
            2,
            0,
            data=str(data),
            out=str(out),
            overrides={"max_steps": 6, "warmup_steps": 1, "device": "cpu", "log_every": 2},
        )
    )
    results = run_pods(m, lambda command: command, tmp_path)
    for code, output in results:
        assert code == 0, output[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["strategy"] == "ddp"
    assert result["metrics"]["steps"] == 6
