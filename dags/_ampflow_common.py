"""Task builders shared by the ampflow DAGs (ampflow_retrain, ampflow_benchmark). Not a DAG file.

Every task runs one ``ampflow <step>`` command built by :func:`ampflow.commands.step_argv`; nothing
here trains, evaluates or compares. Where the command runs is chosen when the task runs:

- ``local``: a subprocess of the ``ampflow`` executable of the training virtual environment
  (Variable ``ampflow_bin``, env ``AMPFLOW_BIN``, else ``ampflow`` on PATH; deliberately not a param:
  whoever may trigger a run must not choose what the worker executes). It
  runs in its own session under ``_ampflow_proc.py``, so it outlives a crashed worker; its identity
  goes to the task state store and a retry reconnects to it instead of starting a second one.
- ``kubernetes``: a KubernetesPodOperator pod on the training image (GPU resources, node selector,
  tolerations, MLflow credentials from a Secret) with ``durable=True``: a retry reattaches to the
  running pod. Multi-GPU training runs ``ampflow launch`` in a small launcher pod; the PyTorchJob's
  name is derived from dag_id/run_id/task/map_index only, so a retried launcher finds and reattaches
  to the job the previous try submitted.

The mode comes from the DAG param ``execution_mode``, else the Variable ``ampflow_execution_mode``,
else env ``AMPFLOW_EXECUTION_MODE``, else ``local``. Parse time reads no Variable and imports neither
torch nor mlflow (the scheduler parses this file every few seconds).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import BaseOperator, Param, Variable
from airflow.sdk.bases.resumablejobmixin import ResumableJobMixin
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from ampflow.commands import step_argv
from ampflow.config import BASELINE_PRECISION, PRECISIONS
from ampflow.kube.names import dns1035_name, max_job_name_len

MODES = ("local", "kubernetes")
PROC = Path(__file__).resolve().with_name("_ampflow_proc.py")
# exit code 2 is bad input (README: exit codes): retrying cannot help, so the task fails without using its retries
EXIT_BAD_INPUT = 2

# Cluster settings; the Variable ``ampflow_kubernetes`` (a JSON object) overrides any of them.
KUBE_DEFAULTS: dict[str, Any] = {
    "namespace": "ampflow",
    "image": "ghcr.io/ampflow/ampflow-train:0.1.0",
    "kubernetes_conn_id": "kubernetes_default",
    "in_cluster": None,
    "gpu_resource": "nvidia.com/gpu",
    "gpus": 1,
    "cpu": "4",
    "memory": "16Gi",
    "cpu_step_cpu": "1",
    "cpu_step_memory": "4Gi",
    "node_selector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    # a Secret with MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN) keys
    "mlflow_secret": "ampflow-mlflow",
    # shared storage for data/, runs/ and reports, mounted in every pod at mount_path
    "pvc": "ampflow-data",
    "mount_path": "/mnt/ampflow",
    "service_account": "ampflow",
    # may create, get and delete PyTorchJobs and read pod logs in the namespace
    "launcher_service_account": "ampflow-launcher",
    "startup_timeout_seconds": 900,
}


# -- parse-time settings (environment only: no Variable lookup, no DB round trip per parse) ------


def parse_time_setting(name: str, default: str) -> str:
    """A setting the scheduler needs while parsing, from ``AIRFLOW_VAR_<NAME>`` (Airflow's own way of
    spelling a Variable in the environment), else ``default``."""
    return os.environ.get(f"AIRFLOW_VAR_{name.upper()}", default)


def default_args() -> dict[str, Any]:
    retries = max(2, int(parse_time_setting("ampflow_retries", "2")))
    return {
        "owner": "ampflow",
        "retries": retries,
        "retry_delay": timedelta(seconds=float(parse_time_setting("ampflow_retry_delay_s", "60"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    }


def common_params() -> dict[str, Param]:
    return {
        "recipe": Param(
            "tweets-bow", type="string", minLength=1, description="built-in recipe or module:function"
        ),
        "source": Param(
            None, type=["null", "string"], description="data file or fsspec URI (default: the recipe's data)"
        ),
        "limit": Param(
            None, type=["null", "integer"], minimum=1, description="prep: keep a stratified subset of N rows"
        ),
        "overrides": Param(
            {}, type="object", description='RunConfig --set overrides, e.g. {"max_steps": 100}'
        ),
        "execution_mode": Param(
            None,
            type=["null", "string"],
            enum=[None, *MODES],
            description="local or kubernetes; empty: Variable ampflow_execution_mode, else local",
        ),
        "image": Param(None, type=["null", "string"], description="kubernetes mode: training image override"),
    }


def precision_param(default: str = BASELINE_PRECISION, **kw: Any) -> Param:
    return Param(default, type="string", enum=list(PRECISIONS), **kw)


# -- run-time resolution -------------------------------------------------------------------------


def _variable(key: str, default: Any = None) -> Any:
    try:
        return Variable.get(key, default=default)
    except Exception:  # no API server to ask (plain import, unit test): the default stands
        return default


def resolve_mode(context: Any) -> str:
    mode = (
        context["params"].get("execution_mode")
        or _variable("ampflow_execution_mode")
        or os.environ.get("AMPFLOW_EXECUTION_MODE")
        or "local"
    )
    if mode not in MODES:
        raise AirflowFailException(f"execution_mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def resolve_ampflow_bin(context: Any) -> str:
    candidate = _variable("ampflow_bin") or os.environ.get("AMPFLOW_BIN") or "ampflow"
    found = shutil.which(candidate)
    if not found:
        raise AirflowFailException(
            f"ampflow_bin: {candidate!r} is not an executable; point the Variable ampflow_bin "
            "or env AMPFLOW_BIN at the training venv's ampflow (e.g. /opt/ampflow/.venv/bin/ampflow)"
        )
    return found


def kube_settings(context: Any) -> dict[str, Any]:
    raw = _variable("ampflow_kubernetes")
    overrides = json.loads(raw) if isinstance(raw, str) and raw.strip() else (raw or {})
    if not isinstance(overrides, dict):
        raise AirflowFailException("Variable ampflow_kubernetes must be a JSON object")
    settings = {**KUBE_DEFAULTS, **overrides}
    if context["params"].get("image"):
        settings["image"] = context["params"]["image"]
    return settings


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "run"


def run_root(context: Any, mode: str | None = None) -> str:
    """The directory every step of this DAG run reads and writes (local disk or the shared PVC)."""
    mode = mode or resolve_mode(context)
    if mode == "kubernetes":
        base = kube_settings(context)["mount_path"]
    else:
        home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
        base = (
            _variable("ampflow_workdir")
            or os.environ.get("AMPFLOW_WORKDIR")
            or os.path.join(home, "ampflow-work")
        )
    return os.path.join(base, _safe(context["dag"].dag_id), _safe(context["run_id"]))


def job_name(context: Any, nodes: int = 1) -> str:
    """A DNS-1035 name fixed by dag_id/run_id/task/map_index and nothing else (not the try): a retry
    submits the same name, and ``ampflow launch`` reattaches to the job that already exists."""
    ti = context["ti"]
    digest = hashlib.sha256(f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}".encode()).hexdigest()[:10]
    return dns1035_name(f"{ti.dag_id}-{ti.task_id}-{digest}", max_job_name_len("pytorchjob", nodes))


def run_context_tags(context: Any) -> dict[str, str]:
    """Tags every MLflow run a step starts carries (through MLflow's ``MLFLOW_RUN_CONTEXT``), so the
    finalizer can find and close runs a killed step left RUNNING."""
    ti = context["ti"]
    return {
        "ampflow.airflow_dag_id": ti.dag_id,
        "ampflow.airflow_run_id": ti.run_id,
        "ampflow.airflow_task_id": ti.task_id,
    }


# -- local step processes -------------------------------------------------------------------------


def _toleration_flag(t: dict[str, Any]) -> str:
    """A toleration in ``ampflow launch``'s KEY[=VALUE][:EFFECT] spelling."""
    text = t["key"] + (f"={t['value']}" if t.get("value") else "")
    return text + (f":{t['effect']}" if t.get("effect") else "")


def _proc_start_ticks(pid: int) -> str | None:
    """Start time of ``pid`` since boot: a recycled pid has another one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(ident: dict[str, Any]) -> bool:
    ticks = _proc_start_ticks(int(ident["pid"]))
    if ticks is None or ticks != ident.get("start"):
        return False
    state = Path(f"/proc/{ident['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


class AmpflowStepOperator(ResumableJobMixin, BaseOperator):
    """Run ``ampflow <step>`` locally (resumable subprocess) or as a Kubernetes pod.

    :param step: an ampflow step (prep, train, evaluate, compare, register).
    :param step_options: keyword options for :func:`step_argv` (templated; XComArgs resolve).
    :param overrides: RunConfig ``--set`` overrides (templated).
    :param result: ``(option, file)``: after success, return the JSON in ``<options[option]>/<file>``
        as the task's XCom (for compare: the comparison summary, its markdown printed to the log).
    :param gpu: the step needs a GPU in kubernetes mode (train, evaluate).
    :param on_kill_action: ``kill`` stops the local step when Airflow kills the task (marked failed,
        execution timeout); ``keep`` leaves it running for the next try to reconnect to (the local
        analogue of the pod operator's ``on_kill_action="keep_pod"``).
    """

    template_fields = ("step_options", "overrides")
    template_fields_renderers = {"step_options": "json", "overrides": "json"}
    ui_color = "#e8f0fe"
    external_id_key = "ampflow_local_step"

    def __init__(
        self,
        *,
        step: str,
        step_options: dict[str, Any] | Any = None,
        overrides: dict[str, Any] | Any = None,
        result: tuple[str, str] | None = None,
        gpu: bool = False,
        on_kill_action: str = "kill",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_kill_action not in ("kill", "keep"):
            raise ValueError(f"on_kill_action must be kill or keep, got {on_kill_action!r}")
        self.step = step
        self.step_options = step_options or {}
        self.overrides = overrides or {}
        self.result = result
        self.gpu = gpu
        self.on_kill_action = on_kill_action
        self._job: dict[str, Any] | None = None
        self._result: Any = None
        self._pod_op: KubernetesPodOperator | None = None

    # -- the command ------------------------------------------------------------------------------

    def options(self, context: Any) -> dict[str, Any]:
        opts = {k: v for k, v in dict(self.step_options).items() if v is not None and not k.startswith("_")}
        return opts

    def distributed(self, context: Any) -> bool:
        params = context["params"]
        return int(params.get("nodes") or 1) * int(params.get("gpus_per_node") or 1) > 1

    def argv(self, context: Any, program: tuple[str, ...], mode: str) -> list[str]:
        opts = self.options(context)
        step = self.step
        if step == "train" and mode == "kubernetes" and self.distributed(context):
            settings = kube_settings(context)
            params = context["params"]
            step = "launch"
            opts = {k: v for k, v in opts.items() if k not in ("parent_run_id", "require_tracking", "resume")}
            if opts.get("strategy") == "single":
                opts.pop("strategy")  # several processes: the launcher's default (ddp) applies
            nodes = int(params.get("nodes") or 1)
            opts.update(
                name=job_name(context, nodes),
                nodes=nodes,
                gpus_per_node=int(params.get("gpus_per_node") or 1),
                image=settings["image"],
                namespace=settings["namespace"],
            )
            # the job's pods get the task pods' placement, storage and credentials
            opts.update(
                {
                    "mlflow_secret": settings["mlflow_secret"],
                    "service_account": settings["service_account"],
                    "node_selector": [f"{k}={v}" for k, v in settings["node_selector"].items()] or None,
                    "tolerations": [_toleration_flag(t) for t in settings["tolerations"]] or None,
                    "volume": f"{settings['pvc']}:{settings['mount_path']}",
                    "cpu": settings["cpu"],
                    "memory": settings["memory"],
                }
            )
        elif step == "train" and context["ti"].try_number > 1:
            # a retry continues from the failed try's last checkpoint (train starts fresh without one)
            opts["resume"] = True
        overrides = dict(self.overrides or {})
        if step == "evaluate":
            # evaluate takes the trained run's configuration; only a few keys may differ
            from ampflow.steps.evaluate import EVAL_MAY_CHANGE

            overrides = {k: v for k, v in overrides.items() if k in EVAL_MAY_CHANGE}
        elif step not in ("train", "launch"):
            overrides = {}
        return step_argv(step, program=program, overrides=overrides or None, **opts)

    # -- execute ----------------------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        mode = resolve_mode(context)
        self.log.info("ampflow %s: execution mode %s", self.step, mode)
        if mode == "kubernetes":
            pod_op = self.pod_operator(context)
            self._pod_op = pod_op
            value = pod_op.execute(context)
            return self._report(value) if self.result else value
        return self.execute_resumable(context)

    def on_kill(self) -> None:
        if self._pod_op is not None:
            self._pod_op.on_kill()
            return
        job = self._job
        if job is None or self.on_kill_action == "keep" or not _alive(job):
            return
        self.log.info("stopping local step (pid %s)", job["pid"])
        try:
            os.kill(int(job["pid"]), signal.SIGTERM)  # the keeper forwards it to the step
        except ProcessLookupError:
            return
        for _ in range(300):  # the step closes its MLflow run as KILLED before it exits
            if Path(job["status"]).exists() or not _alive(job):
                return
            time.sleep(0.1)

    # -- ResumableJobMixin: the local "external system" is a step process -----------------------

    def submit_job(self, context: Any) -> dict[str, Any]:
        program = (resolve_ampflow_bin(context),)
        argv = self.argv(context, program, "local")
        ti = context["ti"]
        folder = (
            Path(run_root(context, "local"))
            / ".steps"
            / (f"{ti.task_id}" + (f".{ti.map_index}" if ti.map_index >= 0 else "") + f".try{ti.try_number}")
        )
        folder.mkdir(parents=True, exist_ok=True)
        out = self.options(context).get("out")
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        status, log = folder / "status.json", folder / "step.log"
        status.unlink(missing_ok=True)
        env = dict(os.environ)
        env.pop("MLFLOW_RUN_ID", None)
        env["MLFLOW_RUN_CONTEXT"] = json.dumps(run_context_tags(context))
        env.setdefault("AMPFLOW_QUIET_ERRORS", "0")
        self.log.info("running: %s", " ".join(argv))
        proc = subprocess.Popen(  # noqa: S603 - argv from step_argv, no shell
            [sys.executable, str(PROC), str(status), str(log), "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
        ident = {
            "pid": proc.pid,
            "start": _proc_start_ticks(proc.pid),
            "status": str(status),
            "log": str(log),
            "argv": argv,
            "result": self._result_path(context),
        }
        self._job = ident
        return ident

    def get_job_status(self, external_id: Any, context: Any) -> str:
        status = Path(external_id["status"])
        if status.exists():
            rc = json.loads(status.read_text())["returncode"]
            return "succeeded" if rc == 0 else f"failed:{rc}"
        return "running" if _alive(external_id) else "lost"

    def is_job_active(self, status: str) -> bool:
        return status == "running"

    def is_job_succeeded(self, status: str) -> bool:
        return status == "succeeded"

    def poll_until_complete(self, external_id: Any, context: Any) -> Any:
        self._job = external_id
        self.log.info("following local step pid %s (log %s)", external_id["pid"], external_id["log"])
        offset = 0
        while True:
            status = self.get_job_status(external_id, context)
            offset = self._stream_log(external_id["log"], offset)
            if status != "running":
                break
            time.sleep(1.0)
        self._stream_log(external_id["log"], offset)
        if status == "lost":
            raise AirflowException(f"local step pid {external_id['pid']} vanished without an exit status")
        if status != "succeeded":
            rc = int(status.split(":", 1)[1])
            message = f"ampflow {self.step} exited {rc}: {self._last_line(external_id['log'])}"
            if rc == EXIT_BAD_INPUT:
                raise AirflowFailException(message)  # bad input: no retry can fix it
            raise AirflowException(message)
        # the mixin returns this value itself when it reconnected, and asks get_job_result otherwise
        self._result = self._read_result(external_id)
        return self._result

    def get_job_result(self, external_id: Any, context: Any) -> Any:
        if self._result is not None:
            return self._result
        return self._read_result(external_id)

    def _read_result(self, external_id: Any) -> Any:
        path = external_id.get("result")
        if not path:
            return {"argv": external_id["argv"]}
        try:
            value = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise AirflowException(f"ampflow {self.step} succeeded but {path} is unreadable: {exc}") from exc
        report = Path(path).with_name("report.md")
        if isinstance(value, dict) and "markdown" not in value and report.exists():
            value["markdown"] = report.read_text()
        return self._report(value)

    # -- helpers ----------------------------------------------------------------------------------

    def _result_path(self, context: Any) -> str | None:
        if not self.result:
            return None
        option, name = self.result
        base = self.options(context).get(option)
        if not base:
            return None
        # an option naming a file (register's --summary) puts the result beside it
        folder = Path(str(base)).parent if Path(str(base)).suffix == ".json" else Path(str(base))
        return str(folder / name)

    def _report(self, value: Any) -> Any:
        if isinstance(value, dict):
            # per-step series (loss curve, lr schedule) stay in the result file, out of the metadata DB
            value = {
                k: v
                for k, v in value.items()
                if k not in ("loss_curve", "lr_schedule") and not (isinstance(v, list) and len(v) > 50)
            }
        if isinstance(value, dict) and isinstance(value.get("markdown"), str):
            self.log.info("ampflow %s report:\n%s", self.step, value["markdown"])
        return value

    def _stream_log(self, path: str, offset: int) -> int:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except OSError:
            return offset
        complete = chunk.rfind(b"\n") + 1
        for line in chunk[:complete].decode(errors="replace").splitlines():
            self.log.info("[%s] %s", self.step, line)
        return offset + complete

    @staticmethod
    def _last_line(path: str) -> str:
        try:
            lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    # -- kubernetes -------------------------------------------------------------------------------

    def pod_operator(self, context: Any) -> KubernetesPodOperator:
        """The pod this task runs in kubernetes mode (built at run time: settings are Variables)."""
        s = kube_settings(context)
        launcher = self.step == "train" and self.distributed(context)
        argv = self.argv(context, ("ampflow",), "kubernetes")
        result = self._result_path(context)
        cmds, arguments = argv[:1], argv[1:]
        if result and not launcher:
            # the worker cannot read the PVC: hand the result file to the pod operator's XCom sidecar
            cmds = ["/bin/sh", "-c", 'set -e; "$@"; cp "$0" /airflow/xcom/return.json', result]
            arguments = argv
        gpu = self.gpu and not launcher
        if gpu:
            n = str(int(context["params"].get("gpus_per_node") or s["gpus"]))
            limits = {s["gpu_resource"]: n, "cpu": s["cpu"], "memory": s["memory"]}
            requests = dict(limits)
        else:
            limits = {"cpu": s["cpu_step_cpu"], "memory": s["cpu_step_memory"]}
            requests = dict(limits)
        tolerations = [k8s.V1Toleration(**t) for t in s["tolerations"]] if gpu else []
        env = [
            k8s.V1EnvVar(name="MLFLOW_RUN_CONTEXT", value=json.dumps(run_context_tags(context))),
            k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
        ]
        return KubernetesPodOperator(
            task_id=self.task_id,
            name=job_name(context),
            namespace=s["namespace"],
            image=s["image"],
            cmds=cmds,
            arguments=arguments,
            env_vars=env,
            # credentials reach the pod from the Secret, never through the manifest or a log line
            env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s["mlflow_secret"]))],
            container_resources=k8s.V1ResourceRequirements(limits=limits, requests=requests),
            node_selector=dict(s["node_selector"]) if gpu else {},
            tolerations=tolerations,
            volumes=[
                k8s.V1Volume(
                    name="ampflow-data",
                    persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=s["pvc"]),
                )
            ],
            volume_mounts=[k8s.V1VolumeMount(name="ampflow-data", mount_path=s["mount_path"])],
            service_account_name=s["launcher_service_account"] if launcher else s["service_account"],
            security_context=k8s.V1PodSecurityContext(run_as_non_root=True),
            labels={"app.kubernetes.io/part-of": "ampflow", "ampflow/step": self.step},
            kubernetes_conn_id=s["kubernetes_conn_id"],
            in_cluster=s["in_cluster"],
            # a retry after a worker crash reattaches to the running pod (task state store, 3.3+)
            durable=True,
            on_finish_action="delete_succeeded_pod",
            get_logs=True,
            do_xcom_push=bool(result and not launcher),
            startup_timeout_seconds=int(s["startup_timeout_seconds"]),
            retries=0,
        )


# -- MLflow: close what a killed step left RUNNING ------------------------------------------------


def _mlflow_request(base: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    url = base.rstrip("/") + "/api/2.0/mlflow/" + path
    data = None
    if payload is not None and path.endswith(("search", "update")):
        data = json.dumps(payload).encode()
    elif payload:
        url += "?" + urllib.parse.urlencode(payload)
    req = urllib.request.Request(
        url, data=data, method="POST" if data else "GET", headers={"Content-Type": "application/json"}
    )
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    elif token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the configured tracking server
        return json.loads(resp.read() or b"{}")


def local_run_ids(root: str | Path) -> set[str]:
    """MLflow run ids the steps recorded under ``root`` (each run directory's tracking/state.json)."""
    ids = set()
    for state in Path(root).glob("**/tracking/state.json"):
        try:
            run_id = json.loads(state.read_text()).get("run_id")
        except (OSError, ValueError):
            continue
        if run_id:
            ids.add(run_id)
    return ids


def close_leftover_runs(context: Any, log: Any) -> list[str]:
    """Mark FAILED every MLflow run of this DAG run still RUNNING (a step killed by SIGKILL, OOM or a
    lost pod cannot close its own run). The runs are those tagged with this Airflow run id and, in
    local mode, those the run directories record. Needs an http(s) tracking URI; returns what it closed."""
    uri = _variable("ampflow_mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        log.info("MLflow tracking URI %r is not a server: leftover-run check skipped", uri or None)
        return []
    candidates: dict[str, str] = {}
    experiments = _mlflow_request(uri, "experiments/search", {"max_results": 1000}).get("experiments", [])
    ids = [e["experiment_id"] for e in experiments]
    if ids:
        run_id = context["ti"].run_id.replace("'", "")
        query = f"tags.`ampflow.airflow_run_id` = '{run_id}' and attributes.status = 'RUNNING'"
        for run in _mlflow_request(
            uri, "runs/search", {"experiment_ids": ids, "filter": query, "max_results": 1000}
        ).get("runs", []):
            candidates[run["info"]["run_id"]] = run["info"]["status"]
    if resolve_mode(context) == "local":
        for rid in local_run_ids(run_root(context, "local")) - set(candidates):
            try:
                candidates[rid] = _mlflow_request(uri, "runs/get", {"run_id": rid})["run"]["info"]["status"]
            except urllib.error.HTTPError as exc:
                log.warning(
                    "MLflow run %s recorded in the run directory is unknown to %s (%s)", rid, uri, exc.code
                )
    closed = []
    for rid, status in sorted(candidates.items()):
        if status != "RUNNING":
            continue
        _mlflow_request(
            uri, "runs/update", {"run_id": rid, "status": "FAILED", "end_time": int(time.time() * 1000)}
        )
        log.warning("marked MLflow run %s FAILED (left RUNNING by a killed step)", rid)
        closed.append(rid)
    log.info("MLflow runs of this DAG run checked: %d, closed: %d", len(candidates), len(closed))
    return closed


def verdict(summary: Any) -> tuple[bool, str]:
    """The champion gate on a comparison summary: a recommended configuration and no regression."""
    if not isinstance(summary, dict):
        return False, "no comparison summary"
    regressions = summary.get("regressions") or []
    if regressions:
        return False, f"regression against earlier runs: {regressions}"
    recommended = summary.get("recommended")
    if not recommended:
        return False, "no configuration passed the accuracy tolerance"
    return True, f"recommended {recommended}"
