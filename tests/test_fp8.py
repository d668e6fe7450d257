"""The fp8 precision mode: refused off fp8 tensor cores (CPU included) with one line saying what it
needs; the capability rule on stand-in capabilities; which Linear layers it converts."""

from __future__ import annotations

import pytest
import torch

from ampflow.cli import main
from ampflow.config import PRECISIONS, ConfigError
from ampflow.engine import precision
from ampflow.engine.precision import MODES, check_supported, fp8_layer_filter, fp8_refusal
from tests.recipes_fixture import NAME, write_dataset


def test_fp8_is_a_precision_with_bf16_autocast_and_the_fp8_peak():
    assert "fp8" in PRECISIONS
    spec = MODES["fp8"]
    assert (spec.autocast, spec.param_dtype, spec.scaler, spec.compute, spec.float8) == (
        "bfloat16",
        "float32",
        False,
        "fp8",
        True,
    )


def test_train_fp8_on_cpu_is_exit_2_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")
    data = write_dataset(tmp_path / "data")
    argv = ["train", "--recipe", NAME, "--data", str(data), "--out", str(tmp_path / "run")]
    assert main([*argv, "--precision", "fp8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    # both needs, the GPU and torchao, and how to get torchao (pyproject's fp8 extra)
    assert err[0] == (
        "ampflow train: error: precision fp8 needs an NVIDIA GPU with fp8 tensor cores, compute capability 8.9 or "
        "later (L4, L40S, RTX 4090/6000 Ada, H100, H200, B200) and torchao (pip install 'ampflow[fp8]'); "
        "device cpu is not such a GPU: use bf16-mixed"
    )
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_bench_fp8_on_cpu_is_refused_before_anything_trains(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--recipe", NAME, "--precisions", "32-true,fp8", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "precision fp8 needs" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "capability, torchao, refused",
    [
        ((7, 0), True, "compute capability 7.0"),  # V100
        ((8, 0), True, "compute capability 8.0"),  # A100: bf16 yes, fp8 no
        ((8, 6), True, "compute capability 8.6"),  # A10, RTX 30xx
        ((8, 9), True, None),  # Ada: L4, L40S, RTX 4090
        ((9, 0), True, None),  # Hopper
        ((10, 0), True, None),  # Blackwell
        ((9, 0), False, "torchao is not installed"),
    ],
)
def test_capability_rule(capability, torchao, refused):
    reason = fp8_refusal("cuda", capability, "Some GPU", torchao)
    if refused is None:
        assert reason is None
    else:
        assert refused in reason and "\n" not in reason
        assert "pip install 'ampflow[fp8]'" in reason  # a GPU too old still learns the whole recipe
        assert torchao is False or "compute capability 8.9 or later" in reason and "and torchao" in reason


def test_check_supported_reads_the_real_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ConfigError, match=r"NVIDIA A100-SXM4-80GB has compute capability 8\.0"):
        check_supported("fp8", "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(precision, "fp8_refusal", lambda *a: None)
    check_supported("fp8", "cuda")  # accepted on Hopper


def test_only_linears_with_dims_divisible_by_16_run_in_fp8():
    assert fp8_layer_filter(torch.nn.Linear(384, 1536), "encoder.layer.0.intermediate.dense")
    assert not fp8_layer_filter(torch.nn.Linear(384, 3), "head")


def test_conversion_swaps_eligible_linears_when_torchao_is_there():
    pytest.importorskip("torchao.float8")
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    converted = _fp8_policy().convert_model(model)
    kinds = [type(m).__name__ for m in converted if not isinstance(m, torch.nn.ReLU)]
    assert kinds == ["Float8Linear", "Linear"]
    assert converted[0].weight.dtype == torch.float32  # fp32 master weights


def _fp8_policy() -> precision.PrecisionPolicy:
    return precision.PrecisionPolicy("fp8", "cuda", MODES["fp8"])
