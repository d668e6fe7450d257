"""Precision policy units: the scaler exists only for 16-mixed, unscale precedes clipping, an injected inf
gradient is a counted skipped step, and fp16 on CPU is refused rather than switched.

The 16-mixed policy is built here with a real ``torch.amp.GradScaler("cpu")`` (torch allows a CPU
scaler), which is exactly the object ``make_policy`` builds on CUDA; only ``make_policy`` refuses it on
CPU, because fp16 *training* math on CPU is the thing we refuse.
"""

from __future__ import annotations

import math

import pytest
import torch

from ampflow.config import PRECISIONS, ConfigError
from ampflow.engine.precision import MODES, PrecisionPolicy, check_supported, make_policy
from ampflow.engine.step import Stepper

torch.set_num_threads(1)


def fp16_policy_on_cpu(init_scale: float = 1024.0) -> PrecisionPolicy:
    return PrecisionPolicy(
        "16-mixed", "cpu", MODES["16-mixed"], torch.amp.GradScaler("cpu", init_scale=init_scale)
    )


def test_every_configured_precision_has_a_mode():
    assert set(PRECISIONS) == set(MODES)


def test_scaler_only_for_16_mixed():
    assert [m for m, spec in MODES.items() if spec.scaler] == ["16-mixed"]
    for mode in ("32-true", "tf32", "bf16-mixed", "bf16-true"):
        policy = make_policy(mode, "cpu")
        assert policy.scaler is None
        assert policy.loss_scale() is None


@pytest.mark.parametrize("mode", ["16-mixed", "16-true"])
def test_fp16_on_cpu_is_refused_naming_precision_and_device(mode):
    with pytest.raises(ConfigError) as err:
        make_policy(mode, "cpu")
    assert mode in str(err.value) and "cpu" in str(err.value)
    check_supported(mode, "cuda")  # the same mode is fine where fp16 runs


def test_matmul_precision_recorded_per_mode():
    try:
        assert make_policy("32-true", "cpu").setup() == "highest"
        assert make_policy("tf32", "cpu").setup() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_true_modes_convert_weights_and_float_inputs():
    policy = make_policy("bf16-true", "cpu")
    model = policy.convert_model(torch.nn.Linear(4, 2))
    assert model.weight.dtype == torch.bfloat16
    assert policy.convert_input(torch.ones(2, 4)).dtype == torch.bfloat16
    assert policy.convert_input(torch.ones(2, 4, dtype=torch.long)).dtype == torch.long
    mixed = make_policy("bf16-mixed", "cpu")
    assert mixed.convert_model(torch.nn.Linear(4, 2)).weight.dtype == torch.float32
    with mixed.autocast():
        assert torch.nn.Linear(4, 2)(torch.ones(1, 4)).dtype == torch.bfloat16


def test_backward_scales_and_unscale_restores_true_gradients():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    reference = model.weight.grad.clone()
    model.zero_grad()
    policy = fp16_policy_on_cpu(init_scale=1024.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    policy.backward(torch.nn.functional.cross_entropy(model(x), y))
    torch.testing.assert_close(model.weight.grad, reference * 1024.0)
    policy.unscale(opt)
    torch.testing.assert_close(model.weight.grad, reference)


def _one_step(policy: PrecisionPolicy, clip: float) -> torch.Tensor:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    data = {"x": torch.randn(32, 8)}
    labels = torch.randint(0, 3, (32,))

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x)

    wrapped = Wrap()
    opt = torch.optim.SGD(wrapped.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = model.weight.detach().clone()
    out = Stepper(
        wrapped,
        opt,
        sched,
        policy,
        lambda lo, la: torch.nn.functional.cross_entropy(lo.float(), la),
        data,
        labels,
        torch.device("cpu"),
        clip,
        1,
    )([torch.arange(32)])
    assert out.stepped
    return model.weight.detach() - before


def test_unscale_happens_before_clipping():
    """With a 1024x loss scale, clipping before unscaling would shrink the update ~1000x."""
    clip = 0.01
    fp32 = _one_step(make_policy("32-true", "cpu"), clip)
    fp16 = _one_step(fp16_policy_on_cpu(1024.0), clip)
    assert fp32.norm() > 0
    # the update is the clipped gradient (norm <= clip): same size in both modes, up to fp16 rounding
    assert math.isclose(float(fp16.norm()), float(fp32.norm()), rel_tol=0.05)
    torch.testing.assert_close(fp16, fp32, atol=5e-4, rtol=0.05)


def test_injected_inf_gradient_is_a_counted_skipped_step_with_scaler():
    model = torch.nn.Linear(4, 2)
    policy = fp16_policy_on_cpu(init_scale=256.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    policy.backward(model(torch.randn(3, 4)).sum())
    model.weight.grad[0, 0] = float("inf")
    before = model.weight.detach().clone()
    policy.unscale(opt)
    assert policy.step(opt) is False
    assert policy.skipped_steps == 1
    assert policy.loss_scale() == 128.0  # the scaler backed off
    torch.testing.assert_close(model.weight.detach(), before)
    # a clean step afterwards goes through and is not counted
    opt.zero_grad()
    policy.backward(model(torch.randn(3, 4)).sum())
    policy.unscale(opt)
    assert policy.step(opt) is True and policy.skipped_steps == 1


def test_injected_inf_gradient_is_skipped_without_scaler():
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x)

    model = Model()
    model.lin.weight.register_hook(lambda g: g * float("inf"))
    policy = make_policy("32-true", "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = model.lin.weight.detach().clone()
    out = Stepper(
        model,
        opt,
        sched,
        policy,
        lambda lo, la: torch.nn.functional.cross_entropy(lo, la),
        {"x": torch.randn(8, 4)},
        torch.randint(0, 3, (8,)),
        torch.device("cpu"),
        None,
        1,
    )([torch.arange(8)])
    assert out.stepped is False and policy.skipped_steps == 1
    torch.testing.assert_close(model.lin.weight.detach(), before)


def test_policy_state_round_trips_scaler_and_skips():
    a = fp16_policy_on_cpu(512.0)
    a.skipped_steps = 3
    b = fp16_policy_on_cpu(65536.0)
    b.load_state_dict(a.state_dict())
    assert b.loss_scale() == 512.0 and b.skipped_steps == 3
