"""A real ``mlflow server`` on 127.0.0.1, small (one worker, no job execution), for tests and benchmarks.

    python -m ampflow.tracking.server --root /tmp/mlflow-demo      # serves until Ctrl-C

The tests' session fixture (tests/fixtures_mlflow.py) and benchmarks/bench_tracking.py use
:class:`LocalServer`; ``restart()`` brings it back on the same port and store, which is how the spool
test takes the server away mid-run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    def __init__(self, root: str | Path, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.db = self.root / "mlflow.db"
        self.artifacts = self.root / "artifacts"
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> LocalServer:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        argv = [
            str(mlflow_bin) if mlflow_bin.exists() else sys.executable,
            *([] if mlflow_bin.exists() else ["-m", "mlflow"]),
            "server", "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination",
            str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = self.log_path.open("ab")
        # its own process group: stop() ends the server and the workers it forks, nothing else
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed argv, no shell
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {self.log_path}")
            if self.healthy():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:  # noqa: S310 - loopback
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        # wait until the port is really free so a restart can bind it again
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.healthy():
            time.sleep(0.2)

    def restart(self) -> LocalServer:
        self.stop()
        return self.start()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="a small local mlflow server for ampflow tests and benchmarks")
    p.add_argument("--root", required=True, help="folder for the SQLite store and artifacts")
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args(argv)
    with LocalServer(args.root, args.port) as server:
        print(f"MLFLOW_TRACKING_URI={server.uri}", flush=True)
        try:
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
