"""``AmpflowStepOperator``: one Airflow task runs one ``ampflow <step>``, locally or in a pod.

What the task runs is decided by :func:`ampflow.commands.plan_step`; the operator only translates the
Airflow context into its inputs: a try after the first is a ``retry`` (``train`` resumes from its
checkpoint), ``nodes`` x ``gpus_per_node`` > 1 in kubernetes mode is ``distributed`` (``train``
becomes ``ampflow launch`` of a TrainJob, or a PyTorchJob with the ``api`` param), and the cluster
settings and the ``queue``/``priority_class``/``api``/``queue_timeout``/``run_deadline`` params are
``launch``'s options. A ``train`` task may carry its own topology instead of the params' (the step
option :data:`TOPOLOGY_OPTION`, ``[nodes, processes per node]``: the benchmark DAG's configurations
differ there): with more than one process it is launched as a job in kubernetes mode, and runs under
torchrun (:func:`airflow_ampflow.process.torchrun_program`) in local mode.

Where it runs (:func:`~airflow_ampflow.runtime.resolve_mode`):

- ``local``: a process of the training venv's ``ampflow``, kept by :mod:`airflow_ampflow.process` in
  its own session so it outlives a crashed worker; its identity goes to Airflow's task state store
  (``ResumableJobMixin``) and a retry reconnects to it instead of starting a second one.
- ``kubernetes``: the task is itself a KubernetesPodOperator (a subclass, configured at run time from
  :mod:`airflow_ampflow.pods`: cluster settings are Variables); the provider's durable pod handling
  makes a retry reattach to the running pod.

Waits are deferred (``deferrable=True``, the default): the worker slot is free while a step runs. A
local step is watched by :class:`~airflow_ampflow.triggers.LocalStepTrigger` and collected in
:meth:`AmpflowStepOperator.execute_complete`; a pod by the provider's ``KubernetesPodTrigger`` and
collected in ``trigger_reentry``; a distributed ``train``'s job is watched by its launcher pod, which
the task itself waits for deferred. A try that runs past ``execution_timeout`` while deferred ends
with the step stopped (``on_kill_action="kill"``) or left running for the retry to reattach to
(``"keep"``). ``deferrable=False`` polls from the worker (a deployment without a triggerer).

The MLflow server comes from the Connection the ``mlflow_conn_id`` param names
(:mod:`airflow_ampflow.connections`); in kubernetes mode only its URI and TLS settings reach the pod,
the credentials stay in the Secret.

Exit code 2 (bad input) and 3 (``compare --fail-on-regression`` found a regression) fail the task
without using its retries: a retry would decide the same. A step's result file (``result``) becomes
the task's XCom, long per-step series left out, and a Markdown report in it is logged. A ``register``
task declares the champion asset alias as its outlet and emits an event only when its step promoted
the candidate (:mod:`airflow_ampflow.assets`).

Sources: Airflow 3 deferrable operators
(https://airflow.apache.org/docs/apache-airflow/stable/authoring-and-scheduling/deferring.html),
``airflow.sdk.ResumableJobMixin`` (Airflow 3.3), the cncf-kubernetes provider's
``KubernetesPodOperator(deferrable=True, durable=True)``.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import ResumableJobMixin
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_ampflow import pods, process
from airflow_ampflow.assets import CHAMPION, announce_champion
from airflow_ampflow.connections import resolve_mlflow_env
from airflow_ampflow.runtime import (
    kube_settings,
    resolve_ampflow_bin,
    resolve_mode,
    run_context_tags,
    run_root,
)
from airflow_ampflow.triggers import LocalStepTrigger
from ampflow.commands import StepPlan, plan_step

# exit code 2 is bad input (README: exit codes): retrying cannot help, so the task fails without using its retries
EXIT_BAD_INPUT = 2
# exit code 3: compare found a regression and was asked to fail on it; a decision, not a transient failure
EXIT_REGRESSION = 3
# result keys kept out of the XCom (the metadata DB): per-step series stay in the result file
_SERIES = ("loss_curve", "lr_schedule")
# on_kill_action: ours (kill/keep) and the pod operator's spelling of the same choice
_KILL_ACTIONS = {"kill": "delete_pod", "keep": "keep_pod", "delete_pod": "delete_pod", "keep_pod": "keep_pod"}
# how long past a try's deadline Airflow's own trigger timeout waits for the trigger's timeout event
_DEFER_GRACE_S = 60
# a step option (bookkeeping, never in the argv): a train task's own [nodes, processes per node]
TOPOLOGY_OPTION = "_topology"


class AmpflowStepOperator(ResumableJobMixin, KubernetesPodOperator):
    """Run ``ampflow <step>`` locally (a resumable process) or as a Kubernetes pod, deferred.

    :param step: an ampflow step (prep, train, evaluate, compare, register, close-runs).
    :param step_options: keyword options of the step (templated; XComArgs resolve). ``None`` values
        and keys starting with ``_`` (bookkeeping such as a mapped task's ``_id``) are left out.
    :param overrides: RunConfig ``--set`` overrides (templated); the steps that take none drop them.
    :param result: ``(option, file)``: after success, return the JSON in ``<options[option]>/<file>``
        as the task's XCom (for compare: the comparison summary, its markdown printed to the log).
    :param gpu: the step needs a GPU in kubernetes mode (train, evaluate).
    :param on_kill_action: ``kill`` stops the step when Airflow kills the task or a deferred try runs
        past ``execution_timeout``; ``keep`` leaves it running for the next try to reconnect to (the
        pod operator's ``delete_pod``/``keep_pod``, which are accepted too).
    :param deferrable: wait in the triggerer, not in a worker slot (default).
    :param poll_interval: seconds between two looks at a running step or pod.
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
        deferrable: bool = True,
        poll_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        if step == "register":
            # declared while parsing (outlets are static); the event itself only on promotion
            kwargs.setdefault("outlets", [CHAMPION])
        if on_kill_action not in _KILL_ACTIONS:
            raise ValueError(f"on_kill_action must be kill or keep, got {on_kill_action!r}")
        # the pod operator defaults to no XCom (its sidecar); a local step's result is the XCom
        kwargs.setdefault("do_xcom_push", True)
        super().__init__(
            on_kill_action=_KILL_ACTIONS[on_kill_action],
            on_finish_action="delete_succeeded_pod",
            deferrable=deferrable,
            poll_interval=poll_interval,
            **kwargs,
        )
        self.step = step
        self.step_options = step_options or {}
        self.overrides = overrides or {}
        self.result = result
        self.gpu = gpu
        self._job: dict[str, Any] | None = None
        self._result: Any = None

    @property
    def keep_on_kill(self) -> bool:
        return self.on_kill_action.value == "keep_pod"

    # -- what the task runs -----------------------------------------------------------------------

    def topology(self) -> tuple[int, int] | None:
        """This task's own ``(nodes, processes per node)`` (:data:`TOPOLOGY_OPTION`), else None: the
        DAG's ``nodes`` x ``gpus_per_node`` params decide."""
        own = self._option(TOPOLOGY_OPTION)
        if not own:
            return None
        nodes, per_node = (int(n) for n in own)
        return nodes, per_node

    def plan(self, context: Any, mode: str, tracking_uri: str | None = None) -> StepPlan:
        """This try's step, options and overrides, from :func:`plan_step`."""
        own = self.topology() if self.step == "train" else None
        if own is not None:
            several = own[0] * own[1] > 1
        else:
            several = self.step == "train" and pods.is_distributed(context["params"])
        distributed = mode == "kubernetes" and several
        launch = None
        if distributed:
            launch = pods.launch_options(context, kube_settings(context), tracking_uri)
            if own is not None:
                launch.update(nodes=own[0], gpus_per_node=own[1], name=pods.job_name(context, own[0]))
        try:
            return plan_step(
                self.step,
                dict(self.step_options),
                overrides=dict(self.overrides or {}),
                distributed=distributed,
                retry=context["ti"].try_number > 1,
                launch=launch,
            )
        except ValueError as exc:  # an unknown option or --set key: bad input, a retry decides the same
            raise AirflowFailException(f"{self.step}: {exc}") from None

    def local_program(self) -> tuple[str, ...]:
        """What runs ``ampflow`` in local mode: the training venv's ``ampflow``, or, for a train task
        whose own topology has several processes, torchrun of that venv (one node)."""
        ampflow = resolve_ampflow_bin()
        own = self.topology() if self.step == "train" else None
        if own is None or own[0] * own[1] <= 1:
            return (ampflow,)
        if own[0] != 1:
            raise AirflowFailException(f"train: {own[0]} nodes cannot run in local mode; use kubernetes")
        try:
            return process.torchrun_program(ampflow, own[1])
        except FileNotFoundError as exc:
            raise AirflowFailException(f"train: {exc}") from None

    def argv(self, context: Any, program: tuple[str, ...], mode: str) -> list[str]:
        """The command line this try runs in ``mode``, starting with ``program``."""
        return self.plan(context, mode).argv(program)

    def _option(self, name: str) -> Any:
        return dict(self.step_options).get(name)

    def _result_path(self) -> str | None:
        if not self.result:
            return None
        option, name = self.result
        base = self._option(option)
        if not base:
            return None
        # an option naming a file (register's --summary) puts the result beside it
        folder = Path(str(base)).parent if Path(str(base)).suffix == ".json" else Path(str(base))
        return str(folder / name)

    # -- execute ----------------------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        mode = resolve_mode(context)
        self.log.info("ampflow %s: execution mode %s", self.step, mode)
        if mode == "kubernetes":
            self.configure_pod(context)
            # the pod operator's own execute: deferrable, it defers to KubernetesPodTrigger and the
            # task resumes in trigger_reentry; otherwise it returns the sidecar's result here
            value = KubernetesPodOperator.execute(self, context)
        else:
            value = self.execute_resumable(context)
        return self._finish(context, value)

    def _finish(self, context: Any, value: Any) -> Any:
        if self.result and resolve_mode(context) == "kubernetes":
            value = self._report(value)
        if self.step == "register" and announce_champion(context, value):
            self.log.info("new champion: asset event for %s", value.get("model_name"))
        return value

    def on_kill(self) -> None:
        if self._job is not None:
            if not self.keep_on_kill:
                self.log.info("stopping local step (pid %s)", self._job["pid"])
                process.stop(self._job)
        else:
            super().on_kill()

    # -- kubernetes mode: this task is the pod operator -------------------------------------------

    def configure_pod(self, context: Any, *, connection: bool = True) -> AmpflowStepOperator:
        """Set this task's pod (image, argv, resources, placement, Secret) for ``context``; returns
        the operator. Built at run time: cluster settings are Variables and the argv depends on the
        try. ``connection``: read the MLflow Connection (not needed again when resuming)."""
        env = resolve_mlflow_env(context, self.log) if connection else None
        if env and any(k in env for k in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")):
            self.log.info(
                "kubernetes mode: the connection's credentials do not go into the pod; the pod reads "
                "them from the Secret %r",
                kube_settings(context)["mlflow_secret"],
            )
        uri = (env or {}).get("MLFLOW_TRACKING_URI")
        plan = self.plan(context, "kubernetes", tracking_uri=uri)
        attrs = pods.pod_settings(
            context,
            step=self.step,
            argv=plan.argv(("ampflow",)),
            settings=kube_settings(context),
            gpu=self.gpu,
            launcher=plan.step == "launch",
            result=self._result_path(),
            run_context=run_context_tags(context),
            mlflow_env=env,
        )
        for name, value in attrs.items():
            setattr(self, name, value)
        self.pod_request_obj = None
        return self

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        """The pod ended (deferred mode): the provider collects logs and the sidecar's result."""
        # a resumed task is a fresh operator: its pod settings are set again before the provider reads them
        self.configure_pod(context, connection=False)
        value = super().trigger_reentry(context, event)
        return self._finish(context, value)

    # -- ResumableJobMixin: the local "external system" is a step process -----------------------

    def submit_job(self, context: Any) -> dict[str, Any]:
        argv = self.argv(context, self.local_program(), "local")
        ti = context["ti"]
        name = ti.task_id + (f".{ti.map_index}" if ti.map_index >= 0 else "") + f".try{ti.try_number}"
        out = self._option("out")
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("MLFLOW_RUN_ID", None)
        env.update(resolve_mlflow_env(context, self.log) or {})
        env["MLFLOW_RUN_CONTEXT"] = json.dumps(run_context_tags(context))
        env.setdefault("AMPFLOW_QUIET_ERRORS", "0")
        self.log.info("running: %s", " ".join(argv))
        ident = process.start(argv, Path(run_root(context, "local")) / ".steps" / name, env)
        ident["result"] = self._result_path()
        self._job = ident
        return ident

    def get_job_status(self, external_id: Any, context: Any) -> str:
        return process.state(external_id)

    def is_job_active(self, status: str) -> bool:
        return status == "running"

    def is_job_succeeded(self, status: str) -> bool:
        return status == "succeeded"

    def poll_until_complete(self, external_id: Any, context: Any) -> Any:
        """Deferrable: hand the wait to :class:`LocalStepTrigger` (raises ``TaskDeferred``; the task
        resumes in :meth:`execute_complete`). Otherwise follow the step from this worker."""
        self._job = external_id
        if self.deferrable:
            self._defer_local(external_id, context, log_offset=0)
        self.log.info("following local step pid %s (log %s)", external_id["pid"], external_id["log"])
        follower = process.LogFollower(external_id["log"])
        while True:
            status = process.state(external_id)
            for line in follower.new_lines():
                self.log.info("[%s] %s", self.step, line)
            if status != "running":
                break
            time.sleep(1.0)
        for line in follower.new_lines():
            self.log.info("[%s] %s", self.step, line)
        # the mixin returns this value itself when it reconnected, and asks get_job_result otherwise
        self._result = self._collect(external_id, status)
        return self._result

    def _deadline(self, context: Any) -> float | None:
        """When this try must end (epoch seconds): its start plus ``execution_timeout``."""
        start = getattr(context["ti"], "start_date", None)
        if self.execution_timeout is None or start is None:
            return None
        return start.timestamp() + self.execution_timeout.total_seconds()

    def _defer_local(self, external_id: Any, context: Any, *, log_offset: int) -> None:
        deadline = self._deadline(context)
        self.log.info(
            "deferring: local step pid %s runs on, the triggerer waits for it (log %s)",
            external_id["pid"],
            external_id["log"],
        )
        self.defer(
            trigger=LocalStepTrigger(
                step=external_id,
                label=self.step,
                poll_interval=self.poll_interval,
                deadline=deadline,
                log_offset=log_offset,
                mlflow_conn_id=(context.get("params") or {}).get("mlflow_conn_id"),
                stop_on_kill=not self.keep_on_kill,
            ),
            method_name="execute_complete",
            # Airflow 3.3 does not carry execution_timeout into a deferral: the trigger ends the try at
            # the deadline, and Airflow's trigger timeout is the backstop if the trigger cannot
            timeout=timedelta(seconds=max(deadline - time.time(), 0) + _DEFER_GRACE_S) if deadline else None,
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Resume after :class:`LocalStepTrigger`: collect the step's exit code and result file."""
        ident, status = event["step"], event["status"]
        self._job = ident
        if status == "timeout":
            if self.keep_on_kill:
                self.log.info(
                    "try ran past execution_timeout; step pid %s keeps running for the retry", ident["pid"]
                )
            else:
                self.log.info("try ran past execution_timeout; stopping step pid %s", ident["pid"])
                process.stop(ident)
            raise AirflowException(f"ampflow {self.step}: the try ran past its execution_timeout")
        return self._finish(context, self._collect(ident, status))

    def _collect(self, external_id: Any, status: str) -> Any:
        """The result of a step that ended with ``status``, or the exception that fails the try."""
        if status == "lost":
            raise AirflowException(f"local step pid {external_id['pid']} vanished without an exit status")
        if status != "succeeded":
            rc = int(status.split(":", 1)[1])
            message = f"ampflow {self.step} exited {rc}: {process.last_line(external_id['log'])}"
            if rc in (EXIT_BAD_INPUT, EXIT_REGRESSION):
                raise AirflowFailException(message)  # bad input or a regression: a retry decides the same
            raise AirflowException(message)
        return self._read_result(external_id)

    def get_job_result(self, external_id: Any, context: Any) -> Any:
        if self._result is not None:
            return self._result
        return self._read_result(external_id)

    # -- the result -------------------------------------------------------------------------------

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

    def _report(self, value: Any) -> Any:
        if isinstance(value, dict):
            value = {
                k: v
                for k, v in value.items()
                if k not in _SERIES and not (isinstance(v, list) and len(v) > 50)
            }
            if isinstance(value.get("markdown"), str):
                self.log.info("ampflow %s report:\n%s", self.step, value["markdown"])
        return value
