"""The MLflow tracker: one run per ``start_run``, metrics batched off the training thread, spooled
to the run directory when the server is away.

Used through :func:`ampflow.tracking.start_run`; a run is created with ``MlflowClient`` (never the
fluent active-run stack) so a parent run id passes between processes explicitly and ``MLFLOW_RUN_ID``
is never needed.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from ampflow.tracking import schema
from ampflow.tracking.spool import FOLDER, MAX_METRICS, MAX_PARAMS, Spool

log = logging.getLogger("ampflow.tracking")

# The REST client retries a refused connection for minutes by default; the spool is our retry, so
# a request gives up quickly. Users can still set these variables themselves.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached and --require-tracking was given."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store ``./mlruns.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def experiment_name(recipe: str | None) -> str:
    return os.environ.get("AMPFLOW_EXPERIMENT") or f"ampflow/{recipe or 'default'}"


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip().lower() not in {"0", "false", "no", "off"}


def system_metrics_enabled() -> bool:
    """On by default; ``AMPFLOW_SYSTEM_METRICS=0`` (or MLflow's own variable set to false) turns it off."""
    for name in ("AMPFLOW_SYSTEM_METRICS", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"):
        flag = _env_flag(name)
        if flag is not None:
            return flag
    return True


def is_transient(exc: BaseException) -> bool:
    """True when the server may answer later (unreachable, 5xx, 429); False for a refusal (4xx)."""
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


class Sender:
    """Turns spooled operations into MLflow calls; shared by the live tracker and ``ampflow sync``."""

    def __init__(self, client: Any, spool: Spool):
        self.client = client
        self.spool = spool

    @property
    def run_id(self) -> str | None:
        return self.spool.state.get("run_id")

    def send(self, op: dict[str, Any]) -> None:
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
        elif kind == "terminate":
            self.client.set_terminated(run_id, op["status"], end_time=op.get("end_time"))
        else:
            log.warning("tracking: unknown spooled operation %r skipped", kind)

    def _create_run(self, op: dict[str, Any]) -> None:
        client = self.client
        exp = client.get_experiment_by_name(op["experiment"])
        exp_id = exp.experiment_id if exp else client.create_experiment(op["experiment"])
        uid = op["tags"].get(schema.TAG_RUN_UID)
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
        """Send every unacknowledged operation in order; returns how many were sent."""
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


_LIVE: weakref.WeakSet[MlflowTracker] = weakref.WeakSet()
_SIGNALLED = threading.Event()


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that ``finally`` blocks run and runs end as KILLED."""


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGNALLED.set()
    raise Terminated(f"signal {signum}")


def _at_exit() -> None:
    status = "KILLED" if _SIGNALLED.is_set() else "FAILED"
    for tracker in list(_LIVE):
        if not tracker.closed:
            tracker.close(status)  # type: ignore[arg-type]


atexit.register(_at_exit)


class MlflowTracker:
    """A tracked MLflow run. See :mod:`ampflow.tracking` for the contract and the README for the schema."""

    def __init__(
        self,
        kind: str,
        *,
        config: Any = None,
        run_dir: str | Path | None = None,
        parent_run_id: str | None = None,
        require: bool = False,
        tags: dict[str, str] | None = None,
        attach_to: str | Path | None = None,
        uri: str | None = None,
        flush_interval: float | None = None,
    ):
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.tracking import MlflowClient

        self.kind = kind
        self.uri = uri or tracking_uri()
        self.require = require
        self.closed = False
        try:
            self.client = MlflowClient(self.uri)
        except Exception as exc:  # a store MLflow refuses (the file store), an unknown scheme: bad input
            from ampflow.config import ConfigError

            raise ConfigError(f"MLFLOW_TRACKING_URI {_redact(self.uri)}: {_short(exc)}") from None
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="ampflow-run-"))
        _set_aside_stale_spool(self.run_dir)
        self.spool = Spool(self.run_dir / FOLDER)
        self.sender = Sender(self.client, self.spool)
        self._flush_interval = flush_interval or float(os.environ.get("AMPFLOW_TRACKING_FLUSH_S", "1.0"))
        self._buf: list[tuple] = []
        self._buf_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._params: dict[str, str] = {}
        self._names: dict[str, str] = {}  # step metric key -> logged name, so the hot path skips formatting
        self._dataset_logged = False
        self.writer_cpu_s = 0.0  # CPU the writer thread used (benchmarks/bench_tracking.py)
        self._down_since: float | None = None
        self._next_try = 0.0
        self._backoff = 1.0
        self._monitor: Any = None
        self.experiment = experiment_name(_cfg(config, "recipe"))

        attach_state = _attached_state(attach_to, kind, self.run_dir)
        fingerprint, desc = schema.hardware()
        run_tags = {schema.TAG_KIND: kind, schema.TAG_HARDWARE: fingerprint, schema.TAG_HARDWARE_DESC: desc}
        if config is not None:
            run_tags[schema.TAG_RECIPE] = str(_cfg(config, "recipe"))
            if kind != "sweep":
                run_tags[schema.TAG_PRECISION] = str(_cfg(config, "precision"))
                run_tags[schema.TAG_CONFIG_ID] = schema.config_id(
                    _cfg(config, "precision"), _cfg(config, "compile"), _cfg(config, "strategy")
                )
        if parent_run_id:
            run_tags[schema.TAG_PARENT] = parent_run_id
            run_tags[schema.TAG_SWEEP] = parent_run_id
        run_tags.update(tags or {})

        if attach_state and attach_state.get("run_id"):
            # evaluate continues the train run of its checkpoint: one row per configuration in MLflow
            self.spool.save_state(
                run_id=attach_state["run_id"],
                experiment_id=attach_state.get("experiment_id"),
                tracking_uri=self.uri,
                kind=kind,
                attached=True,
            )
            self._queue_tags(
                {k: v for k, v in run_tags.items() if k not in (schema.TAG_KIND, schema.TAG_PARENT)}
            )
        else:
            self._create(kind, config, run_tags, require)
        if self.run_id and kind == "sweep":
            self._queue_tags({schema.TAG_SWEEP: self.run_id})
        if config is not None and not (attach_state and attach_state.get("run_id")):
            self.log_params(schema.config_params(config))

        self._thread = threading.Thread(target=self._loop, name="ampflow-tracking", daemon=True)
        self._thread.start()
        if self.run_id and self._down_since is None and system_metrics_enabled():
            self._start_system_metrics()
        _LIVE.add(self)
        self._install_sigterm()

    # -- creation -----------------------------------------------------------------------------

    def _create(self, kind: str, config: Any, tags: dict[str, str], require: bool) -> None:
        from mlflow.tracking.context.registry import resolve_tags

        uid = uuid.uuid4().hex
        # MLflow's context providers: user, source, git commit, and MLFLOW_RUN_CONTEXT, through which
        # KFP components and Airflow tasks tag runs with their pipeline / DAG run id; that tag is how
        # an exit handler finds a run whose process was SIGKILLed
        tags = {**resolve_tags(tags), schema.TAG_RUN_UID: uid}
        name = self.run_dir.name if kind == "train" and self.run_dir.name else None
        if name is None:
            name = tags.get(schema.TAG_CONFIG_ID) or f"{kind} {tags.get(schema.TAG_RECIPE, '')}".strip()
        op = {
            "op": "create_run",
            "experiment": self.experiment,
            "tags": tags,
            "run_name": name,
            "start_time": int(time.time() * 1000),
        }
        self.spool.save_state(
            tracking_uri=self.uri,
            kind=kind,
            run_id=None,
            parent_run_id=tags.get(schema.TAG_PARENT),
            run_dir=str(self.run_dir.resolve()),
        )
        self.spool.append([op])
        try:
            with self._send_lock:
                self.sender.replay()
        except Exception as exc:
            if require:
                raise TrackingUnavailable(
                    f"tracking server {_redact(self.uri)} unreachable and --require-tracking is set: "
                    f"{type(exc).__name__}: {_short(exc)}"
                ) from None
            self._mark_down(exc)

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        return self.spool.state.get("run_id")

    @property
    def experiment_id(self) -> str | None:
        return self.spool.state.get("experiment_id")

    # -- the protocol -------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        fresh = {}
        for key, value in params.items():
            if value is None:
                continue
            text = schema.param_value(value)[:6000]
            old = self._params.get(key)
            if old is None:
                fresh[key] = self._params[key] = text
            elif old != text:
                # MLflow params are immutable; the first value stays and the conflict is said once
                log.warning("tracking: param %s already logged as %r; %r not logged", key, old, text)
        if fresh:
            with self._buf_lock:
                self._buf.append(("params", fresh))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._queue_tags({k: str(v) for k, v in tags.items() if v is not None})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Buffered: a few list appends on the training thread; the writer thread sends log_batch."""
        ts = int(time.time() * 1000)
        step = 0 if step is None else int(step)
        names = self._names
        items = []
        for key, value in metrics.items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                continue
            if v - v != 0.0:  # nan or inf: MLflow cannot store them, a report cannot use them
                continue
            name = names.get(key)
            if name is None:
                name = names[key] = key if "/" in key else f"{self.kind}/{key}"
            items.append(("m", name, v, ts, step))
        with self._buf_lock:
            self._buf.extend(items)
            full = len(self._buf) >= MAX_METRICS
        if full:
            self._wake.set()

    def log_summary(self, metrics: dict[str, Any], step: int = 0) -> None:
        """Summary figures under their own names (no kind prefix)."""
        ts = int(time.time() * 1000)
        values = {k: schema.finite(v) for k, v in metrics.items()}
        items = [("m", k, v, ts, step) for k, v in values.items() if v is not None]
        with self._buf_lock:
            self._buf.extend(items)

    def log_train_result(self, result: dict[str, Any], run_dir: str | Path) -> None:
        self.log_params(schema.result_params(result))
        if result.get("dataset_hash"):
            self.set_tags({schema.TAG_DATASET_HASH: str(result["dataset_hash"])})
        self.log_summary(schema.result_metrics(result))
        data_dir = result.get("data_dir") or result.get("data")
        if self._dataset_logged:
            pass
        elif data_dir and (Path(data_dir) / "manifest.json").is_file():
            self.log_dataset(data_dir)
        elif result.get("dataset_hash") and not self._dataset_logged:
            # no manifest at hand: the content hash alone still identifies the dataset in MLflow
            self._log_input(
                str(result.get("recipe") or "dataset"), str(result["dataset_hash"]), {}, None, "train"
            )
        result_file = Path(run_dir) / "result.json"
        if result_file.is_file():
            self.log_artifact(result_file)

    def log_eval_result(self, result: dict[str, Any], out_dir: str | Path) -> None:
        self.log_summary(schema.eval_metrics(result))
        eval_file = Path(out_dir) / "eval.json"
        if eval_file.is_file():
            self.log_artifact(eval_file, "eval")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._flush_buffer_to_spool()
        self.spool.append(
            [{"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path}]
        )
        self._wake.set()

    def log_dataset(self, data_dir: str | Path, context: str = "train") -> None:
        """The prepared dataset as a run input: name, content hash and row counts from its manifest."""
        import json

        manifest_path = Path(data_dir) / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("tracking: no dataset input logged (%s)", exc)
            return
        digest = str(manifest.get("content_hash") or manifest.get("hash") or "")
        profile = {"rows": manifest.get("rows"), "class_balance": manifest.get("class_balance")}
        schema_ = {"arrays": manifest.get("arrays"), "schema": manifest.get("schema")}
        self._log_input(
            str(manifest.get("recipe") or "dataset"),
            digest,
            profile,
            schema_,
            context,
            uri=str(Path(data_dir).resolve()),
        )

    def _log_input(
        self,
        name: str,
        digest: str,
        profile: dict[str, Any],
        schema_: dict[str, Any] | None,
        context: str,
        uri: str | None = None,
    ) -> None:
        import json

        self._dataset_logged = True
        source = {"uri": uri} if uri else {"dataset_hash": digest}
        op = {
            "op": "input",
            "name": name,
            "digest": digest.split(":")[-1][:36],
            "source_type": "local",
            "source": json.dumps(source),
            "schema": json.dumps(schema_) if schema_ else None,
            "profile": json.dumps(profile, default=str),
            "context": context,
        }
        self._flush_buffer_to_spool()
        self.spool.append([op])
        self._wake.set()

    def log_model(self, model: Any, *, input_example: Any = None, name: str = "model") -> None:
        """Log the model so that ``mlflow.pytorch.load_model(<ampflow.model_uri tag>)`` loads it back.

        pt2 (torch.export) needs positional tensors: a model called with keyword tensors is wrapped so
        that its inputs become positional in the example's order (names in the ampflow.model_inputs tag).
        """
        import mlflow

        wrapped, example, names = _positional(model, input_example)
        if self.run_id is None or self._down_since is not None:
            self._save_model_offline(wrapped, example, name, names)
            return
        try:
            mlflow.set_tracking_uri(self.uri)
            if self.experiment_id:
                mlflow.set_experiment(experiment_id=self.experiment_id)
            info = mlflow.pytorch.log_model(
                wrapped,
                name=name,
                input_example=example,
                signature=_signature(wrapped, example, names),
                run_id=self.run_id,
                pip_requirements=_requirements(),
            )
        except Exception as exc:
            if self._reachable():
                info = self._log_pickled(model, name, exc)
            elif self.require:
                raise
            self._mark_down(exc)
            self._save_model_offline(wrapped, example, name, names)
            return
        self.set_tags(
            {
                schema.TAG_MODEL_URI: info.model_uri,
                **({schema.TAG_MODEL_INPUTS: ",".join(names)} if names else {}),
            }
        )

    def _log_pickled(self, model: Any, name: str, exc: BaseException) -> Any:
        """torch.export cannot trace every model (data-dependent control flow, odd outputs): keep the
        model rather than fail a finished training run, in MLflow's pickle format, and say so."""
        import mlflow

        print(
            f"ampflow tracking: pt2 export of the model failed ({type(exc).__name__}: {_short(exc)}); "
            "logging it in pickle format instead",
            file=sys.stderr,
            flush=True,
        )
        self.set_tags({"ampflow.model_format": "pickle"})
        return mlflow.pytorch.log_model(
            model,
            name=name,
            serialization_format="pickle",
            run_id=self.run_id,
            pip_requirements=_requirements(),
        )

    def _reachable(self) -> bool:
        try:
            self.client.get_experiment(self.experiment_id or "0")
            return True
        except Exception as exc:
            return not is_transient(exc)

    def close(self, status: str = "FINISHED") -> None:
        if self.closed:
            return
        self.closed = True
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as exc:  # system metrics are a nice-to-have, never a failure
                log.warning("tracking: system metrics monitor did not stop cleanly: %s", exc)
        self._flush_buffer_to_spool()
        self.spool.append([{"op": "terminate", "status": status, "end_time": int(time.time() * 1000)}])
        self._stop.set()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=float(os.environ.get("AMPFLOW_TRACKING_CLOSE_TIMEOUT_S", "30")))
        left = len(self.spool.pending())
        if left:
            print(
                f"ampflow tracking: {left} operations kept in {self.spool.path}; replay them with "
                f"`ampflow sync {self.run_dir}` once {_redact(self.uri)} answers",
                file=sys.stderr,
                flush=True,
            )

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything logged so far; True when the server acknowledged all of it."""
        self._flush_buffer_to_spool()
        self._next_try = 0.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._deliver():
                return True
            time.sleep(0.2)
        return False

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("KILLED")
        else:
            self.close("FAILED")

    # -- the writer thread --------------------------------------------------------------------

    def _queue_tags(self, tags: dict[str, str]) -> None:
        if tags:
            with self._buf_lock:
                self._buf.append(("tags", dict(tags)))

    def _flush_buffer_to_spool(self) -> None:
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

    def _deliver(self) -> bool:
        """Replay the spool if it is time to try; True when nothing is left unacknowledged."""
        if self._down_since is not None and time.monotonic() < self._next_try:
            return False
        with self._send_lock:
            try:
                sent = self.sender.replay()
            except Exception as exc:
                self._mark_down(exc)
                return False
        if self._down_since is not None:
            log.warning(
                "tracking: server %s answers again; %d spooled operations replayed", _redact(self.uri), sent
            )
            print(
                f"ampflow tracking: server answers again; replayed {sent} spooled operations",
                file=sys.stderr,
                flush=True,
            )
            self._down_since = None
            self._backoff = 1.0
        return True

    def _mark_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            print(
                f"ampflow tracking: server {_redact(self.uri)} unreachable ({type(exc).__name__}: {_short(exc)}); "
                f"spooling to {self.spool.path}, training continues",
                file=sys.stderr,
                flush=True,
            )
        self._next_try = now + self._backoff
        self._backoff = min(self._backoff * 2, float(os.environ.get("AMPFLOW_TRACKING_MAX_BACKOFF_S", "15")))

    def _loop(self) -> None:
        while True:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            stopping = self._stop.is_set()
            cpu0 = time.thread_time()
            try:
                self._flush_buffer_to_spool()
                if stopping:
                    self._next_try = 0.0  # one last attempt at close, whatever the backoff says
                self._deliver()
            except Exception as exc:  # the writer must never die silently and lose the buffer
                log.warning("tracking: writer error: %s", exc)
            # CPU the writer took from the machine (benchmarks/bench_tracking.py reports it)
            self.writer_cpu_s += time.thread_time() - cpu0
            if stopping:
                return

    # -- system metrics, signals --------------------------------------------------------------

    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            interval = float(os.environ.get("AMPFLOW_SYSTEM_METRICS_INTERVAL_S", "10"))
            self._monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=interval, tracking_uri=self.uri
            )
            self._monitor.start()
        except Exception as exc:
            log.warning("tracking: system metrics off (%s)", exc)
            self._monitor = None

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)

    def _save_model_offline(self, model: Any, example: Any, name: str, names: list[str]) -> None:
        import mlflow
        import torch

        local = self.run_dir / FOLDER / f"{name}-{int(time.time())}"
        if isinstance(example, torch.Tensor):
            sig = _signature(model, example, names)
            mlflow.pytorch.save_model(
                model, str(local), input_example=example, signature=sig, pip_requirements=_requirements()
            )
        else:
            # no pt2 export of a keyword model offline: pickle the original module (its class is
            # importable from ampflow) rather than the local wrapper class
            inner = getattr(model, "inner", model)
            mlflow.pytorch.save_model(
                inner, str(local), serialization_format="pickle", pip_requirements=_requirements()
            )
        self.log_artifact(local, name)
        if names:
            self.set_tags({schema.TAG_MODEL_INPUTS: ",".join(names)})


def _set_aside_stale_spool(run_dir: Path) -> None:
    """A new run in a directory whose spool still holds unsent operations of an earlier run keeps them
    apart (``tracking.<time>/``, replayed by ``ampflow sync``) instead of mixing the two runs."""
    folder = run_dir / FOLDER
    if folder.is_dir() and Spool(folder).pending():
        folder.rename(run_dir / f"{FOLDER}.{time.strftime('%Y%m%dT%H%M%S')}")


def _cfg(config: Any, key: str) -> Any:
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def _attached_state(attach_to: str | Path | None, kind: str, run_dir: Path) -> dict[str, Any] | None:
    """The tracked run that ``kind`` continues: evaluate continues its checkpoint's train run."""
    import json

    candidates = [Path(attach_to)] if attach_to is not None else []
    if candidates and candidates[0].is_file():  # a checkpoint file: its run directory
        candidates[0] = candidates[0].parent
    if attach_to is None and kind == "evaluate":
        candidates.append(run_dir.parent)  # bench and the docs put eval/ inside the train run dir
    for folder in candidates:
        state = folder / FOLDER / "state.json"
        if state.is_file() and folder.resolve() != run_dir.resolve():
            try:
                return json.loads(state.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    return None


def _positional(model: Any, example: Any) -> tuple[Any, Any, list[str]]:
    """Wrap a keyword-input model so torch.export sees a fixed list of positional tensors.

    torch.export binds a ``*args`` forward as one tuple parameter, which MLflow's per-input dynamic
    shapes do not describe; hence one explicit parameter per input (up to four).
    """
    if not isinstance(example, dict):
        return model, example, []
    import torch

    names = list(example)
    if len(names) > 4:
        return model, None, names  # offline path pickles the module; online pt2 would fail loudly

    class KeywordToPositional(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def call(self, *tensors: torch.Tensor) -> torch.Tensor:
            out = self.inner(**dict(zip(names, tensors, strict=True)))
            return out if isinstance(out, torch.Tensor) else out.logits

    class One(KeywordToPositional):
        def forward(self, x0: torch.Tensor) -> torch.Tensor:
            return self.call(x0)

    class Two(KeywordToPositional):
        def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
            return self.call(x0, x1)

    class Three(KeywordToPositional):
        def forward(self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
            return self.call(x0, x1, x2)

    class Four(KeywordToPositional):
        def forward(
            self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor
        ) -> torch.Tensor:
            return self.call(x0, x1, x2, x3)

    wrapper = (One, Two, Three, Four)[len(names) - 1]
    return wrapper(model), tuple(example[n] for n in names), names


def _requirements() -> list[str]:
    """Pinned explicitly: MLflow's inference loads the model in a subprocess (about 10 s per model)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("torch", "mlflow", "numpy", "ampflow"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return reqs


def _signature(model: Any, example: Any, names: list[str]) -> Any:
    """A TensorSpec signature (what pt2 needs), the batch dimension left free."""
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    if example is None:
        return None
    tensors = (example,) if isinstance(example, torch.Tensor | np.ndarray) else tuple(example)
    tensors = tuple(torch.as_tensor(t) for t in tensors)
    with torch.no_grad():
        out = model(*tensors)
    if not isinstance(out, torch.Tensor):
        out = getattr(out, "logits", None)
        if out is None:
            return None

    def spec(t: torch.Tensor, name: str | None) -> TensorSpec:
        t = t.detach().cpu()
        dtype = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy().dtype
        return TensorSpec(dtype, (-1, *t.shape[1:]), name)

    labels: list[Any] = list(names) or (
        [None] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
    )
    inputs = Schema([spec(t, n) for t, n in zip(tensors, labels, strict=True)])
    return ModelSignature(inputs=inputs, outputs=Schema([spec(out, None)]))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]


def _redact(uri: str) -> str:
    """Never print credentials embedded in a URI."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password or parts.username:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return uri
