"""Keeper of one local ampflow step: runs it, keeps its log, records how it ended.

    python dags/_ampflow_proc.py STATUS_JSON LOG_FILE -- ampflow train --recipe tweets-bow ...

The Airflow task starts this in its own session, so the step outlives a crashed worker and the
task's retry can reconnect to it (see ``_ampflow_common.LocalStepJob``). It writes STATUS_JSON
atomically once the step exits, which is how a reconnecting retry learns the exit code of a step it
did not start. Standard library only: it runs under the Airflow venv's interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def _write_status(path: str, returncode: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump({"returncode": returncode}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: _ampflow_proc.py STATUS_JSON LOG_FILE -- COMMAND ...", file=sys.stderr)
        return 2
    status_path, log_path, command = argv[0], argv[1], argv[3:]
    env = dict(os.environ)
    # a step that inherited MLFLOW_RUN_ID would log into someone else's run
    env.pop("MLFLOW_RUN_ID", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "ab", buffering=0) as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        try:
            child = subprocess.Popen(  # noqa: S603 - the task's step_argv, no shell
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        except OSError as exc:
            log.write(f"ampflow-proc: cannot start {command[0]!r}: {exc}\n".encode())
            _write_status(status_path, 127)
            return 127

        def forward(signum: int, _frame: object) -> None:
            # SIGTERM reaches the step so that it closes its MLflow run as KILLED
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        returncode = child.wait()
    _write_status(status_path, returncode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
