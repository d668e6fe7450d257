"""The local process runner: one ``ampflow`` step as a process that outlives the Airflow worker.

Two halves, standard library only:

- the keeper, started by :func:`start` in its own session under the worker's interpreter::

      python -m airflow_ampflow.process STATUS_JSON LOG_FILE -- ampflow train --recipe tweets-bow ...

  It runs the step with its output in LOG_FILE, forwards SIGTERM/SIGINT to it (so the step closes its
  MLflow run as KILLED), and writes STATUS_JSON atomically once the step exits: that is how a
  reconnecting retry learns the exit code of a step it did not start.
- the task's side: :func:`start` returns the step's identity (pid, start time, files), which the
  operator keeps in Airflow's task state store; :func:`state`, :func:`stop` and :class:`LogFollower`
  work from that identity alone, so a retry in another worker can follow the same process.

A distributed step runs the same way with :func:`torchrun_program` in front of its argv: the keeper
starts torchrun, which starts the ranks, and a SIGTERM reaches them through torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KEEPER = "airflow_ampflow.process"


# -- the task's side ------------------------------------------------------------------------------


def _start_ticks(pid: int) -> str | None:
    """Start time of ``pid`` since boot: a recycled pid has another one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(ident: dict[str, Any]) -> bool:
    """Whether the keeper ``ident`` names is still running (not a recycled pid, not a zombie)."""
    ticks = _start_ticks(int(ident["pid"]))
    if ticks is None or ticks != ident.get("start"):
        return False
    try:
        fields = Path(f"/proc/{ident['pid']}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def training_python(ampflow_bin: str) -> str:
    """The interpreter of the training venv ``ampflow_bin`` belongs to: the one its ``#!`` line names,
    else the ``python`` beside it. Raises FileNotFoundError when there is neither."""
    try:
        with open(ampflow_bin, "rb") as fh:
            first = fh.readline(1024)
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        if words and os.path.basename(words[0]).startswith("python") and os.access(words[0], os.X_OK):
            return words[0]
    beside = Path(ampflow_bin).with_name("python")
    if os.access(beside, os.X_OK):
        return str(beside)
    raise FileNotFoundError(
        f"no Python interpreter for torchrun beside {ampflow_bin} (its #! line names none): point "
        "ampflow_bin at the training venv's ampflow"
    )


def torchrun_program(ampflow_bin: str, nproc_per_node: int) -> tuple[str, ...]:
    """What runs ``ampflow`` under torchrun with ``nproc_per_node`` processes on this machine, in the
    training venv of ``ampflow_bin`` (not the worker's interpreter, which has no torch), on a port free
    now: :func:`ampflow.commands.torchrun_program`, as ``ampflow bench`` runs its distributed
    configurations. Raises FileNotFoundError when that venv has no interpreter to name."""
    from ampflow.commands import torchrun_program as program

    return program(nproc_per_node, python=training_python(ampflow_bin))


def start(argv: list[str], folder: Path, env: dict[str, str]) -> dict[str, Any]:
    """Start ``argv`` under a keeper in its own session; returns its identity (JSON-able):
    ``pid``, ``start``, ``status`` (the exit-status file), ``log`` and ``argv``."""
    folder.mkdir(parents=True, exist_ok=True)
    status, log = folder / "status.json", folder / "step.log"
    status.unlink(missing_ok=True)
    proc = subprocess.Popen(  # noqa: S603 - argv from plan_step, no shell
        [sys.executable, "-m", KEEPER, str(status), str(log), "--", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        env=env,
    )
    return {
        "pid": proc.pid,
        "start": _start_ticks(proc.pid),
        "status": str(status),
        "log": str(log),
        "argv": argv,
    }


def state(ident: dict[str, Any]) -> str:
    """``succeeded``, ``failed:<exit code>``, ``running``, or ``lost`` (gone without an exit status)."""
    status = Path(ident["status"])
    if status.exists():
        rc = json.loads(status.read_text())["returncode"]
        return "succeeded" if rc == 0 else f"failed:{rc}"
    return "running" if alive(ident) else "lost"


def stop(ident: dict[str, Any], wait_s: float = 30.0) -> None:
    """SIGTERM the keeper (it forwards the signal to the step) and wait up to ``wait_s`` for the
    step to exit: it closes its MLflow run as KILLED on the way out."""
    if not alive(ident):
        return
    try:
        os.kill(int(ident["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if Path(ident["status"]).exists() or not alive(ident):
            return
        time.sleep(0.1)


class LogFollower:
    """Reads the complete lines a step appended to its log since the last call."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[str]:
        """The complete lines written since the last call (a partial last line waits)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:
            return []
        complete = chunk.rfind(b"\n") + 1
        self.offset += complete
        return chunk[:complete].decode(errors="replace").splitlines()


def last_line(path: str) -> str:
    """The last non-blank line of a step's log (its error message when it failed)."""
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


# -- the keeper -----------------------------------------------------------------------------------


def _write_status(path: str, returncode: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump({"returncode": returncode}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    """The keeper: ``STATUS_JSON LOG_FILE -- COMMAND ...``; runs COMMAND, then records its exit code."""
    if len(argv) < 4 or argv[2] != "--":
        print(f"usage: python -m {KEEPER} STATUS_JSON LOG_FILE -- COMMAND ...", file=sys.stderr)
        return 2
    status_path, log_path, command = argv[0], argv[1], argv[3:]
    env = dict(os.environ)
    # a step that inherited MLFLOW_RUN_ID would log into someone else's run
    env.pop("MLFLOW_RUN_ID", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        # SIGTERM reaches the step so that it closes its MLflow run as KILLED; one that arrives
        # before the step exists is passed on as soon as it does (not lost with the keeper)
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    with open(log_path, "ab", buffering=0) as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        try:
            child = subprocess.Popen(  # noqa: S603 - the task's planned argv, no shell
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        except OSError as exc:
            log.write(f"{KEEPER}: cannot start {command[0]!r}: {exc}\n".encode())
            _write_status(status_path, 127)
            return 127
        for signum in pending:
            child.send_signal(signum)
        returncode = child.wait()
    _write_status(status_path, returncode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
