"""The one pure function that builds a step's argv.

KFP components, Airflow tasks and the PyTorchJob launcher all run ``ampflow <step> ...``; building
the argv here, once, makes them agree by construction. Torch-free and mlflow-free.

    >>> step_argv("train", recipe="tweets-bow", data="/d", out="/r", precision="bf16-mixed",
    ...           overrides={"max_steps": 20})
    ['ampflow', 'train', '--recipe', 'tweets-bow', '--data', '/d', '--out', '/r', '--precision', 'bf16-mixed', '--set', 'max_steps=20']
"""

from __future__ import annotations

from typing import Any

from ampflow.config import RunConfig

# step -> (flag options in the order they appear, boolean switches)
STEP_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prep": (("recipe", "out", "source", "seed", "limit"), ()),
    "train": (
        ("recipe", "data", "out", "precision", "strategy", "parent_run_id"),
        ("compile", "resume", "require_tracking"),
    ),
    "evaluate": (("recipe", "data", "checkpoint", "out", "parent_run_id"), ("require_tracking",)),
    "bench": (("recipe", "out", "precisions", "compile_modes", "repeats", "source", "tolerance"), ()),
    "compare": (
        (
            "runs",
            "out",
            "baseline",
            "tolerance",
            "sweep",
            "experiment",
            "recipe",
            "throughput_drop",
            "accuracy_drop",
        ),
        ("fail_on_regression",),
    ),
    "register": (("summary", "model_name", "tolerance"), ()),
    "launch": (
        (
            "recipe",
            "data",
            "out",
            "precision",
            "strategy",
            "nodes",
            "gpus_per_node",
            "image",
            "name",
            "api",
            "namespace",
            "runtime",
            "node_selector",
            "tolerations",
            "volume",
            "cpu",
            "memory",
            "service_account",
            "mlflow_secret",
            "tracking_uri",
            "clean_pod_policy",
            "backoff_limit",
            "active_deadline_seconds",
            "ttl_seconds_after_finished",
            "timeout",
            "context",
            "poll_interval",
        ),
        ("compile", "dry_run", "no_logs"),
    ),
}

# CLI spellings that differ from the keyword name
_FLAG_NAMES = {"compile_modes": "--compile"}


def _flag(name: str) -> str:
    return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    return str(value)


def step_argv(
    step: str,
    *,
    program: tuple[str, ...] = ("ampflow",),
    overrides: dict[str, Any] | None = None,
    **options: Any,
) -> list[str]:
    """Return ``[*program, step, --flag value ..., --set k=v ...]``.

    ``None`` options are left out; boolean switches appear only when true. ``overrides`` become
    ``--set key=value`` pairs and are validated against :class:`RunConfig` field names here, so a
    typo fails where the pipeline is defined, not in a pod an hour later.
    """
    if step not in STEP_OPTIONS:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEP_OPTIONS)}")
    flags, switches = STEP_OPTIONS[step]
    unknown = sorted(set(options) - set(flags) - set(switches))
    if unknown:
        raise ValueError(f"step {step!r} takes no option {unknown[0]!r}")
    argv = [*program, step]
    for name in flags:
        value = options.get(name)
        if value is not None:
            argv += [_flag(name), _fmt(value)]
    for name in switches:
        if options.get(name):
            argv.append(_flag(name))
    known = set(RunConfig.field_names())
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(f"unknown configuration key {key!r} in overrides")
        argv += ["--set", f"{key}={_fmt(value)}"]
    return argv
