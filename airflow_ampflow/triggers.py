"""The trigger a deferred local step waits on: the worker slot is free while the step runs.

A local step is a process kept by :mod:`airflow_ampflow.process` (its own session, an exit-status
file written by its keeper). :class:`LocalStepTrigger` runs in the triggerer and polls that identity
asynchronously (the same :func:`~airflow_ampflow.process.state` a reconnecting retry uses), relays the
step's new log lines to the task log, and fires one event when the step ended, vanished, or ran past
the try's deadline; the operator's ``execute_complete`` then collects the result on a worker.

Importable by the triggerer without torch, mlflow or the Kubernetes provider: this module needs only
Airflow's trigger base and the standard-library process runner. Kubernetes pods wait on the provider's
own ``KubernetesPodTrigger`` (``KubernetesPodOperator(deferrable=True)``).

Sources: Airflow 3 deferrable operators and triggers
(https://airflow.apache.org/docs/apache-airflow/stable/authoring-and-scheduling/deferring.html):
``serialize()`` returns the classpath and JSON-able kwargs; ``run()`` is an async generator that
yields ``TriggerEvent``; blocking calls go to a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_ampflow import process


class LocalStepTrigger(BaseTrigger):
    """Wait for the local step ``step`` (the identity :func:`~airflow_ampflow.process.start` returned).

    :param step: ``pid``, ``start``, ``status``, ``log``, ``argv`` (and ``result``) of the step.
    :param label: how the step's log lines are prefixed in the task log (the step's name).
    :param poll_interval: seconds between two looks at the step.
    :param deadline: epoch seconds by which this try must end (its ``execution_timeout``); past it
        the event is ``timeout`` and the step is left to the operator (kill or keep).
    :param log_offset: bytes of the step's log already relayed (a re-deferral continues there).
    :param mlflow_conn_id: the Connection whose secrets the relayed lines must not show; fetching it
        registers them with the triggerer's secrets masker.
    :param stop_on_kill: when a user kills the deferred task (mark failed/success, clear), stop the step
        (SIGTERM through its keeper, so it closes its MLflow run as KILLED); ``False`` keeps it running
        (the operator's ``on_kill_action="keep"``).

    The event's payload: ``status`` (``succeeded``, ``failed:<exit code>``, ``lost`` or ``timeout``),
    ``step`` and ``log_offset``.
    """

    def __init__(
        self,
        *,
        step: dict[str, Any],
        label: str,
        poll_interval: float = 2.0,
        deadline: float | None = None,
        log_offset: int = 0,
        mlflow_conn_id: str | None = None,
        stop_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.step = step
        self.label = label
        self.poll_interval = float(poll_interval)
        self.deadline = deadline
        self.log_offset = int(log_offset)
        self.mlflow_conn_id = mlflow_conn_id
        self.stop_on_kill = bool(stop_on_kill)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "step": self.step,
                "label": self.label,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "log_offset": self.log_offset,
                "mlflow_conn_id": self.mlflow_conn_id,
                "stop_on_kill": self.stop_on_kill,
            },
        )

    async def _mask_connection(self) -> None:
        if not self.mlflow_conn_id:
            return
        try:
            from airflow.sdk import BaseHook

            # the SDK masks a fetched connection's password and secret extras in this process's logs
            await BaseHook.aget_connection(self.mlflow_conn_id)
        except Exception:  # not defined (the task fell back to the environment): nothing to mask
            return

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await self._mask_connection()
        follower = process.LogFollower(self.step["log"])
        follower.offset = self.log_offset
        self.log.info("waiting for local step pid %s (log %s)", self.step["pid"], self.step["log"])
        while True:
            status = await asyncio.to_thread(process.state, self.step)
            for line in await asyncio.to_thread(follower.new_lines):
                self.log.info("[%s] %s", self.label, line)
            if status == "running" and self.deadline is not None and time.time() >= self.deadline:
                status = "timeout"
            if status != "running":
                yield TriggerEvent({"status": status, "step": self.step, "log_offset": follower.offset})
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """A user killed the deferred task (Airflow 3.3+ calls this in the triggerer, the deferred
        counterpart of the operator's ``on_kill``): stop the step unless it is to be kept."""
        if self.stop_on_kill:
            self.log.info("task killed: stopping local step pid %s", self.step["pid"])
            await asyncio.to_thread(process.stop, self.step)
