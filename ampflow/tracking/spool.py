"""The local spool: an append-only JSONL log of tracking operations, replayed exactly once.

Every operation the tracker sends (create run, params, tags, metrics, inputs, artifacts, terminate)
is first appended here with a sequence number, then sent; ``state.json`` records the highest
sequence number the server acknowledged. Replay sends what lies above it, in order, and moves the
mark after each acknowledged operation, so an interrupted replay resumes where it stopped.

Exactly once even across a crash between "sent" and "acknowledgement written": metrics keep their
original timestamps, and MLflow's SQL store treats a metric with the same key, step, timestamp and
value as the same row; params and tags are idempotent; a spooled run creation carries a client
generated ``ampflow.run_uid`` tag and is looked up before it is created again.

    ampflow sync RUN_DIR           # replays RUN_DIR/tracking/spool.jsonl (see ampflow.steps.sync)

Layout of ``RUN_DIR/tracking/``::

    state.json     run_id, experiment, tracking_uri, acked (last acknowledged seq), next_seq
    spool.jsonl    one operation per line: {"seq": n, "op": "...", ...}
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ampflow.io import atomic_write_json

STATE = "state.json"
SPOOL = "spool.jsonl"
FOLDER = "tracking"
# MLflow's log_batch limits: 1000 metrics, 100 params, 100 tags per request
MAX_METRICS = 1000
MAX_PARAMS = 100


class Spool:
    """One run directory's spool. Thread-safe; one writer process at a time."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / SPOOL
        self.state_path = self.folder / STATE
        self._lock = threading.Lock()
        self.state: dict[str, Any] = {"acked": 0, "next_seq": 1}
        if self.state_path.is_file():
            self.state.update(json.loads(self.state_path.read_text(encoding="utf-8")))
        self._unacked: list[dict[str, Any]] | None = None  # loaded lazily from disk

    @staticmethod
    def exists(run_dir: str | Path) -> bool:
        return (Path(run_dir) / FOLDER / STATE).is_file()

    def save_state(self, **changes: Any) -> None:
        with self._lock:
            self.state.update(changes)
            atomic_write_json(self.state_path, self.state)

    def append(self, ops: list[dict[str, Any]]) -> None:
        """Give each operation the next sequence number and write it down before it is sent."""
        if not ops:
            return
        with self._lock:
            pending = self._pending_locked()
            lines = []
            for op in ops:
                op["seq"] = self.state["next_seq"]
                self.state["next_seq"] += 1
                lines.append(json.dumps(op, separators=(",", ":"), default=str))
                pending.append(op)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
                fh.flush()
            atomic_write_json(self.state_path, self.state)

    def pending(self) -> list[dict[str, Any]]:
        """Operations not yet acknowledged, oldest first."""
        with self._lock:
            return list(self._pending_locked())

    def ack(self, seq: int) -> None:
        with self._lock:
            self.state["acked"] = max(int(self.state.get("acked", 0)), seq)
            if self._unacked is not None:
                self._unacked = [op for op in self._unacked if op["seq"] > self.state["acked"]]
            atomic_write_json(self.state_path, self.state)

    def _pending_locked(self) -> list[dict[str, Any]]:
        if self._unacked is None:
            acked = int(self.state.get("acked", 0))
            ops: list[dict[str, Any]] = []
            if self.path.is_file():
                with self.path.open(encoding="utf-8") as fh:
                    for line in fh:
                        line = line.strip()
                        if not line:
                            continue
                        try:
                            op = json.loads(line)
                        except json.JSONDecodeError:
                            # a line torn by a crash mid-write was never acknowledged nor sent
                            continue
                        if op.get("seq", 0) > acked:
                            ops.append(op)
            self._unacked = ops
        return self._unacked
