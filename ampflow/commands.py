"""The one pure function that builds a step's argv, and the torchrun program that runs it locally.

KFP components, Airflow tasks and the PyTorchJob launcher all run ``ampflow <step> ...``; building
the argv here, once, makes them agree by construction. A step that trains under torchrun on this
machine (``ampflow bench``'s distributed configurations, ``ampflow gpu-check``'s NCCL check, the
tests) puts :func:`torchrun_program` in front of it. Torch-free and mlflow-free.

    >>> step_argv("train", recipe="tweets-bow", data="/d", out="/r", precision="bf16-mixed",
    ...           overrides={"max_steps": 20})
    ['ampflow', 'train', '--recipe', 'tweets-bow', '--data', '/d', '--out', '/r', '--precision', 'bf16-mixed', '--set', 'max_steps=20']
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from ampflow.config import EVAL_MAY_CHANGE, RunConfig

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
        ("fail_on_regression", "record_sweep"),
    ),
    "register": (
        ("summary", "data", "model_name", "tolerance", "device", "champion_version"),
        ("allow_unloadable_champion",),
    ),
    "close-runs": (("tag", "run_root", "tracking_uri"), ()),
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
            "queue",
            "priority_class",
            "workload_priority",
            "queue_timeout",
            "run_deadline",
            "timeout",  # the old spelling of run_deadline
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


def torchrun_program(
    nproc_per_node: int, master_port: int | None = None, *, python: str | None = None
) -> tuple[str, ...]:
    """The program that runs ``ampflow`` under torchrun on this machine, the ``program`` of
    :func:`step_argv` / :meth:`StepPlan.argv`::

        (python, "-m", "torch.distributed.run", "--nproc_per_node=N", "--master_port=P", "-m", "ampflow")

    ``python`` is this interpreter (``sys.executable``) unless given, so the launcher and its
    processes import the same torch and ampflow; ``P`` is a port free on the loopback now when
    ``master_port`` is not given (one rendezvous per call, so two launches never share one).

        >>> torchrun_program(2, 29512, python="python")
        ('python', '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29512', '-m', 'ampflow')

    Raises ValueError when ``nproc_per_node`` is not a positive int or ``master_port`` is not a
    port number (1-65535).
    """
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be a positive int, got {nproc_per_node!r}")
    if master_port is None:
        master_port = _free_port()
    elif isinstance(master_port, bool) or not isinstance(master_port, int) or not 0 < master_port < 65536:
        raise ValueError(f"master_port must be a port number 1-65535, got {master_port!r}")
    return (
        python or sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc_per_node}",
        f"--master_port={master_port}",
        "-m",
        "ampflow",
    )


def _free_port() -> int:
    """A TCP port free on the loopback now (the rendezvous of one torchrun launch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Which --set keys a step takes: every RunConfig key (None) or only the listed ones. A step that is
# not listed takes none, and the overrides a skin passes to it for convenience are dropped.
STEP_OVERRIDES: dict[str, tuple[str, ...] | None] = {
    "train": None,
    "launch": None,
    "bench": None,
    "evaluate": EVAL_MAY_CHANGE,
}

# options of `train` that a distributed launch does not take: the launcher's pods get their MLflow
# parent from the run context and reattach to an existing job instead of resuming by flag
_NOT_LAUNCHED = ("parent_run_id", "require_tracking", "resume")


@dataclass(frozen=True)
class StepPlan:
    """What one task runs: the step (``train`` may become ``launch``), its options and overrides."""

    step: str
    options: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)

    def argv(self, program: tuple[str, ...] = ("ampflow",)) -> list[str]:
        """The command line, through :func:`step_argv` (raises ValueError on an unknown option)."""
        return step_argv(self.step, program=program, overrides=self.overrides or None, **self.options)


def plan_step(
    step: str,
    options: dict[str, Any],
    *,
    overrides: dict[str, Any] | None = None,
    distributed: bool = False,
    retry: bool = False,
    launch: dict[str, Any] | None = None,
) -> StepPlan:
    """Decide, once for every skin (CLI, KFP, Airflow), what a pipeline task runs.

    - ``train`` with ``distributed`` (more than one process) becomes ``launch``: a Kubeflow job
      whose pods run ``ampflow train`` under torchrun. ``launch`` holds the cluster options (name,
      nodes, gpus_per_node, image, ...); a ``single`` strategy is dropped so the launcher's default
      (ddp) applies. A retried launch reattaches to its job by name, so it never adds ``--resume``.
    - ``train`` on a retry (``retry``) adds ``--resume``: the retry continues from the failed try's
      last checkpoint, and starts fresh where there is none.
    - overrides reach only the steps that take ``--set`` (:data:`STEP_OVERRIDES`); ``evaluate``
      keeps only :data:`~ampflow.config.EVAL_MAY_CHANGE`.

    ``None`` options and names starting with ``_`` (a skin's bookkeeping) are left out. Raises
    ValueError for an unknown step, option or override key (through :func:`step_argv`).
    """
    opts = {k: v for k, v in options.items() if v is not None and not k.startswith("_")}
    if step == "train" and distributed:
        step = "launch"
        opts = {k: v for k, v in opts.items() if k not in _NOT_LAUNCHED}
        if opts.get("strategy") == "single":
            opts.pop("strategy")
        opts.update({k: v for k, v in (launch or {}).items() if v is not None})
    elif step == "train" and retry:
        opts["resume"] = True
    allowed = STEP_OVERRIDES.get(step, ())
    given = dict(overrides or {})
    kept = given if allowed is None else {k: v for k, v in given.items() if k in allowed}
    plan = StepPlan(step, opts, kept)
    plan.argv()  # validate now, where the task is defined, not in a pod an hour later
    return plan
