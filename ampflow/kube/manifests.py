"""TrainJob (trainer.kubeflow.org/v1alpha1, the default) and PyTorchJob (kubeflow.org/v1) manifests: pure functions.

    >>> spec = LaunchSpec(recipe="tweets-bow", data="/data/tweets", nodes=2, gpus_per_node=8,
    ...                   image="registry.example.com/ampflow:0.1.0")
    >>> job = build_manifest(spec)          # a dict, ready for CustomObjectsApi or yaml.safe_dump
    >>> validate_admission(job)             # what the operator's webhook would say: no problems
    []

No torch, no mlflow, no kubernetes client: KFP components and Airflow DAG files import this.

The container command (the same for both APIs, built by :func:`ampflow.commands.step_argv`)::

    torchrun --nnodes=N --nproc-per-node=G -m ampflow train --recipe R --data D --out O ... --strategy ddp --resume

Why node rank and rendezvous address are not on the command line: one pod template serves every
Worker, so the node rank can only come from the pod's environment. Both operators put it there in
torchrun's own variables (v1 with ``nprocPerNode`` set: ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``, ``PET_NNODES``, ``PET_NPROC_PER_NODE``; Trainer v2's torch plugin: the same five),
and torchrun reads every option it is not given from ``PET_<OPTION>``. Leaving those three to the
environment keeps one command valid under both APIs without relying on Kubernetes ``$(VAR)``
expansion, and it is the contract ``tests/test_launch_env_contract.py`` runs under local torchrun.
``--nnodes`` and ``--nproc-per-node`` are static, so they are written out: the command then says the
topology it expects, and it matches the replicas/``nprocPerNode`` that set the operator's values.
v1's ``WORLD_SIZE``/``RANK`` (pod-level numbers) are overwritten by torchrun for each process.

Queues and priorities (a shared cluster's conventions):

- ``queue`` puts Kueue's ``kueue.x-k8s.io/queue-name`` label (a LocalQueue in the job's namespace) on
  the job itself, which is where Kueue looks for both APIs (its TrainJob and PyTorchJob integrations,
  https://kueue.sigs.k8s.io/docs/tasks/run/trainjobs/). ampflow does not set ``spec.suspend`` /
  ``runPolicy.suspend``: Kueue's mutating webhook suspends a labelled job on create and unsuspends it
  when the workload is admitted, gang-wise (all nodes' quota at once). Without Kueue the label is inert.
- ``priority_class`` is the pods' ``priorityClassName`` (a scheduling.k8s.io PriorityClass: the
  kube-scheduler's preemption order, and the priority Kueue gives the workload when no
  WorkloadPriorityClass label is set). PyTorchJob only: Trainer v2.3's ``runtimePatches`` pod spec
  has no ``priorityClassName`` (the API server would prune it silently), so for a TrainJob it belongs in
  the runtime's pod template, or Kueue's priority comes from ``workload_priority``.
- ``workload_priority`` is Kueue's ``kueue.x-k8s.io/priority-class`` label, which names a Kueue
  WorkloadPriorityClass (another object than a PriorityClass: it orders admission and preemption in
  the queue only, and wins over the pods' class for that). Both APIs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ampflow.commands import step_argv
from ampflow.config import PRECISIONS, STRATEGIES, ConfigError, RunConfig
from ampflow.kube.names import (
    DNS1035_RE,
    LABEL_VALUE_RE,
    MAX_LABEL,
    dns1035_name,
    is_dns1035,
    label_value,
    max_job_name_len,
)

Api = Literal["pytorchjob", "trainjob"]
APIS: tuple[str, ...] = ("pytorchjob", "trainjob")

# (group, version, plural, kind) of each API
RESOURCES: dict[str, tuple[str, str, str, str]] = {
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
}
DEFAULT_API = "trainjob"  # Kubeflow Trainer v2; pytorchjob for clusters on the v1 Training Operator
# Kueue's labels (https://kueue.sigs.k8s.io/docs/concepts/workload/): the LocalQueue, and the
# WorkloadPriorityClass of the job
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
V1_CONTAINER = "pytorch"  # the v1 webhook requires a container of this name in every replica
V2_JOB = "node"  # replicatedJob and container name in the stock torch-distributed runtime
V2_RUNTIME = "torch-distributed"
GPU_RESOURCE = "nvidia.com/gpu"
SPEC_HASH_ANNOTATION = "ampflow.dev/spec-hash"
PATCH_MANAGER = "ampflow.dev/launch"
CLEAN_POD_POLICIES = ("All", "Running", "None")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# torchrun's rendezvous variables: Trainer v2 sets them and refuses a TrainJob that sets them itself
TORCHRUN_RESERVED_ENV = (
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
)
# Keys read from the MLflow Secret (each optional: a Secret holds only what its server needs).
# MLflow's client reads these names; the AWS ones reach an S3/MinIO artifact store.
MLFLOW_SECRET_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)
# v1 defaults (Trainer v2 keeps these in the runtime, not in the TrainJob)
DEFAULT_CLEAN_POD_POLICY = "Running"  # free GPUs held by hung workers, keep finished pods' logs
DEFAULT_BACKOFF_LIMIT = 3
DEFAULT_TTL_SECONDS = 86400
DEFAULT_ACTIVE_DEADLINE_SECONDS = 86400
# ExitCode: exit 1/2 (a bug, bad input) fail the job at once; 130/137/143 (preemption, OOM kill,
# node drain) recreate the pod, up to backoffLimit.
V1_RESTART_POLICY = "ExitCode"

_QUANTITY_RE = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a launch needs. Validated on construction (bad input raises ConfigError, exit 2)."""

    recipe: str
    data: str
    nodes: int
    gpus_per_node: int
    image: str
    name: str | None = None  # None: derived from the run (deterministic, so a retry finds its job)
    api: str = DEFAULT_API
    namespace: str = "default"
    out: str | None = None
    precision: str = "32-true"
    strategy: str | None = None  # None: ddp for several processes, single for one
    compile: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    mlflow_secret: str | None = None
    tracking_uri: str | None = None
    cpu: str | None = None
    memory: str | None = None
    clean_pod_policy: str | None = None
    backoff_limit: int | None = None
    active_deadline_seconds: int | None = DEFAULT_ACTIVE_DEADLINE_SECONDS
    ttl_seconds_after_finished: int | None = None
    service_account: str | None = None
    # (PersistentVolumeClaim, mount path): where --data and --out live when they are paths
    volumes: tuple[tuple[str, str], ...] = ()
    runtime: str = V2_RUNTIME
    queue: str | None = None  # Kueue LocalQueue (label kueue.x-k8s.io/queue-name)
    priority_class: str | None = None  # pods' priorityClassName (PyTorchJob)
    workload_priority: str | None = None  # Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class)

    def __post_init__(self) -> None:
        _validate_spec(self)

    @property
    def procs_per_node(self) -> int:
        # a CPU node runs one process (gloo); a GPU node one per GPU
        return max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def resolved_strategy(self) -> str:
        if self.strategy is not None:
            return self.strategy
        return "ddp" if self.world_size > 1 else "single"

    @property
    def job_name(self) -> str:
        limit = max_job_name_len(self.api, self.nodes)
        if self.name is not None:
            return dns1035_name(self.name, limit)
        # the spec hash keeps the default name stable for a retry and distinct for another run
        base = f"ampflow-{self.recipe}-{self.precision}-{self.resolved_strategy}"
        digest = _hash(_spec_identity(self))[:6]
        return dns1035_name(f"{base[: limit - len(digest) - 1]}-{digest}", limit)


def _flag(field: str) -> str:
    """The ``ampflow launch`` flag that sets a LaunchSpec field (``priority_class`` -> ``--priority-class``)."""
    return "--" + field.replace("_", "-")


def _validate_spec(s: LaunchSpec) -> None:
    if s.api not in APIS:
        raise ConfigError(f"--api must be one of {', '.join(APIS)}; got {s.api!r}")
    for name in ("nodes", "gpus_per_node"):
        v = getattr(s, name)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"{_flag(name)} must be an integer, got {v!r}")
    if s.nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {s.nodes}")
    if s.gpus_per_node < 0:
        raise ConfigError(f"--gpus-per-node must be >= 0, got {s.gpus_per_node}")
    if not isinstance(s.image, str) or not s.image.strip() or any(c.isspace() for c in s.image):
        raise ConfigError(f"--image must be a container image reference (registry/name:tag), got {s.image!r}")
    if not isinstance(s.data, str) or not s.data.strip():
        raise ConfigError("--data must be the prepared dataset's URI or path in the pod, got an empty value")
    if s.out is not None and not s.out.strip():
        raise ConfigError("--out must be a URI or path in the pod when given, got an empty value")
    if s.precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}; got {s.precision!r}")
    if s.strategy is not None and s.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {s.strategy!r}")
    if s.strategy == "single" and s.world_size > 1:
        raise ConfigError(
            f"--strategy single runs one process, but --nodes x --gpus-per-node is {s.world_size}; use ddp or fsdp"
        )
    # the run configuration itself (recipe name, override keys and values, 16-true guard)
    config = RunConfig(
        recipe=s.recipe, precision=s.precision, compile=s.compile, strategy=s.resolved_strategy
    ).replace(**s.overrides)
    if config.checkpoint_format == "sharded" and s.nodes > 1 and not out_is_shared(s):
        raise ConfigError(
            f"--set checkpoint_format=sharded with --nodes {s.nodes}: every pod writes its shards into "
            f"--out, so --out must be on a --volume all pods mount (ReadWriteMany); "
            f"{s.out or 'the default --out'} is not (or use checkpoint_format=full)"
        )
    if s.resolved_strategy in ("tp", "pp", "fsdp+tp"):
        # nodes x GPUs per node onto the mesh (tp inside a node, dp across nodes by default); torch-free
        from ampflow.engine.mesh import resolve as resolve_mesh

        resolve_mesh(s.resolved_strategy, s.overrides.get("mesh"), s.world_size, s.procs_per_node)
    clash = sorted(set(s.overrides) & {"recipe", "precision", "strategy", "compile"})
    if clash:
        raise ConfigError(f"--set {clash[0]}=... duplicates --{clash[0]}; use --{clash[0]}")
    if s.name is not None:
        dns1035_name(s.name)  # raises on a name with nothing usable in it
    if (
        not isinstance(s.namespace, str)
        or len(s.namespace) > MAX_LABEL
        or not _DNS1123_LABEL_RE.match(s.namespace)
    ):
        raise ConfigError(
            f"--namespace must be a DNS-1123 label (lower case, digits, '-'), got {s.namespace!r}"
        )
    for key, value in s.node_selector.items():
        _check_label(f"node selector {key}={value}", key, value)
    for tol in s.tolerations:
        if tol.get("effect") not in (None, "", *TOLERATION_EFFECTS):
            raise ConfigError(
                f"toleration effect must be one of {', '.join(TOLERATION_EFFECTS)}; got {tol.get('effect')!r}"
            )
    for name in ("mlflow_secret", "service_account"):
        v = getattr(s, name)
        if v is not None and (len(v) > 253 or not _DNS1123_SUBDOMAIN_RE.match(v)):
            raise ConfigError(
                f"{name} must name a Kubernetes object (lower case, digits, '-', '.'), got {v!r}"
            )
    if s.tracking_uri is not None and re.match(r"^[a-z][a-z0-9+.-]*://[^/@]+@", s.tracking_uri, re.I):
        raise ConfigError("--tracking-uri must not carry credentials; put them in the --mlflow-secret Secret")
    # these errors name the flag a user typed (--clean-pod-policy), as the queue's below do
    for name in ("cpu", "memory"):
        v = getattr(s, name)
        if v is not None and not _QUANTITY_RE.match(str(v)):
            raise ConfigError(f"{_flag(name)} must be a Kubernetes quantity (e.g. 4, 500m, 16Gi), got {v!r}")
    if s.clean_pod_policy is not None and s.clean_pod_policy not in CLEAN_POD_POLICIES:
        raise ConfigError(
            f"--clean-pod-policy must be one of {', '.join(CLEAN_POD_POLICIES)}; got {s.clean_pod_policy!r}"
        )
    for name, low, hint in (
        ("backoff_limit", 0, ""),
        ("active_deadline_seconds", 1, ", or 0 for none"),  # the CLI's 0 arrives here as None
        ("ttl_seconds_after_finished", 0, ""),
    ):
        v = getattr(s, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise ConfigError(f"{_flag(name)} must be an integer >= {low}{hint}, got {v!r}")
    if s.api == "trainjob":
        v1_only = [
            n
            for n in ("clean_pod_policy", "backoff_limit", "ttl_seconds_after_finished")
            if getattr(s, n) is not None
        ]
        if v1_only:
            raise ConfigError(
                f"{_flag(v1_only[0])} sets a PyTorchJob runPolicy field; a TrainJob takes it from its "
                f"runtime ({s.runtime}); use --api pytorchjob or change the runtime"
            )
    mounts = [m for _, m in s.volumes]
    for claim, mount in s.volumes:
        if len(claim) > 253 or not _DNS1123_SUBDOMAIN_RE.match(claim):
            raise ConfigError(f"volume claim must name a PersistentVolumeClaim, got {claim!r}")
        if not mount.startswith("/") or mount.rstrip("/") in ("", "/dev/shm") or mounts.count(mount) > 1:
            raise ConfigError(
                f"volume mount path must be an absolute path other than / and /dev/shm, used once; got {mount!r}"
            )
    if not s.runtime or not _DNS1123_SUBDOMAIN_RE.match(s.runtime):
        raise ConfigError(f"--runtime must name a ClusterTrainingRuntime, got {s.runtime!r}")
    # a LocalQueue's name is a label value too; PriorityClass and WorkloadPriorityClass are
    # cluster objects named as DNS-1123 subdomains; all three end up in one 63-character label or field.
    # The errors name the flag a user typed (--priority-class), which every skin's argv carries too.
    for name in ("queue", "priority_class", "workload_priority"):
        v = getattr(s, name)
        if v is not None and (
            not isinstance(v, str) or len(v) > MAX_LABEL or not _DNS1123_SUBDOMAIN_RE.match(v)
        ):
            raise ConfigError(
                f"{_flag(name)} must be a DNS-1123 name (lower case, digits, '-', '.', at "
                f"most {MAX_LABEL} characters), got {v!r}"
            )
    if s.priority_class is not None and s.api == "trainjob":
        raise ConfigError(
            "--priority-class: a TrainJob cannot set its pods' priorityClassName (Trainer v2.3's runtimePatches "
            f"have no such field); set it in the runtime's pod template (--runtime, now {s.runtime}), give "
            "Kueue a WorkloadPriorityClass with --workload-priority, or use --api pytorchjob"
        )


def _check_label(what: str, key: str, value: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (
        (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix)))
        or len(name) > MAX_LABEL
        or not _LABEL_NAME_RE.match(name)
    ):
        raise ConfigError(f"{what}: key {key!r} is not a valid label key")
    if len(value) > MAX_LABEL or not LABEL_VALUE_RE.match(value):
        raise ConfigError(f"{what}: value {value!r} is not a valid label value")


# -- parsing helpers for the CLI ------------------------------------------------------------------


def parse_key_values(what: str, pairs: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` items; one item may hold several, comma-separated (label values have no comma),
    which is how ``step_argv`` renders a list."""
    out: dict[str, str] = {}
    for pair in (p for item in pairs or [] for p in item.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def parse_volume(text: str) -> tuple[str, str]:
    """``CLAIM:MOUNT_PATH`` (a PersistentVolumeClaim mounted read-write in every pod)."""
    claim, sep, mount = text.partition(":")
    if not sep or not claim or not mount:
        raise ConfigError(f"--volume expects CLAIM:MOUNT_PATH, got {text!r}")
    return claim, mount


_TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def parse_tolerations(text: str) -> list[dict[str, Any]]:
    """One ``--toleration``: ``KEY[=VALUE][:EFFECT]`` items, or toleration objects as JSON; either may
    come comma-joined (``step_argv`` renders a list so)."""
    if text.lstrip().startswith("{"):
        try:
            objs = json.loads(f"[{text}]")
        except json.JSONDecodeError:
            raise ConfigError(f"--toleration: not a JSON toleration object: {text!r}") from None
        for tol in objs:
            if not isinstance(tol, dict) or not set(tol) <= _TOLERATION_FIELDS:
                raise ConfigError(
                    f"--toleration objects take the fields {', '.join(sorted(_TOLERATION_FIELDS))}; got {tol!r}"
                )
            if tol.get("operator", "Equal") not in ("Equal", "Exists"):
                raise ConfigError(
                    f"--toleration operator must be Equal or Exists; got {tol.get('operator')!r}"
                )
            if tol.get("effect") not in (None, "", *TOLERATION_EFFECTS):
                raise ConfigError(
                    f"--toleration effect must be one of {', '.join(TOLERATION_EFFECTS)}; got {tol.get('effect')!r}"
                )
        return objs
    return [parse_toleration(item) for item in text.split(",") if item.strip()]


def parse_toleration(text: str) -> dict[str, Any]:
    """``KEY[=VALUE][:EFFECT]`` (kubectl taint syntax); no value means operator Exists."""
    body, _, effect = text.partition(":")
    key, sep, value = body.partition("=")
    if not key:
        raise ConfigError(f"--toleration expects KEY[=VALUE][:EFFECT], got {text!r}")
    if effect and effect not in TOLERATION_EFFECTS:
        raise ConfigError(
            f"--toleration effect must be one of {', '.join(TOLERATION_EFFECTS)}; got {effect!r}"
        )
    tol: dict[str, Any] = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        tol["value"] = value
    if effect:
        tol["effect"] = effect
    return tol


def toleration_flag(tol: dict[str, Any]) -> str:
    """A toleration object in ``--toleration``'s ``KEY[=VALUE][:EFFECT]`` spelling (the inverse of
    :func:`parse_toleration`)."""
    text = tol["key"] + (f"={tol['value']}" if tol.get("value") else "")
    return text + (f":{tol['effect']}" if tol.get("effect") else "")


# -- the container --------------------------------------------------------------------------------


def container_command(spec: LaunchSpec) -> list[str]:
    """The argv every pod runs (see the module docstring for why it looks like this)."""
    strategy = spec.resolved_strategy
    if strategy == "single":
        program: tuple[str, ...] = ("ampflow",)
    else:
        program = (
            "torchrun",
            f"--nnodes={spec.nodes}",
            f"--nproc-per-node={spec.procs_per_node}",
            "-m",
            "ampflow",
        )
    return step_argv(
        "train",
        program=program,
        recipe=spec.recipe,
        data=spec.data,
        out=spec.out or default_out(spec),
        precision=spec.precision,
        strategy=strategy,
        compile=spec.compile,
        # the operator recreates a pod after preemption or an OOM kill (restartPolicy ExitCode); it
        # continues from --out's checkpoint, and starts fresh when there is none
        resume=True,
        # a configured tracking server must be reached: fail the pod instead of logging into its disk
        require_tracking=bool(spec.mlflow_secret or spec.tracking_uri),
        overrides=train_overrides(spec),
    )


def out_is_shared(spec: LaunchSpec) -> bool:
    """Whether ``--out`` lies on one of the ``--volume`` mounts, which every pod of the job mounts."""
    if spec.out is None:
        return False
    # paths as the pod resolves them: /data/../scratch is not on /data
    out = posixpath.normpath(spec.out)
    mounts = [posixpath.normpath(m) for _, m in spec.volumes]
    return any(out == m or out.startswith(m.rstrip("/") + "/") for m in mounts)


def train_overrides(spec: LaunchSpec) -> dict[str, Any]:
    """The ``--set`` pairs of the pods' ``ampflow train``: the spec's own, and
    ``checkpoint_format=full`` where ``auto`` would write shards on several nodes without a shared
    ``--out`` (each pod's shards would land on its own disk, and rank 0 could not read the model back)."""
    overrides = dict(spec.overrides)
    auto = RunConfig(recipe=spec.recipe, strategy=spec.resolved_strategy).replace(**overrides)
    if (
        auto.checkpoint_format == "auto"
        and auto.sharded_checkpoints
        and spec.nodes > 1
        and not out_is_shared(spec)
    ):
        overrides["checkpoint_format"] = "full"
    return overrides


def default_out(spec: LaunchSpec) -> str:
    """The run directory when --out is not given: inside the pod, gone with it (MLflow keeps the run)."""
    return f"/tmp/ampflow/runs/{spec.job_name}"


def container_env(spec: LaunchSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    if spec.tracking_uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": spec.tracking_uri})
    if spec.mlflow_secret:
        for key in MLFLOW_SECRET_KEYS:
            if key == "MLFLOW_TRACKING_URI" and spec.tracking_uri:
                continue  # the explicit URI wins; a duplicate name would be rejected (list-map)
            env.append(
                {
                    "name": key,
                    "valueFrom": {"secretKeyRef": {"name": spec.mlflow_secret, "key": key, "optional": True}},
                }
            )
    return env


def _resources(spec: LaunchSpec) -> dict[str, dict[str, str]]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.cpu is not None:
        requests["cpu"] = str(spec.cpu)
    if spec.memory is not None:
        requests["memory"] = str(spec.memory)
    if spec.gpus_per_node > 0:
        # extended resources: the request must equal the limit
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(spec.gpus_per_node)
    out: dict[str, dict[str, str]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _volumes(spec: LaunchSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes = [copy.deepcopy(_SHM_VOLUME)]
    mounts = [dict(_SHM_MOUNT)]
    for i, (claim, path) in enumerate(spec.volumes):
        volumes.append({"name": f"data-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"data-{i}", "mountPath": path})
    return volumes, mounts


# NCCL and DataLoader workers use /dev/shm; a container's default 64 MiB stalls or crashes them
_SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
_SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def _labels(spec: LaunchSpec) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "ampflow",
        "app.kubernetes.io/component": "train",
        "app.kubernetes.io/managed-by": "ampflow-launch",
        "ampflow.dev/recipe": label_value(spec.recipe),
        "ampflow.dev/precision": spec.precision,
    }
    # on the job, not the pods: Kueue reads both from the top-level object it manages
    if spec.queue:
        labels[KUEUE_QUEUE_LABEL] = spec.queue
    if spec.workload_priority:
        labels[KUEUE_PRIORITY_LABEL] = spec.workload_priority
    return labels


def _metadata(spec: LaunchSpec) -> dict[str, Any]:
    return {"name": spec.job_name, "namespace": spec.namespace, "labels": _labels(spec), "annotations": {}}


def build_pytorchjob(spec: LaunchSpec) -> dict[str, Any]:
    group, version, _, kind = RESOURCES["pytorchjob"]
    container: dict[str, Any] = {
        "name": V1_CONTAINER,
        "image": spec.image,
        "command": container_command(spec),
        "env": container_env(spec),
    }
    volumes, mounts = _volumes(spec)
    container["volumeMounts"] = mounts
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {"containers": [container], "volumes": volumes}
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    if spec.priority_class:
        pod_spec["priorityClassName"] = spec.priority_class
    template = {"metadata": {"labels": {"app.kubernetes.io/name": "ampflow"}}, "spec": pod_spec}

    def replica(n: int) -> dict[str, Any]:
        return {"replicas": n, "restartPolicy": V1_RESTART_POLICY, "template": copy.deepcopy(template)}

    replicas = {"Master": replica(1)}
    if spec.nodes > 1:
        replicas["Worker"] = replica(spec.nodes - 1)
    run_policy: dict[str, Any] = {
        "cleanPodPolicy": spec.clean_pod_policy or DEFAULT_CLEAN_POD_POLICY,
        "backoffLimit": DEFAULT_BACKOFF_LIMIT if spec.backoff_limit is None else spec.backoff_limit,
        "ttlSecondsAfterFinished": (
            DEFAULT_TTL_SECONDS
            if spec.ttl_seconds_after_finished is None
            else spec.ttl_seconds_after_finished
        ),
    }
    if spec.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = spec.active_deadline_seconds
    manifest = {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": _metadata(spec),
        "spec": {
            # set, so that the operator exports PET_NPROC_PER_NODE and WORLD_SIZE = replicas x procs
            "nprocPerNode": str(spec.procs_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }
    return _stamp(manifest)


def build_trainjob(spec: LaunchSpec) -> dict[str, Any]:
    group, version, _, kind = RESOURCES["trainjob"]
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": container_command(spec),
        "numNodes": spec.nodes,
        "numProcPerNode": spec.procs_per_node,
        "env": container_env(spec),
    }
    resources = _resources(spec)
    if resources:
        trainer["resourcesPerNode"] = resources
    volumes, mounts = _volumes(spec)
    pod_patch: dict[str, Any] = {"volumes": volumes, "containers": [{"name": V2_JOB, "volumeMounts": mounts}]}
    if spec.node_selector:
        pod_patch["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_patch["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account:
        pod_patch["serviceAccountName"] = spec.service_account
    job_spec: dict[str, Any] = {
        "runtimeRef": {"name": spec.runtime, "apiGroup": group, "kind": "ClusterTrainingRuntime"},
        "trainer": trainer,
        "runtimePatches": [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {
                    "template": {
                        "spec": {
                            "replicatedJobs": [
                                {
                                    "name": V2_JOB,
                                    "template": {
                                        "spec": {
                                            "template": {
                                                "metadata": {"labels": {"app.kubernetes.io/name": "ampflow"}},
                                                "spec": pod_patch,
                                            }
                                        }
                                    },
                                }
                            ]
                        }
                    }
                },
            }
        ],
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    manifest = {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": _metadata(spec),
        "spec": job_spec,
    }
    return _stamp(manifest)


def build_manifest(spec: LaunchSpec) -> dict[str, Any]:
    """The job for ``spec.api``, checked against the admission rules (a failure is a bug: exit 1)."""
    manifest = build_trainjob(spec) if spec.api == "trainjob" else build_pytorchjob(spec)
    problems = validate_admission(manifest)
    if problems:
        raise ValueError(f"ampflow built a manifest the operator would refuse: {'; '.join(problems)}")
    return manifest


# -- identity ------------------------------------------------------------------------------------


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _spec_identity(spec: LaunchSpec) -> dict[str, Any]:
    # the launch inputs minus the name (the default name is derived from this)
    d = {k: getattr(spec, k) for k in spec.__dataclass_fields__ if k != "name"}
    d["tolerations"] = list(spec.tolerations)
    d["volumes"] = [list(v) for v in spec.volumes]
    return d


def spec_hash(manifest: dict[str, Any]) -> str:
    """A digest of what the job would run: apiVersion, kind and spec (not metadata)."""
    return _hash({"apiVersion": manifest["apiVersion"], "kind": manifest["kind"], "spec": manifest["spec"]})[
        :16
    ]


def _stamp(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(manifest)
    return manifest


def stored_spec_hash(obj: dict[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)


def resource_of(manifest: dict[str, Any]) -> tuple[str, str, str, str]:
    """(group, version, plural, kind) of a manifest this module builds."""
    for group, version, plural, kind in RESOURCES.values():
        if manifest.get("apiVersion") == f"{group}/{version}" and manifest.get("kind") == kind:
            return group, version, plural, kind
    raise ValueError(
        f"not a PyTorchJob v1 or TrainJob v1alpha1: {manifest.get('apiVersion')} {manifest.get('kind')}"
    )


# -- admission -----------------------------------------------------------------------------------


def validate_admission(manifest: dict[str, Any]) -> list[str]:
    """What the API server's CEL rules and the operator's webhook check beyond the CRD schema.

    Returns the problems (empty when the job would be admitted). Rules from ``tests/data/crds/README.md``
    (v1 webhook), the TrainJob CRD's ``x-kubernetes-validations`` and Trainer v2's torch plugin, plus
    ObjectMeta checks and the names of the pods the job will create.
    """
    problems: list[str] = []
    meta = manifest.get("metadata") or {}
    name = meta.get("name", "")
    if not (isinstance(name, str) and DNS1035_RE.match(name)):
        problems.append(f"metadata.name {name!r} must be a DNS-1035 label (lower case, starts with a letter)")
    if isinstance(name, str) and len(name) > MAX_LABEL:
        problems.append(f"metadata.name must be at most {MAX_LABEL} characters, has {len(name)}")
    ns = meta.get("namespace")
    if ns is not None and not (len(ns) <= MAX_LABEL and _DNS1123_LABEL_RE.match(ns)):
        problems.append(f"metadata.namespace {ns!r} must be a DNS-1123 label")
    for key, value in (meta.get("labels") or {}).items():
        try:
            _check_label("metadata.labels", key, value)
        except ConfigError as exc:
            problems.append(str(exc))
    kind = manifest.get("kind")
    spec = manifest.get("spec") or {}
    if kind == "PyTorchJob":
        problems += _admit_pytorchjob(name, spec)
    elif kind == "TrainJob":
        problems += _admit_trainjob(name, spec)
    else:
        problems.append(f"kind {kind!r} is neither PyTorchJob nor TrainJob")
    return problems


def _admit_pytorchjob(name: str, spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    replicas = spec.get("pytorchReplicaSpecs")
    if not replicas:
        return ["spec.pytorchReplicaSpecs is required"]
    for rtype, rspec in replicas.items():
        path = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in ("Master", "Worker"):
            problems.append(f"{path}: replica type must be Master or Worker")
        rspec = rspec or {}
        n = rspec.get("replicas")
        if rtype == "Master" and n != 1:
            problems.append(f"{path}.replicas must be 1, got {n!r}")
        if rtype == "Worker" and n is not None and n < 1:
            problems.append(f"{path}.replicas must be at least 1, got {n!r}")
        if rspec.get("restartPolicy") not in (None, *RESTART_POLICIES):
            problems.append(f"{path}.restartPolicy must be one of {', '.join(RESTART_POLICIES)}")
        containers = (((rspec.get("template") or {}).get("spec")) or {}).get("containers") or []
        if not containers:
            problems.append(f"{path}.template.spec.containers must be specified")
        if not any(c.get("name") == V1_CONTAINER for c in containers):
            problems.append(f"{path}: needs a container named {V1_CONTAINER!r}")
        for i, c in enumerate(containers):
            if not c.get("image"):
                problems.append(f"{path}.template.spec.containers[{i}].image is required")
            problems += _admit_env(f"{path}.template.spec.containers[{i}].env", c.get("env") or [])
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if "Worker" not in replicas:
            problems.append("spec.elasticPolicy requires a Worker replica spec")
        if elastic.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
            problems.append("spec.elasticPolicy.nProcPerNode and spec.nprocPerNode exclude each other")
    cpp = (spec.get("runPolicy") or {}).get("cleanPodPolicy")
    if cpp is not None and cpp not in CLEAN_POD_POLICIES:
        problems.append(
            f"spec.runPolicy.cleanPodPolicy must be one of {', '.join(CLEAN_POD_POLICIES)}, got {cpp!r}"
        )
    workers = (replicas.get("Worker") or {}).get("replicas") or 0
    longest = f"{name}-worker-{workers - 1}" if workers else f"{name}-master-0"
    if isinstance(name, str) and not is_dns1035(longest):
        problems.append(f"pod/service name {longest!r} would not be a DNS-1035 label; shorten metadata.name")
    return problems


def _admit_trainjob(name: str, spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    ref = spec.get("runtimeRef") or {}
    if not ref.get("name"):
        problems.append("spec.runtimeRef.name is required")
    trainer = spec.get("trainer") or {}
    nodes = trainer.get("numNodes", 1)
    if not isinstance(nodes, int) or nodes < 1:
        problems.append(f"spec.trainer.numNodes must be a positive integer, got {nodes!r}")
    nproc = trainer.get("numProcPerNode")
    if nproc is not None and not ((isinstance(nproc, int) and nproc >= 1) or nproc in ("auto", "cpu", "gpu")):
        problems.append(
            f"spec.trainer.numProcPerNode must be a positive integer or auto/cpu/gpu, got {nproc!r}"
        )
    env = trainer.get("env") or []
    reserved = sorted({e.get("name") for e in env} & set(TORCHRUN_RESERVED_ENV))
    if reserved:
        problems.append(f"spec.trainer.env must not set torchrun's reserved variables {', '.join(reserved)}")
    problems += _admit_env("spec.trainer.env", env)
    managers = [p.get("manager") for p in spec.get("runtimePatches") or []]
    if len(managers) != len(set(managers)):
        problems.append("spec.runtimePatches: manager must be unique")
    managed_by = spec.get("managedBy")
    if managed_by is not None and managed_by not in (
        "trainer.kubeflow.org/trainjob-controller",
        "kueue.x-k8s.io/multikueue",
    ):
        problems.append(f"spec.managedBy {managed_by!r} is not allowed")
    if (
        isinstance(nodes, int)
        and isinstance(name, str)
        and not is_dns1035(f"{name}-{V2_JOB}-0-{max(nodes - 1, 0)}")
    ):
        problems.append(f"pod hostname {name}-{V2_JOB}-0-{nodes - 1} would exceed {MAX_LABEL} characters")
    return problems


def _admit_env(path: str, env: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    names = [e.get("name") for e in env]
    if len(names) != len(set(names)):
        problems.append(f"{path}: variable names must be unique")
    for e in env:
        if not (isinstance(e.get("name"), str) and _ENV_NAME_RE.match(e["name"])):
            problems.append(f"{path}: invalid variable name {e.get('name')!r}")
        if "value" in e and "valueFrom" in e:
            problems.append(f"{path}.{e.get('name')}: value and valueFrom exclude each other")
    return problems
