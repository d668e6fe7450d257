"""The MLflow tracker: one MLflow run per :func:`ampflow.tracking.start_run`.

Owns run creation (experiment, tags, name; or continuing the run of a train directory), what a run
logs (params, tags, metrics, results, dataset input, artifacts, the model), the system metrics
monitor, and closing the run. Sending is the :class:`~ampflow.tracking.writer.Writer`'s job, model
export :mod:`ampflow.tracking.model`'s, SIGTERM and exit :mod:`ampflow.tracking.lifecycle`'s.

A run is created with ``MlflowClient`` (never the fluent active-run stack) so a parent run id passes
between processes explicitly and ``MLFLOW_RUN_ID`` is never needed. Import-light: mlflow loads when
a tracker is made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ampflow.redact import redact_uri
from ampflow.tracking import lifecycle, schema
from ampflow.tracking import model as model_export
from ampflow.tracking.spool import FOLDER, Spool
from ampflow.tracking.writer import (
    Sender,
    TrackingRefused,
    Writer,
    apply_http_defaults,
    is_transient,
    short_error,
)

log = logging.getLogger("ampflow.tracking")


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached and --require-tracking was given."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store ``./mlruns.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def experiment_name(recipe: str | None) -> str:
    """``AMPFLOW_EXPERIMENT`` when set, else ``ampflow/<recipe>`` (``ampflow/default`` without one)."""
    return os.environ.get("AMPFLOW_EXPERIMENT") or f"ampflow/{recipe or 'default'}"


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip().lower() not in {"0", "false", "no", "off"}


def system_metrics_node_id() -> str | None:
    """The node id under which this node's system metrics are logged, or None on a single node.

    MLflow's own ``MLFLOW_SYSTEM_METRICS_NODE_ID`` wins; else ``node-<GROUP_RANK>`` (torchrun's node
    rank, the operators' ``PET_NODE_RANK``) in a multi-node job. MLflow then names the metrics
    ``system/<node id>/<metric>``, so every node's figures share the one run without colliding.
    """
    explicit = os.environ.get("MLFLOW_SYSTEM_METRICS_NODE_ID")
    if explicit:
        return explicit
    from ampflow.tracking import multi_node

    if not multi_node():
        return None
    return f"node-{os.environ.get('GROUP_RANK') or os.environ.get('PET_NODE_RANK') or '0'}"


def system_metrics_enabled() -> bool:
    """On by default; ``AMPFLOW_SYSTEM_METRICS=0`` (or MLflow's own variable set to false) turns it off."""
    for name in ("AMPFLOW_SYSTEM_METRICS", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"):
        flag = _env_flag(name)
        if flag is not None:
            return flag
    return True


class MlflowTracker:
    """A tracked MLflow run. See :mod:`ampflow.tracking` for the contract and the README for the schema.

    Raises ``ConfigError`` for a tracking URI MLflow refuses, and :class:`TrackingUnavailable` when
    ``require`` is set and the server cannot be reached. Without ``require`` an unreachable server
    only means spooling to ``run_dir/tracking/`` (``run_id`` stays None until it answers).
    """

    model_uri: str | None = None  # the logged model's URI once log_model succeeded

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
        resume: bool = False,
    ):
        apply_http_defaults()
        from mlflow.tracking import MlflowClient

        self.kind = kind
        self.uri = uri or tracking_uri()
        self.require = require
        self.closed = False
        try:
            self.client = MlflowClient(self.uri)
        except Exception as exc:  # a store MLflow refuses (the file store), an unknown scheme: bad input
            from ampflow.config import ConfigError

            raise ConfigError(f"MLFLOW_TRACKING_URI {redact_uri(self.uri)}: {short_error(exc)}") from None
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="ampflow-run-"))
        # a resumed training is the same training: it continues its own MLflow run (and its spool)
        continued = resume and kind == "train" and _started_here(self.run_dir)
        if not continued:
            _set_aside_stale_spool(self.run_dir)
        self.spool = Spool(self.run_dir / FOLDER)
        self.sender = Sender(self.client, self.spool)
        self.writer = Writer(
            self.sender,
            uri=self.uri,
            flush_interval=flush_interval or float(os.environ.get("AMPFLOW_TRACKING_FLUSH_S", "1.0")),
        )
        self._params: dict[str, str] = {}
        self._names: dict[str, str] = {}  # step metric key -> logged name, so the hot path skips formatting
        self._dataset_logged = False
        self._monitor: Any = None
        self.experiment = experiment_name(_cfg(config, "recipe"))

        attach_state = _attached_state(attach_to, kind, self.run_dir) or {}
        attached = bool(attach_state.get("run_id"))
        run_tags = _run_tags(kind, config, parent_run_id, tags)
        if continued:
            self.writer.put_dict("tags", {schema.TAG_RESUMED: "true"})
            self.spool.append([{"op": "reopen"}])
            # what the earlier process left unsent belongs to this run: kept, even on a refusal
            self._send_or_spool(require, drop_on_refusal=False)
        elif attached:
            # evaluate continues the train run of its checkpoint: one row per configuration in MLflow
            self.spool.save_state(
                run_id=attach_state["run_id"],
                experiment_id=attach_state.get("experiment_id"),
                tracking_uri=redact_uri(self.uri),  # credentials come from the environment on replay
                kind=kind,
                attached=True,
            )
            self.writer.put_dict(
                "tags", {k: v for k, v in run_tags.items() if k not in (schema.TAG_KIND, schema.TAG_PARENT)}
            )
        else:
            self._create(kind, run_tags, require)
        if self.run_id and kind == "sweep":
            self.writer.put_dict("tags", {schema.TAG_SWEEP: self.run_id})
        # params are immutable in MLflow: a continued run keeps the ones its first process logged
        if config is not None and not attached and not continued:
            self.log_params(schema.config_params(config))

        self.writer.start()
        if self.run_id and self.writer.down_since is None and system_metrics_enabled():
            self._monitor = _start_system_metrics(self.run_id, self.uri)
        lifecycle.register(self)

    def _create(self, kind: str, tags: dict[str, str], require: bool) -> None:
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
            tracking_uri=redact_uri(self.uri),  # credentials come from the environment on replay
            kind=kind,
            run_id=None,
            parent_run_id=tags.get(schema.TAG_PARENT),
            run_dir=str(self.run_dir.resolve()),
        )
        self.spool.append([op])
        # nothing to replay later when the server refuses: the run was never created as asked
        self._send_or_spool(require, drop_on_refusal=True)

    def _send_or_spool(self, require: bool, *, drop_on_refusal: bool) -> None:
        """Send what the spool holds now. An outage spools (or raises TrackingUnavailable under
        ``require``); a refusal raises :class:`TrackingRefused`, after dropping the spool when asked."""
        try:
            self.writer.replay_now()
        except Exception as exc:
            if not is_transient(exc):
                if drop_on_refusal:
                    shutil.rmtree(self.spool.folder, ignore_errors=True)
                if isinstance(exc, TrackingRefused):
                    raise
                raise TrackingRefused(
                    f"tracking server {redact_uri(self.uri)} refused the run ({short_error(exc)}); check "
                    "the credentials (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN) and the experiment name"
                ) from None
            if require:
                raise TrackingUnavailable(
                    f"tracking server {redact_uri(self.uri)} unreachable and --require-tracking is set: "
                    f"{type(exc).__name__}: {short_error(exc)}"
                ) from None
            self.writer.mark_down(exc)

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        """The MLflow run id; None while the run is only spooled (server away since the start)."""
        return self.spool.state.get("run_id")

    @property
    def experiment_id(self) -> str | None:
        return self.spool.state.get("experiment_id")

    def where(self) -> str | None:
        """One line naming the MLflow run: its id, the store, and the UI link when the store is a
        server (credentials removed); None while the run is only spooled."""
        if not self.run_id:
            return None
        shown = redact_uri(self.uri)
        text = f"MLflow run {self.run_id} (experiment {self.experiment!r}) in {shown}"
        if shown.startswith(("http://", "https://")) and self.experiment_id:
            text += f": {shown.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return text

    @property
    def writer_cpu_s(self) -> float:
        """CPU seconds the writer thread used (benchmarks/bench_tracking.py reports it)."""
        return self.writer.cpu_s

    # -- the protocol -------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (values stringified, at most 6000 characters); None values are left out. A
        param logged again with another value keeps its first value, with a warning: MLflow params
        are immutable."""
        fresh = {}
        for key, value in params.items():
            if value is None:
                continue
            text = schema.param_value(value)[:6000]
            old = self._params.get(key)
            if old is None:
                fresh[key] = self._params[key] = text
            elif old != text:
                log.warning("tracking: param %s already logged as %r; %r not logged", key, old, text)
        self.writer.put_dict("params", fresh)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags (values stringified); None values are left out."""
        self.writer.put_dict("tags", {k: str(v) for k, v in tags.items() if v is not None})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Buffered: a few list appends on the training thread; the writer thread sends log_batch.

        A key without ``/`` is logged as ``<kind>/<key>``; values that are not finite numbers are
        left out (MLflow cannot store nan or inf).
        """
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
        self.writer.put(items)

    def log_summary(self, metrics: dict[str, Any], step: int = 0) -> None:
        """Summary figures under their own names (no kind prefix); None and non-finite left out."""
        ts = int(time.time() * 1000)
        values = {k: schema.finite(v) for k, v in metrics.items()}
        self.writer.put([("m", k, v, ts, step) for k, v in values.items() if v is not None])

    def log_train_result(self, result: dict[str, Any], run_dir: str | Path) -> None:
        """result.json's params and summary figures, its dataset as a run input, the file itself."""
        self.log_params(schema.result_params(result))
        if result.get("dataset_hash"):
            self.set_tags({schema.TAG_DATASET_HASH: str(result["dataset_hash"])})
        self.log_summary(schema.result_metrics(result))
        data_dir = result.get("data_dir") or result.get("data")
        if self._dataset_logged:
            pass
        elif data_dir and (Path(data_dir) / "manifest.json").is_file():
            self.log_dataset(data_dir)
        elif result.get("dataset_hash"):
            # no manifest at hand: the content hash alone still identifies the dataset in MLflow
            self._log_input(
                str(result.get("recipe") or "dataset"), str(result["dataset_hash"]), {}, None, "train"
            )
        result_file = Path(run_dir) / "result.json"
        if result_file.is_file():
            self.log_artifact(result_file)

    def log_eval_result(self, result: dict[str, Any], out_dir: str | Path) -> None:
        """eval.json's figures as summary metrics, and the file under the ``eval`` artifact folder with
        evaluate's per-example predictions.jsonl beside it (``compare --sweep`` pairs runs by them)."""
        self.log_summary(schema.eval_metrics(result))
        for name in ("eval.json", "predictions.jsonl"):
            if (Path(out_dir) / name).is_file():
                self.log_artifact(Path(out_dir) / name, "eval")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Send a file or a folder; it must still exist when the writer gets to it (else skipped)."""
        self.writer.append(
            {"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path}
        )

    def log_dataset(self, data_dir: str | Path, context: str = "train") -> None:
        """The prepared dataset as a run input: name, content hash and row counts from its manifest."""
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
        self._dataset_logged = True
        source = {"uri": uri} if uri else {"dataset_hash": digest}
        self.writer.append(
            {
                "op": "input",
                "name": name,
                "digest": digest.split(":")[-1][:36],
                "source_type": "local",
                "source": json.dumps(source),
                "schema": json.dumps(schema_) if schema_ else None,
                "profile": json.dumps(profile, default=str),
                "context": context,
            }
        )

    def log_model(self, model: Any, *, input_example: Any = None, name: str = "model") -> None:
        """Log the model so that ``mlflow.pytorch.load_model(<ampflow.model_uri tag>)`` loads it back.

        pt2 (torch.export) needs positional tensors: a model called with keyword tensors is wrapped so
        that its inputs become positional in the example's order (names in the ampflow.model_inputs tag).
        While the server is away the model is saved into the spool folder and sent as an artifact
        later. With ``require`` an unreachable server raises what MLflow raised.
        """
        if hasattr(model, "eval"):
            # pt2 export records the graph in the mode the module is in: a model handed over in train
            # mode would keep dropout active in every later prediction (and in register's evaluation)
            model.eval()
        wrapped, example, names = model_export.positional(model, input_example)
        if self.run_id is None or self.writer.down_since is not None:
            self._save_model_offline(wrapped, example, name, names)
            return
        try:
            info = model_export.log_pt2(
                wrapped,
                example,
                names,
                name=name,
                run_id=self.run_id,
                uri=self.uri,
                experiment_id=self.experiment_id,
            )
        except Exception as exc:
            if not self._reachable():
                if self.require:
                    raise
                self.writer.mark_down(exc)
                self._save_model_offline(wrapped, example, name, names)
                return
            # the server answers, so torch.export could not trace the model: keep it as a pickle.
            # The server is up: no "unreachable" notice, no offline copy, and the tag is set below.
            self.set_tags({"ampflow.model_format": "pickle"})
            info = model_export.log_pickled(model, name=name, run_id=self.run_id, exc=exc)
        self.set_tags(
            {
                schema.TAG_MODEL_URI: info.model_uri,
                **({schema.TAG_MODEL_INPUTS: ",".join(names)} if names else {}),
            }
        )
        self.model_uri = info.model_uri  # for the step's closing lines

    def _save_model_offline(self, model: Any, example: Any, name: str, names: list[str]) -> None:
        local = self.run_dir / FOLDER / f"{name}-{int(time.time())}"
        model_export.save_offline(model, example, names, local)
        # a "model" operation, not a plain artifact: its replay makes the run's logged model and sets
        # ampflow.model_uri, so a model saved while the server was away can be registered later
        self.writer.append(
            {"op": "model", "path": str(local.resolve()), "name": name, "uid": uuid.uuid4().hex}
        )
        if names:
            self.set_tags({schema.TAG_MODEL_INPUTS: ",".join(names)})

    def _reachable(self) -> bool:
        try:
            self.client.get_experiment(self.experiment_id or "0")
            return True
        except Exception as exc:
            return not is_transient(exc)

    def close(self, status: str = "FINISHED") -> None:
        """End the run as ``status`` (FINISHED, FAILED, KILLED); a second call does nothing.

        Waits up to ``AMPFLOW_TRACKING_CLOSE_TIMEOUT_S`` (default 30) seconds for the last send;
        what is still unsent stays in the spool, and stderr says how to replay it.
        """
        if self.closed:
            return
        self.closed = True
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as exc:  # system metrics are a nice-to-have, never a failure
                log.warning("tracking: system metrics monitor did not stop cleanly: %s", exc)
        try:
            left = self.writer.close(
                [{"op": "terminate", "status": status, "end_time": int(time.time() * 1000)}],
                timeout=float(os.environ.get("AMPFLOW_TRACKING_CLOSE_TIMEOUT_S", "30")),
            )
        finally:
            lifecycle.unregister(self)  # even when the spool cannot be written: the handler goes back
        if left:
            print(
                f"ampflow tracking: {left} operations kept in {self.spool.path}; replay them with "
                f"`ampflow sync {self.run_dir}` once {redact_uri(self.uri)} answers",
                file=sys.stderr,
                flush=True,
            )

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything logged so far; True when the server acknowledged all of it."""
        return self.writer.flush(timeout)

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("KILLED")
        else:
            self.close("FAILED")


def _run_tags(
    kind: str, config: Any, parent_run_id: str | None, extra: dict[str, str] | None
) -> dict[str, str]:
    """The schema's tags of a new run: kind, hardware, recipe and configuration, sweep parent."""
    fingerprint, desc = schema.hardware()
    tags = {schema.TAG_KIND: kind, schema.TAG_HARDWARE: fingerprint, schema.TAG_HARDWARE_DESC: desc}
    if config is not None:
        tags[schema.TAG_RECIPE] = str(_cfg(config, "recipe"))
        if kind != "sweep":
            tags[schema.TAG_PRECISION] = str(_cfg(config, "precision"))
            tags[schema.TAG_CONFIG_ID] = schema.config_id(
                _cfg(config, "precision"), _cfg(config, "compile"), _cfg(config, "strategy")
            )
    if parent_run_id:
        tags[schema.TAG_PARENT] = parent_run_id
        tags[schema.TAG_SWEEP] = parent_run_id
    tags.update(extra or {})
    return tags


def _start_system_metrics(run_id: str, uri: str) -> Any:
    """MLflow's system metrics monitor on ``run_id``, started; None when it cannot run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # its start/stop INFO lines are noise on every run; its warnings still show
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

        interval = float(os.environ.get("AMPFLOW_SYSTEM_METRICS_INTERVAL_S", "10"))
        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval, tracking_uri=uri, node_id=system_metrics_node_id()
        )
        monitor.start()
        return monitor
    except Exception as exc:
        log.warning("tracking: system metrics off (%s)", exc)
        return None


def _started_here(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a train run's tracking state (an MLflow run, or its spooled
    creation), which a ``--resume`` continues."""
    state = run_dir / FOLDER / "state.json"
    try:
        saved = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return saved.get("kind") == "train" and not saved.get("attached")


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


class NodeSystemMetrics:
    """Another node's share of a multi-node run: its system metrics, logged to rank 0's run under its
    own node id; nothing else (rank 0 logs the training). ``close`` stops the monitor."""

    def __init__(self, run_id: str) -> None:
        self.monitor = _start_system_metrics(run_id, tracking_uri())

    def close(self, status: str = "FINISHED") -> None:
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.finish()
            self.monitor = None
