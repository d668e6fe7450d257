"""Precision policy: one small object per mode, with the hooks the loop calls.

    policy = make_policy("16-mixed", device)
    model = policy.convert_model(model)
    with policy.autocast():
        loss = loss_fn(model(**inputs), labels)
    policy.backward(loss)
    policy.unscale(optimizer)            # before clipping, so the clip threshold sees true gradients
    norm = clip_grad_norm_(...)
    stepped = policy.step(optimizer, grads_finite=...)

Modes (Lightning's vocabulary): ``32-true`` and ``tf32`` differ only in the fp32 matmul precision;
``16-mixed`` is fp16 autocast + GradScaler (the only mode with a scaler); ``bf16-mixed`` is bf16
autocast without a scaler (bf16 has fp32's exponent range); ``bf16-true`` and ``16-true`` keep the
weights themselves in half precision. ``fp8`` is bf16-mixed whose Linear layers run their matmuls in
float8 through torchao's float8 training API (``torchao.float8.convert_to_float8_training``, dynamic
tensorwise scaling, fp32 master weights): CUDA compute capability 8.9 or later only (Ada: L4, L40S,
RTX 4090/6000 Ada; Hopper: H100, H200; Blackwell: B200), refused everywhere else.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from ampflow.config import CUDA_ONLY_PRECISIONS, FP8_MIN_CAPABILITY, FP8_PRECISIONS, ConfigError


@dataclass(frozen=True)
class ModeSpec:
    """What a precision mode means: autocast dtype, weight dtype, GradScaler, fp32 matmul precision and compute dtype."""

    autocast: str | None  # "float16" / "bfloat16" for the mixed modes
    param_dtype: str  # dtype of the weights
    scaler: bool
    matmul_precision: str  # torch.set_float32_matmul_precision for the fp32 ops
    compute: str  # the dtype tensor cores / matmuls run in, for the peak-FLOP/s lookup
    float8: bool = False  # Linear layers converted to torchao Float8Linear (fp8 matmuls)


MODES: dict[str, ModeSpec] = {
    "32-true": ModeSpec(None, "float32", False, "highest", "fp32"),
    "tf32": ModeSpec(None, "float32", False, "high", "tf32"),
    "16-mixed": ModeSpec("float16", "float32", True, "highest", "fp16"),
    "bf16-mixed": ModeSpec("bfloat16", "float32", False, "highest", "bf16"),
    "bf16-true": ModeSpec(None, "bfloat16", False, "highest", "bf16"),
    "16-true": ModeSpec(None, "float16", False, "highest", "fp16"),
    # torchao's float8 training runs inside bf16 autocast: the ops it does not convert stay bf16
    "fp8": ModeSpec("bfloat16", "float32", False, "highest", "fp8", float8=True),
}


@dataclass
class PrecisionPolicy:
    """One precision mode on one device type: model and input conversion, autocast, backward through the
    GradScaler (16-mixed), the guarded optimizer step, and the scaler's checkpoint state."""

    mode: str
    device_type: str
    spec: ModeSpec
    scaler: Any = None  # torch.amp.GradScaler for 16-mixed, else None
    skipped_steps: int = 0
    _last_scale: float | None = field(default=None, repr=False)

    # -- set-up ---------------------------------------------------------------------------------

    @property
    def autocast_dtype(self) -> Any:
        """The torch dtype autocast runs in (None for modes without autocast)."""
        import torch

        return getattr(torch, self.spec.autocast) if self.spec.autocast else None

    @property
    def param_dtype(self) -> Any:
        """The torch dtype the weights are kept in."""
        import torch

        return getattr(torch, self.spec.param_dtype)

    @property
    def is_bf16(self) -> bool:
        """Whether the mode computes in bf16 (bf16-mixed, bf16-true)."""
        return self.spec.compute == "bf16"

    def setup(self) -> str:
        """Set process-wide matmul precision for this mode; returns what torch now reports."""
        import torch

        torch.set_float32_matmul_precision(self.spec.matmul_precision)
        if torch.cuda.is_available():
            # cuDNN convolutions follow the same choice as matmuls
            torch.backends.cudnn.allow_tf32 = self.spec.matmul_precision != "highest"
        return torch.get_float32_matmul_precision()

    def convert_model(self, model: Any) -> Any:
        """*-true modes keep the weights in half precision; the others keep fp32 master weights.

        ``fp8`` swaps the Linear layers for torchao's Float8Linear (:func:`convert_to_float8`)."""
        if self.spec.param_dtype != "float32":
            model = model.to(self.param_dtype)
        if self.spec.float8:
            model = convert_to_float8(model)
        return model

    def convert_input(self, tensor: Any) -> Any:
        """Floating inputs follow the weights' dtype in *-true modes (autocast handles the mixed ones)."""
        if tensor.is_floating_point() and self.spec.param_dtype != "float32":
            return tensor.to(self.param_dtype)
        return tensor

    # -- per step -------------------------------------------------------------------------------

    def autocast(self) -> Any:
        """The autocast context for forward and loss (a null context for modes without autocast)."""
        import torch

        if self.spec.autocast is None:
            return contextlib.nullcontext()
        return torch.amp.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def backward(self, loss: Any) -> None:
        """Backward of ``loss``, scaled by the GradScaler when there is one."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale(self, optimizer: Any) -> None:
        """Divide the gradients by the loss scale in place (call before clipping or reading norms)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: Any, *, grads_finite: bool = True) -> bool:
        """Apply the update; returns False when the step was skipped (and counts it).

        With a GradScaler the scaler decides: it skips the step when it found inf/NaN gradients and
        then lowers the scale, so a lower scale after ``update()`` means "skipped". Without a scaler,
        the loop passes ``grads_finite`` (from the gradient norm) and a non-finite step is skipped
        here rather than writing NaN into the weights.
        """
        if self.scaler is not None:
            before = self.scaler.get_scale()
            self.scaler.step(optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < before
        else:
            skipped = not grads_finite
            if not skipped:
                optimizer.step()
        if skipped:
            self.skipped_steps += 1
        return not skipped

    def loss_scale(self) -> float | None:
        """The GradScaler's current scale, or None without one."""
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The GradScaler state and the skipped-step count, for a checkpoint."""
        return {
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))


def check_supported(mode: str, device_type: str) -> None:
    """Refuse what the hardware cannot do, never switch silently (ConfigError, one line).

    ``fp8`` on CUDA reads the compute capability of this process's device (``LOCAL_RANK``, else 0).
    """
    if mode not in MODES:
        raise ConfigError(f"precision must be one of {', '.join(MODES)}; got {mode!r}")
    if mode in FP8_PRECISIONS:
        reason = fp8_unsupported_reason(_device_of(device_type))
        if reason:
            raise ConfigError(reason)
        return
    if device_type == "cpu" and mode in CUDA_ONLY_PRECISIONS:
        raise ConfigError(
            f"precision {mode} runs fp16 math, which is not supported for training on device cpu; "
            "use 32-true, bf16-mixed or bf16-true on CPU, or --set device=cuda"
        )


def make_policy(mode: str, device_type: str, *, check: bool = True) -> PrecisionPolicy:
    """The policy for ``mode`` on ``device_type`` (``"cpu"`` or ``"cuda"``).

    Checks the device can run it first (ConfigError otherwise) unless ``check=False``: a caller that
    already ran :func:`check_supported` for this device type, before starting processes.
    """
    import torch

    if check:
        check_supported(mode, device_type)
    spec = MODES[mode]
    scaler = torch.amp.GradScaler(device_type) if spec.scaler else None
    return PrecisionPolicy(mode=mode, device_type=device_type, spec=spec, scaler=scaler)


# -- fp8 ------------------------------------------------------------------------------------------

FP8_HARDWARE = (
    "an NVIDIA GPU with fp8 tensor cores, compute capability 8.9 or later "
    "(L4, L40S, RTX 4090/6000 Ada, H100, H200, B200)"
)
# pyproject's fp8 extra installs torchao
FP8_INSTALL = "pip install 'ampflow[fp8]'"
# the whole requirement, both halves, in every hardware refusal: a user on a CPU learns the package too
FP8_NEEDS = f"{FP8_HARDWARE} and torchao ({FP8_INSTALL})"


def fp8_refusal(
    device_type: str, capability: tuple[int, int] | None, gpu_name: str = "", torchao: bool = True
) -> str | None:
    """Why ``fp8`` cannot train here (one line naming what it needs), or None when it can.

    ``capability`` is the CUDA compute capability ``(major, minor)`` (None off CUDA); ``torchao``
    whether the torchao package is importable (False is checked last: the hardware comes first).
    Every refusal names both needs, the GPU and torchao, and how to install torchao.
    """
    if device_type != "cuda" or capability is None:
        return f"precision fp8 needs {FP8_NEEDS}; device {device_type} is not such a GPU: use bf16-mixed"
    if tuple(capability) < FP8_MIN_CAPABILITY:
        major, minor = capability
        return (
            f"precision fp8 needs {FP8_NEEDS}; {gpu_name or 'this GPU'} has compute capability "
            f"{major}.{minor}: use bf16-mixed"
        )
    if not torchao:
        return (
            "precision fp8 trains through torchao's float8 API and torchao is not installed: "
            f"{FP8_INSTALL} (or pip install torchao)"
        )
    return None


def fp8_unsupported_reason(device: Any, *, need_torchao: bool = True) -> str | None:
    """:func:`fp8_refusal` for a torch device (its real compute capability and name)."""
    import importlib.util

    import torch

    capability, name = None, ""
    if device.type == "cuda" and torch.cuda.is_available():
        capability = tuple(torch.cuda.get_device_capability(device))
        name = torch.cuda.get_device_name(device)
    torchao = importlib.util.find_spec("torchao") is not None or not need_torchao
    return fp8_refusal(device.type, capability, name, torchao)


def _device_of(device_type: str) -> Any:
    import os

    import torch

    if device_type == "cuda" and torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())
        return torch.device("cuda", index)
    return torch.device(device_type)


def fp8_layer_filter(module: Any, fqn: str) -> bool:
    """Which Linear layers run in float8: both dimensions multiples of 16 (the fp8 GEMM's rule);
    a small classification head (384 -> 3) stays in bf16."""
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def convert_to_float8(model: Any) -> Any:
    """Swap ``model``'s eligible ``nn.Linear`` layers for torchao's ``Float8Linear`` (in place).

    torchao's default recipe (dynamic tensorwise scaling, e4m3 forward, e5m2 gradients); the fp32
    master weights stay as they are. ConfigError when torchao is missing.
    """
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise ConfigError(
            "precision fp8 trains through torchao's float8 API and torchao is not installed: "
            f"{FP8_INSTALL} (or pip install torchao)"
        ) from None
    return convert_to_float8_training(model, config=Float8LinearConfig(), module_filter_fn=fp8_layer_filter)
