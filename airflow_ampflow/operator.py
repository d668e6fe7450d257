"""``AmpflowStepOperator``: one Airflow task runs one ``ampflow <step>``, locally or in a pod.

What the task runs is decided by :func:`ampflow.commands.plan_step`; the operator only translates the
Airflow context into its inputs: a try after the first is a ``retry`` (``train`` resumes from its
checkpoint), ``nodes`` x ``gpus_per_node`` > 1 in kubernetes mode is ``distributed`` (``train``
becomes ``ampflow launch`` of a PyTorchJob), and the cluster settings are ``launch``'s options.

Where it runs (:func:`~airflow_ampflow.runtime.resolve_mode`):

- ``local``: a process of the training venv's ``ampflow``, kept by :mod:`airflow_ampflow.process` in
  its own session so it outlives a crashed worker; its identity goes to Airflow's task state store
  (``ResumableJobMixin``) and a retry reconnects to it instead of starting a second one.
- ``kubernetes``: a durable KubernetesPodOperator pod (:mod:`airflow_ampflow.pods`); a retry
  reattaches to the running pod.

Exit code 2 (bad input) and 3 (``compare --fail-on-regression`` found a regression) fail the task
without using its retries: a retry would decide the same. A step's result file (``result``) becomes
the task's XCom, long per-step series left out, and a Markdown report in it is logged. A ``register``
task declares the champion asset alias as its outlet and emits an event only when its step promoted
the candidate (:mod:`airflow_ampflow.assets`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import BaseOperator
from airflow.sdk.bases.resumablejobmixin import ResumableJobMixin
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_ampflow import pods, process
from airflow_ampflow.assets import CHAMPION, announce_champion
from airflow_ampflow.runtime import (
    kube_settings,
    resolve_ampflow_bin,
    resolve_mode,
    run_context_tags,
    run_root,
)
from ampflow.commands import StepPlan, plan_step

# exit code 2 is bad input (README: exit codes): retrying cannot help, so the task fails without using its retries
EXIT_BAD_INPUT = 2
# exit code 3: compare found a regression and was asked to fail on it; a decision, not a transient failure
EXIT_REGRESSION = 3
# result keys kept out of the XCom (the metadata DB): per-step series stay in the result file
_SERIES = ("loss_curve", "lr_schedule")


class AmpflowStepOperator(ResumableJobMixin, BaseOperator):
    """Run ``ampflow <step>`` locally (a resumable process) or as a Kubernetes pod.

    :param step: an ampflow step (prep, train, evaluate, compare, register, close-runs).
    :param step_options: keyword options of the step (templated; XComArgs resolve). ``None`` values
        and keys starting with ``_`` (bookkeeping such as a mapped task's ``_id``) are left out.
    :param overrides: RunConfig ``--set`` overrides (templated); the steps that take none drop them.
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
        if step == "register":
            # declared while parsing (outlets are static); the event itself only on promotion
            kwargs.setdefault("outlets", [CHAMPION])
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

    # -- what the task runs -----------------------------------------------------------------------

    def plan(self, context: Any, mode: str) -> StepPlan:
        """This try's step, options and overrides, from :func:`plan_step`."""
        distributed = self.step == "train" and mode == "kubernetes" and pods.is_distributed(context["params"])
        try:
            return plan_step(
                self.step,
                dict(self.step_options),
                overrides=dict(self.overrides or {}),
                distributed=distributed,
                retry=context["ti"].try_number > 1,
                launch=pods.launch_options(context, kube_settings(context)) if distributed else None,
            )
        except ValueError as exc:  # an unknown option or --set key: bad input, a retry decides the same
            raise AirflowFailException(f"{self.step}: {exc}") from None

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
            self._pod_op = self.pod_operator(context)
            value = self._pod_op.execute(context)
            value = self._report(value) if self.result else value
        else:
            value = self.execute_resumable(context)
        if self.step == "register" and announce_champion(context, value):
            self.log.info("new champion: asset event for %s", value.get("model_name"))
        return value

    def on_kill(self) -> None:
        if self._pod_op is not None:
            self._pod_op.on_kill()
        elif self._job is not None and self.on_kill_action == "kill":
            self.log.info("stopping local step (pid %s)", self._job["pid"])
            process.stop(self._job)

    def pod_operator(self, context: Any) -> KubernetesPodOperator:
        """The pod this task runs in kubernetes mode (built at run time: settings are Variables)."""
        plan = self.plan(context, "kubernetes")
        return pods.step_pod(
            context,
            task_id=self.task_id,
            step=self.step,
            argv=plan.argv(("ampflow",)),
            settings=kube_settings(context),
            gpu=self.gpu,
            launcher=plan.step == "launch",
            result=self._result_path(),
            run_context=run_context_tags(context),
        )

    # -- ResumableJobMixin: the local "external system" is a step process -----------------------

    def submit_job(self, context: Any) -> dict[str, Any]:
        argv = self.argv(context, (resolve_ampflow_bin(),), "local")
        ti = context["ti"]
        name = ti.task_id + (f".{ti.map_index}" if ti.map_index >= 0 else "") + f".try{ti.try_number}"
        out = self._option("out")
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("MLFLOW_RUN_ID", None)
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
        self._job = external_id
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
        if status == "lost":
            raise AirflowException(f"local step pid {external_id['pid']} vanished without an exit status")
        if status != "succeeded":
            rc = int(status.split(":", 1)[1])
            message = f"ampflow {self.step} exited {rc}: {process.last_line(external_id['log'])}"
            if rc in (EXIT_BAD_INPUT, EXIT_REGRESSION):
                raise AirflowFailException(message)  # bad input or a regression: a retry decides the same
            raise AirflowException(message)
        # the mixin returns this value itself when it reconnected, and asks get_job_result otherwise
        self._result = self._read_result(external_id)
        return self._result

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
