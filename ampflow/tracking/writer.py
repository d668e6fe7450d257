"""The way to the server: everything between a tracker's buffer and MLflow.

Owns the writer thread (:class:`Writer`: buffer -> spool -> server, backoff while the server is
away), the :class:`Sender` that turns spooled operations into MLflow calls (shared with ``ampflow
sync``), the HTTP defaults that make one request give up quickly, the transient-or-refused
classification of errors, and the redaction of URIs in what is printed. Import-light: mlflow is
imported inside the calls that need it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ampflow.config import ConfigError
from ampflow.redact import redact_text, redact_uri
from ampflow.tracking import schema
from ampflow.tracking.spool import MAX_METRICS, MAX_PARAMS, Spool

log = logging.getLogger("ampflow.tracking")

# The REST client retries a refused connection for minutes by default; the spool is our retry, so
# a request gives up quickly. Users can still set these variables themselves.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def apply_http_defaults() -> None:
    """Set each of :data:`HTTP_DEFAULTS` in ``os.environ`` unless the user already set it.

    Call before the first MLflow client is made: MLflow reads these variables per request.
    """
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


class TrackingRefused(ConfigError):
    """The tracking server answered and refused, for good (a deleted experiment, 401/403, a name it
    rejects): retrying or spooling cannot help. The message names the cause and the way out."""


def is_transient(exc: BaseException) -> bool:
    """True when the server may answer later (unreachable, 5xx, 429); False for a refusal (4xx)."""
    if isinstance(exc, ConfigError):
        return False
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return True
    if isinstance(exc, MlflowException):
        try:
            status = exc.get_http_status_code()
        except Exception:
            return True
        return status >= 500 or status == 429
    return True


def short_error(exc: BaseException) -> str:
    """The first line of ``exc``'s message, at most 200 characters: MLflow errors carry whole pages."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    # MLflow's messages quote the full URI, credentials included
    return redact_text(text)[:200]


class Sender:
    """Turns spooled operations into MLflow calls; shared by the live tracker and ``ampflow sync``.

    ``client`` is an ``MlflowClient``; the run id lives in the spool's state (``create_run`` writes
    it), so a replay in another process continues the same run.
    """

    def __init__(self, client: Any, spool: Spool):
        self.client = client
        self.spool = spool

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, None until a ``create_run`` operation was acknowledged."""
        return self.spool.state.get("run_id")

    def send(self, op: dict[str, Any]) -> None:
        """Send one spooled operation. Raises whatever MLflow raises (see :func:`is_transient`), and
        ``RuntimeError`` for an operation of a run that was never created."""
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "create_run":
            self._create_run(op)
            return
        run_id = self.run_id
        if run_id is None:
            raise RuntimeError("spool has operations for a run that was never created")
        if kind == "metrics":
            self.client.log_batch(
                run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in op["m"]], synchronous=True
            )
        elif kind == "params":
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in op["p"].items()], synchronous=True)
        elif kind == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["t"].items()], synchronous=True)
        elif kind == "input":
            self._log_input(run_id, op)
        elif kind == "artifact":
            path = Path(op["path"])
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), op.get("artifact_path"))
            elif path.exists():
                self.client.log_artifact(run_id, str(path), op.get("artifact_path"))
            else:
                log.warning("tracking: artifact %s vanished before it could be sent; skipped", path)
        elif kind == "model":
            self._log_model(run_id, op)
        elif kind == "terminate":
            self.client.set_terminated(run_id, op["status"], end_time=op.get("end_time"))
        elif kind == "reopen":
            # a resumed training continues its run: a killed process left it RUNNING, a stopped one
            # KILLED or FAILED; it is RUNNING again until this process closes it
            self.client.update_run(run_id, status="RUNNING")
        else:
            log.warning("tracking: unknown spooled operation %r skipped", kind)

    def _create_run(self, op: dict[str, Any]) -> None:
        client = self.client
        exp = client.get_experiment_by_name(op["experiment"])
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise TrackingRefused(
                f"MLflow experiment {op['experiment']!r} (id {exp.experiment_id}) is deleted; restore it "
                f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`), or log elsewhere "
                "with AMPFLOW_EXPERIMENT=<name>"
            )
        if exp is None:
            exp_id = client.create_experiment(op["experiment"], tags=dict(schema.EXPERIMENT_TAGS))
        else:
            exp_id = exp.experiment_id
            # experiments made before ampflow tagged them (or by hand) open on the GenAI view otherwise
            for key, value in schema.EXPERIMENT_TAGS.items():
                if exp.tags.get(key) != value:
                    client.set_experiment_tag(exp_id, key, value)
        uid = op["tags"].get(schema.TAG_RUN_UID)
        # a create whose acknowledgement was lost (crash, timeout) already made the run: find it by
        # its uid instead of making a second one
        found = (
            client.search_runs(
                [exp_id], filter_string=f"tags.`{schema.TAG_RUN_UID}` = '{uid}'", max_results=1
            )
            if uid
            else []
        )
        if found:
            run_id = found[0].info.run_id
        else:
            run = client.create_run(
                exp_id, start_time=op.get("start_time"), tags=op["tags"], run_name=op.get("run_name")
            )
            run_id = run.info.run_id
        self.spool.save_state(run_id=run_id, experiment_id=exp_id)

    def _log_model(self, run_id: str, op: dict[str, Any]) -> None:
        """A model saved while the server was away (``op``: path, name, uid): uploaded as the run's
        logged model, the way ``mlflow.pytorch.log_model`` makes one, and the run's
        ``ampflow.model_uri`` tag pointed at it. A replay after a lost acknowledgement finds the
        logged model by its uid tag instead of making a second one."""
        from mlflow.entities import LoggedModelOutput, RunTag

        path = Path(op["path"])
        if not path.is_dir():
            log.warning("tracking: saved model %s vanished before it could be sent; skipped", path)
            return
        client = self.client
        exp_id = self.spool.state.get("experiment_id") or client.get_run(run_id).info.experiment_id
        uid = op["uid"]
        found = client.search_logged_models(
            [exp_id], filter_string=f"tags.`{schema.TAG_MODEL_UID}` = '{uid}'", max_results=1
        )
        if found:
            model_id = found[0].model_id
        else:
            model_id = client.create_logged_model(
                exp_id, name=op["name"], source_run_id=run_id, tags={schema.TAG_MODEL_UID: uid}
            ).model_id
        client.log_model_artifacts(model_id, str(path))
        client.finalize_logged_model(model_id, "READY")
        client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        # also under the run's artifacts, where runs:/<run_id>/<name> finds it (as before this op)
        client.log_artifacts(run_id, str(path), op["name"])
        client.log_batch(run_id, tags=[RunTag(schema.TAG_MODEL_URI, f"models:/{model_id}")], synchronous=True)

    def _log_input(self, run_id: str, op: dict[str, Any]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(
            name=op["name"],
            digest=op["digest"],
            source_type=op["source_type"],
            source=op["source"],
            schema=op.get("schema"),
            profile=op.get("profile"),
        )
        tags = [InputTag(key="mlflow.data.context", value=op.get("context", "train"))]
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset=ds, tags=tags)])

    def replay(self) -> int:
        """Send every unacknowledged operation in order; returns how many were sent.

        A refused operation (4xx) is dropped with a warning; a transient error, or any error on
        ``create_run``, is raised with that operation still unacknowledged.
        """
        sent = 0
        for op in self.spool.pending():
            try:
                self.send(op)
            except Exception as exc:
                if is_transient(exc) or op["op"] == "create_run":
                    raise
                log.warning("tracking: server refused %s (seq %s): %s; dropped", op["op"], op["seq"], exc)
            self.spool.ack(op["seq"])
            sent += 1
        return sent


class Writer:
    """The writer thread of one tracked run: the training thread appends, this thread sends.

    The training thread only appends to an in-memory buffer (:meth:`put`, :meth:`put_dict`). Every
    ``flush_interval`` seconds, or when a batch of :data:`~ampflow.tracking.spool.MAX_METRICS` is
    full, the thread writes the buffer to the spool and replays the spool. While the server is away
    it retries after 1 s, doubling up to ``AMPFLOW_TRACKING_MAX_BACKOFF_S`` (default 15 s); training
    never waits for the server.
    """

    def __init__(self, sender: Sender, *, uri: str, flush_interval: float):
        self.sender = sender
        self.spool = sender.spool
        self.uri = uri  # for messages only
        self.flush_interval = flush_interval
        self.cpu_s = 0.0  # CPU seconds this thread used (benchmarks/bench_tracking.py reports it)
        self.down_since: float | None = None  # time.monotonic() of the first failure, None when up
        self._next_try = 0.0
        self._backoff = 1.0
        self._buf: list[tuple] = []
        self._buf_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="ampflow-tracking", daemon=True)

    def start(self) -> None:
        """Start the thread (once the run exists, so that its first send has a run to send to)."""
        self._thread.start()

    # -- the training thread's side -------------------------------------------------------------

    def put(self, metrics: list[tuple]) -> None:
        """Buffer ``("m", name, value, ms_timestamp, step)`` tuples; wakes the thread when a batch is full."""
        with self._buf_lock:
            self._buf.extend(metrics)
            full = len(self._buf) >= MAX_METRICS
        if full:
            self._wake.set()

    def put_dict(self, kind: str, payload: dict[str, str]) -> None:
        """Buffer params (``kind="params"``) or tags (``kind="tags"``), in order with the metrics."""
        if payload:
            with self._buf_lock:
                self._buf.append((kind, dict(payload)))

    def append(self, op: dict[str, Any]) -> None:
        """Spool ``op`` (artifact, input) after everything buffered so far, and wake the thread."""
        self.flush_to_spool()
        self.spool.append([op])
        self._wake.set()

    def flush_to_spool(self) -> None:
        """Move the buffer into the spool as batches MLflow accepts (limits in :mod:`.spool`)."""
        with self._buf_lock:
            buf, self._buf = self._buf, []
        ops: list[dict[str, Any]] = []
        metrics: list[list[Any]] = []
        for item in buf:
            if item[0] == "m":
                metrics.append(list(item[1:]))
                if len(metrics) == MAX_METRICS:
                    ops.append({"op": "metrics", "m": metrics})
                    metrics = []
                continue
            # params and tags end the current metrics batch: the spool keeps the order they came in
            if metrics:
                ops.append({"op": "metrics", "m": metrics})
                metrics = []
            kind, payload = item
            keys = list(payload)
            for i in range(0, len(keys), MAX_PARAMS):
                chunk = {k: payload[k] for k in keys[i : i + MAX_PARAMS]}
                ops.append({"op": kind, ("p" if kind == "params" else "t"): chunk})
        if metrics:
            ops.append({"op": "metrics", "m": metrics})
        self.spool.append(ops)

    # -- sending ----------------------------------------------------------------------------------

    def replay_now(self) -> None:
        """Replay the spool on the calling thread, whatever the backoff says; raises what
        :meth:`Sender.replay` raises (run creation needs the answer before training starts)."""
        with self._send_lock:
            self.sender.replay()

    def deliver(self) -> bool:
        """Replay the spool if it is time to try; True when nothing is left unacknowledged."""
        if self.down_since is not None and time.monotonic() < self._next_try:
            return False
        with self._send_lock:
            try:
                sent = self.sender.replay()
            except Exception as exc:
                self.mark_down(exc)
                return False
        if self.down_since is not None:
            log.warning(
                "tracking: server %s answers again; %d spooled operations replayed",
                redact_uri(self.uri),
                sent,
            )
            print(
                f"ampflow tracking: server answers again; replayed {sent} spooled operations",
                file=sys.stderr,
                flush=True,
            )
            self.down_since = None
            self._backoff = 1.0
        return True

    def mark_down(self, exc: BaseException) -> None:
        """Record a failed send: say so once on stderr, and schedule the next try (backoff)."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            print(
                f"ampflow tracking: server {redact_uri(self.uri)} unreachable "
                f"({type(exc).__name__}: {short_error(exc)}); "
                f"spooling to {self.spool.path}, training continues",
                file=sys.stderr,
                flush=True,
            )
        self._next_try = now + self._backoff
        self._backoff = min(self._backoff * 2, float(os.environ.get("AMPFLOW_TRACKING_MAX_BACKOFF_S", "15")))

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything buffered so far, retrying for up to ``timeout`` seconds; True when the
        server acknowledged all of it."""
        self.flush_to_spool()
        self._next_try = 0.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.deliver():
                return True
            time.sleep(0.2)
        return False

    def close(self, final: list[dict[str, Any]], timeout: float) -> int:
        """Spool ``final`` after everything buffered, let the thread make one last attempt and stop,
        waiting up to ``timeout`` seconds for it; returns how many operations stay unsent."""
        self.flush_to_spool()
        self.spool.append(final)
        self._stop.set()
        self._wake.set()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout=timeout)
        return len(self.spool.pending())

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            stopping = self._stop.is_set()
            cpu0 = time.thread_time()
            try:
                self.flush_to_spool()
                if stopping:
                    self._next_try = 0.0  # one last attempt at close, whatever the backoff says
                self.deliver()
            except Exception as exc:  # the writer must never die silently and lose the buffer
                log.warning("tracking: writer error: %s", exc)
            self.cpu_s += time.thread_time() - cpu0
            if stopping:
                return
