"""``ampflow doctor --gpu`` on a machine without a GPU: the report rendered from a recorded H100 result
(tests/data/gpu_check_h100.json, a fixture with plausible figures), the checks' verdicts, the fp16
overflow check with a real CPU GradScaler, what the sweep trains, and the exit codes without CUDA."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ampflow.cli import main
from ampflow.compare import gpu_report
from ampflow.config import ConfigError, RunConfig, SweepEntry, SweepSpec
from ampflow.engine import gpucheck, peaks
from ampflow.engine.devices import device_name
from ampflow.steps import Paths, bench, doctor

FIXTURE = Path(__file__).parent / "data" / "gpu_check_h100.json"


@pytest.fixture
def h100() -> dict:
    return json.loads(FIXTURE.read_text())


def test_markdown_from_a_recorded_h100_check(h100):
    md = gpu_report.render_markdown(h100)
    assert md.startswith("# GPU check: PASSED on NVIDIA H100 80GB HBM3")
    assert "compute capability 9.0" in md and "NCCL 2.27.3" in md and "fp8: yes" in md
    assert "| bf16 | 989.5 | table |" in md and "| fp8 | 1,979.0 | table |" in md
    assert "- **PASS** timing: CUDA events 0.8312 s vs synchronised wall clock 0.8338 s: 0.31 % apart" in md
    assert "- **SKIP** ddp_nccl: needs 2 or more GPUs; this machine has 1" in md
    # samples/s, MFU, memory, both speedups, time to target (or not reached), J/sample, accuracy
    assert "| bf16-mixed | 512 | 5300.0 | 9.8% | 29,373 | 3.66x | 1.76x | 17.5 | 0.115 | 0.6722 | ok |" in md
    assert "| bf16-true | 1024 | 6900.0 | 12.7% | 21,076 | 4.76x | 2.29x | not reached |" in md
    assert "| tf32 | 512 | 3010.0 | 11.1% |" in md and "| 2.08x | 1.00x |" in md


def test_a_failed_check_fails_the_report(h100):
    h100["checks"][2] = gpucheck.oom_verdict({"chosen": 512, "stop_reason": "cap", "trials": []}, None)
    h100["passed"] = gpu_report.passed(h100)
    md = gpu_report.render_markdown(h100)
    assert h100["passed"] is False
    assert md.startswith("# GPU check: FAILED") and "- **FAIL** oom_batch_search: no out-of-memory" in md
    failed_run = copy.deepcopy(json.loads(FIXTURE.read_text()))
    failed_run["configs"][5]["status"] = "failed"
    assert gpu_report.passed(failed_run) is False


def test_html_report_has_tables_checks_and_plots(h100):
    html = gpu_report.render_html(h100)
    assert html.startswith("<!doctype html>") and "GPU check: PASSED on NVIDIA H100 80GB HBM3" in html
    assert "<td>bf16-mixed-compiled</td>" in html and "<td>5.59x</td>" in html
    assert "<li class='pass'><b>PASS</b> fp16_overflow" in html
    pytest.importorskip("matplotlib")
    assert html.count("<img alt=") == 5  # samples/s, MFU, memory, two speedups


def test_rows_read_the_run_folders_and_compute_both_speedups(tmp_path):
    def run(cid: str, sps: float, **extra: float) -> dict:
        d = tmp_path / cid
        (d / "eval").mkdir(parents=True)
        metrics = {"samples_per_s": sps, "mfu": 0.1, "batch_size": 64, "peak_memory_bytes": 2**30, **extra}
        (d / "result.json").write_text(json.dumps({"metrics": metrics, "mfu_peak_source": "table"}))
        (d / "eval" / "eval.json").write_text(json.dumps({"accuracy": 0.7}))
        precision = cid.removesuffix("-compiled")
        return {
            "id": cid,
            "precision": precision,
            "compile": cid != precision,
            "status": "ok",
            "run_dir": str(d),
        }

    rows = gpu_report.config_rows(
        [
            run("32-true", 100.0),
            run("tf32", 250.0),
            run("bf16-mixed", 400.0, time_to_target_s=9.5, joules_per_sample=0.2),
            run("bf16-mixed-compiled", 500.0),
        ]
    )
    by = {r["config_id"]: r for r in rows}
    assert by["bf16-mixed"]["speedup_vs_32_true"] == pytest.approx(4.0)
    assert by["bf16-mixed"]["speedup_vs_tf32"] == pytest.approx(1.6)
    assert by["bf16-mixed-compiled"]["speedup_vs_32_true"] == pytest.approx(5.0)
    assert (by["bf16-mixed"]["time_to_target_s"], by["bf16-mixed"]["joules_per_sample"]) == (9.5, 0.2)
    assert by["32-true"]["time_to_target_s"] is None and by["tf32"]["accuracy"] == 0.7


@pytest.mark.parametrize(
    "event_s, status", [(1.015, "pass"), (0.985, "pass"), (1.025, "fail"), (0.97, "fail")]
)
def test_timing_verdict_is_2_percent(event_s, status):
    assert gpucheck.timing_verdict(event_s, 1.0)["status"] == status


def test_oom_and_ddp_verdicts():
    trials = [{"batch_size": b, "outcome": "ok"} for b in (8, 16, 32)] + [
        {"batch_size": 64, "outcome": "oom"}
    ]
    report = {"chosen": 32, "stop_reason": "out_of_memory", "trials": trials}
    assert gpucheck.oom_verdict(report, True)["status"] == "pass"
    assert gpucheck.oom_verdict(report, False)["status"] == "fail"
    assert gpucheck.oom_verdict(None, None, "boom")["status"] == "fail"
    assert gpucheck.ddp_verdict(3e-7, True)["status"] == "pass"
    assert gpucheck.ddp_verdict(2e-3, False)["status"] == "fail"
    assert gpucheck.ddp_verdict(None, False, "two exited 1")["detail"] == "two exited 1"


def test_the_ddp_check_runs_two_processes_under_the_shared_torchrun_program(tmp_path, monkeypatch):
    """The NCCL check's launcher is :func:`ampflow.commands.torchrun_program` (no argv of its own);
    a launch that fails is a failed check naming the log."""
    from ampflow import commands

    calls = []

    class Done:
        def __init__(self, argv):
            calls.append(argv)
            self.returncode = 1 if "torch.distributed.run" in argv else 0

    monkeypatch.setattr(commands, "_free_port", lambda: 29613)
    monkeypatch.setattr(gpucheck.subprocess, "run", lambda argv, **kw: Done(argv))
    result = gpucheck.check_ddp(tmp_path, 2)
    assert result["status"] == "fail" and result["detail"].startswith("two exited 1; see ")
    two = calls[-1]
    assert tuple(two[:7]) == commands.torchrun_program(2, 29613)
    assert two[7] == "train" and two[two.index("--strategy") + 1] == "ddp"


def test_injected_overflow_is_skipped_and_the_scale_drops_with_a_real_scaler():
    result = gpucheck.check_overflow(torch.device("cpu"))
    assert result["status"] == "pass", result["detail"]
    assert result["scale_after"] == result["scale_before"] / 2
    taken = gpucheck.overflow_verdict(
        stepped=True,
        skipped_steps=0,
        scale_before=8.0,
        scale_after=8.0,
        weights_kept=False,
        next_stepped=True,
    )
    assert taken["status"] == "fail" and "TAKEN" in taken["detail"]


def test_the_sweep_covers_what_the_device_supports():
    h100 = {"bf16_native": True, "fp8_supported": True, "fp8_unsupported_reason": None}
    precisions = gpucheck.supported_precisions(h100)
    assert precisions == ["32-true", "tf32", "16-mixed", "bf16-mixed", "bf16-true", "fp8"]
    no_torchao = {**h100, "fp8_unsupported_reason": "torchao is not installed"}
    assert "fp8" not in gpucheck.supported_precisions(no_torchao)
    assert gpucheck.supported_precisions({"bf16_native": False}) == ["32-true", "tf32", "16-mixed"]
    sweep, entries = doctor.sweep_entries(precisions)
    assert [e.id for e in entries] == [*precisions[:4], "bf16-mixed-compiled", "bf16-true", "fp8"]
    settings = doctor.sweep_settings(40, 0.6, ["max_steps=60"])
    assert "batch_size=auto" in settings and "device=cuda" in settings and settings[-1] == "max_steps=60"
    assert RunConfig(recipe=doctor.RECIPE).with_overrides(settings).max_steps == 60


def test_bench_refuses_entries_outside_its_sweep(tmp_path):
    sweep = SweepSpec(("32-true",))
    with pytest.raises(ConfigError, match="entries must be"):
        bench.run(RunConfig(), Paths.of(out=tmp_path), sweep=sweep, entries=[SweepEntry("tf32", False)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_doctor_gpu_without_cuda_is_exit_2_one_line(tmp_path, capsys):
    assert main(["doctor", "--gpu", "--out", str(tmp_path / "gc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0] and "torch.cuda.is_available() is false" in err[0]
    assert not (tmp_path / "gc").exists()


def test_doctor_gpu_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--gpu", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--no-bench" in out and "ampflow doctor --gpu --out gpu-check/" in out


def test_doctor_without_gpu_prints_this_cpu_and_its_cached_peaks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AMPFLOW_CACHE_DIR", str(tmp_path))
    cpu = torch.device("cpu")
    for dtype in ("fp32", "tf32", "fp16", "bf16"):  # a warm cache: no probe in the test
        key = peaks.cache_key(cpu, device_name(cpu), dtype)
        peaks.write_cache(key, {"flops": 2.5e10, "detail": "probed: test"})
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "| fp32 | 0.025 | probe | probed: test |" in out and "fp8: no" in out
