"""Data larger than memory: train through the streaming path under a memory limit smaller than the data.

    python -m benchmarks.bench_streaming                        # 1.5 GiB of data, a 1 GiB limit, one epoch (~2-3 min)
    python -m benchmarks.bench_streaming --data-mib 3072 --limit-mib 1536 --workers 2
    python -m benchmarks.bench_streaming --quick                # smoke run: 256 MiB of data under 512 MiB, 40 steps
    python -m benchmarks.bench_streaming --also-memory          # also show the in-memory path under the limit

Writes a synthetic prepared dataset (float32 features of ``--features`` columns, three classes; the
``ampflow.data`` format that ``ampflow prep`` writes) of ``--data-mib`` MiB, drops it from the page
cache, and runs the real ``ampflow train`` with ``data_loading=auto`` in a memory cgroup limited to
``--limit-mib`` (cgroup v2 ``memory.max``, else v1 ``memory.limit_in_bytes``; swap off where the
kernel allows). The auto choice must pick the stream (the data is over half the memory left), which
reads each batch's rows with ``pread`` in DataLoader workers. Prints: the path taken, the cgroup's peak
usage (page cache included) against the limit, the largest process's peak RSS (``wait4``), the bytes
read against the limit, and the data-wait share of the timed window (goal < 5 %). Without a writable
cgroup it runs unconfined and says so (then only peak RSS against the data size is shown).
``--also-memory`` runs ``data_loading=memory`` under the same limit afterwards: it is expected to be
killed by the kernel's OOM killer. Nothing is asserted. Exit codes: 0 done, 2 bad arguments, 1 the
streamed run failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SYNTH = "benchmarks.bench_streaming:synthetic"
CLASSES = 3
HIDDEN = 1024
MIB = 1 << 20


class SyntheticFeatures:
    """Dense float32 features, a 3-layer MLP: enough work per row that reading is not the only cost."""

    name = "synthetic-features"
    description = "benchmark stand-in: dense float32 features, 3 classes, 2 hidden layers of 1024"
    label_column = "label"
    dedupe_columns: list[str] = []
    defaults: dict[str, Any] = {"batch_size": 256, "learning_rate": 1e-3}

    def load_source(self, source: str | None) -> Any:
        raise NotImplementedError("the streaming benchmark writes its dataset directly")

    def featurize(self, splits: Any, out_dir: Path) -> Any:
        raise NotImplementedError

    def build_model(self, info: dict[str, Any]) -> Any:
        import torch

        class Mlp(torch.nn.Module):
            def __init__(self, features: int) -> None:
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(features, HIDDEN),
                    torch.nn.ReLU(),
                    torch.nn.Linear(HIDDEN, HIDDEN),
                    torch.nn.ReLU(),
                    torch.nn.Linear(HIDDEN, CLASSES),
                )

            def forward(self, x: Any) -> Any:
                return self.net(x)

        return Mlp(int(info["num_features"]))

    def loss(self, logits: Any, labels: Any) -> Any:
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), labels)


def synthetic() -> SyntheticFeatures:
    return SyntheticFeatures()


def _write_npy(path: Path, rows: int, make: Any, dtype: str, width: int | None, h: Any) -> None:
    """Write ``rows`` rows chunk by chunk (``make(lo, hi)``), never the whole array in memory."""
    shape = (rows, width) if width else (rows,)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
        )
        for lo in range(0, rows, 16384):
            chunk = np.ascontiguousarray(make(lo, min(rows, lo + 16384)), dtype=dtype)
            h.update(chunk.tobytes())
            chunk.tofile(f)
        f.flush()
        os.fsync(f.fileno())
        # out of the page cache: the training run reads from the disk, as with data nobody just wrote
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def write_dataset(out: Path, data_mib: int, features: int, eval_rows: int = 2048) -> dict[str, int]:
    """The prepared dataset: ``data_mib`` MiB of train features, small val/test splits; returns rows."""
    from ampflow.data.manifest import MANIFEST, SCHEMA
    from ampflow.io import atomic_write_json

    centers = np.random.default_rng(7).normal(0, 0.02, size=(CLASSES, features)).astype(np.float32)
    rows = {"train": max(1, data_mib * MIB // (features * 4)), "val": eval_rows, "test": eval_rows}
    h = hashlib.sha256()
    for i, (split, n) in enumerate(rows.items()):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)

        def labels(lo: int, hi: int, i: int = i) -> np.ndarray:
            return np.random.default_rng([i, lo]).integers(0, CLASSES, size=hi - lo)

        def x(lo: int, hi: int, i: int = i) -> np.ndarray:
            noise = np.random.default_rng([i, lo, 1]).standard_normal((hi - lo, features), dtype=np.float32)
            return centers[labels(lo, hi)] + noise

        _write_npy(folder / "x.npy", n, x, "float32", features, h)
        _write_npy(folder / "labels.npy", n, labels, "int64", None, h)
    atomic_write_json(
        out / MANIFEST,
        {
            "schema": SCHEMA,
            "recipe": SYNTH,
            "arrays": ["x", "labels"],
            "rows": rows,
            "label_names": [str(c) for c in range(CLASSES)],
            "content_hash": "sha256:" + h.hexdigest(),
            "info": {"num_features": features, "num_classes": CLASSES},
        },
    )
    return rows


# -- the memory limit ---------------------------------------------------------------------------


class Cgroup:
    """A memory cgroup of its own (v2, else v1) with a limit; ``None`` from :meth:`make` when none can be made."""

    def __init__(self, path: Path, version: int):
        self.path, self.version = path, version

    @classmethod
    def make(cls, limit: int) -> Cgroup | None:
        name = f"ampflow-bench-{os.getpid()}"
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        try:
            if v2.is_file() and "memory" in v2.read_text().split():
                path = Path("/sys/fs/cgroup") / name
                path.mkdir()
                (path / "memory.max").write_text(str(limit))
                _try_write(path / "memory.swap.max", "0")
                return cls(path, 2)
            v1 = Path("/sys/fs/cgroup/memory")
            if v1.is_dir():
                path = v1 / name
                path.mkdir()
                (path / "memory.limit_in_bytes").write_text(str(limit))
                _try_write(path / "memory.memsw.limit_in_bytes", str(limit))  # no swapping around it
                return cls(path, 1)
        except OSError:
            return None
        return None

    def enter(self) -> None:
        """Move the calling process in (a ``preexec_fn``: the child joins before it execs)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int | None:
        """Peak memory charged to the group (RSS and page cache), bytes."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def _try_write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


# -- the runs -----------------------------------------------------------------------------------


def train(
    data: Path, out: Path, loading: str, args: argparse.Namespace, group: Cgroup | None
) -> dict[str, Any]:
    """One ``ampflow train`` run in the cgroup: its result.json (or ``{"killed": ...}``) and peak RSS."""
    cmd = [
        sys.executable, "-m", "ampflow", "train", "--recipe", SYNTH, "--data", str(data), "--out", str(out),
        "--set", f"data_loading={loading}", "--set", f"data_workers={args.workers}",
        "--set", f"batch_size={args.batch_size}", "--set", f"warmup_steps={args.warmup}",
    ]  # fmt: skip
    cmd += ["--set", f"max_steps={args.steps}"] if args.steps else ["--set", "epochs=1"]
    env = {**os.environ, "AMPFLOW_TRACKING": "off"}
    proc = subprocess.Popen(cmd, env=env, preexec_fn=group.enter if group else None)  # noqa: PLW1509
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_rss = usage.ru_maxrss * 1024  # KiB on Linux; the largest of the process and its waited children
    if proc.returncode:
        killed = -proc.returncode == signal.SIGKILL
        return {"returncode": proc.returncode, "killed": killed, "peak_rss": peak_rss}
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    return {"returncode": 0, "result": result, "peak_rss": peak_rss}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_streaming", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data-mib", type=int, default=1536, help="train split size in MiB (default 1536)")
    p.add_argument(
        "--limit-mib", type=int, default=1024, help="memory limit of the training run (default 1024)"
    )
    p.add_argument("--features", type=int, default=1024, help="float32 columns per row (default 1024: 4 KiB)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument(
        "--steps", type=int, default=0, help="optimizer steps (default 0: one epoch over the data)"
    )
    p.add_argument("--warmup", type=int, default=10, help="untimed leading steps (default 10)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--dir", help="where the dataset is written (default: a temporary directory, removed)")
    p.add_argument("--also-memory", action="store_true", help="also run data_loading=memory under the limit")
    p.add_argument("--json", help="write the figures as JSON to this path")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 256 MiB of data under a 512 MiB limit, 40 steps"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.data_mib, args.limit_mib, args.steps, args.warmup = 256, 512, 40, 5
    if (
        min(args.data_mib, args.limit_mib, args.features, args.batch_size) < 1
        or args.steps < 0
        or args.warmup < 0
    ):
        p.error("sizes must be positive; --steps and --warmup non-negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    limit = args.limit_mib * MIB
    with tempfile.TemporaryDirectory(prefix="bench-streaming-", dir=args.dir) as tmp:
        data = Path(tmp) / "data"
        rows = write_dataset(data, args.data_mib, args.features)
        data_bytes = rows["train"] * (args.features * 4 + 8)
        group = Cgroup.make(limit)
        print(
            f"dataset: {rows['train']} rows x {args.features} float32 = {data_bytes / MIB:.0f} MiB; limit: "
            + (
                f"{args.limit_mib} MiB (cgroup v{group.version})"
                if group
                else "none (no writable memory cgroup)"
            ),
            flush=True,
        )
        try:
            streamed = train(data, Path(tmp) / "stream", "auto", args, group)
            peak = group.peak() if group else None
            memory = None
            if args.also_memory and group:
                group.remove()
                group = Cgroup.make(limit)
                memory = train(data, Path(tmp) / "memory", "memory", args, group) if group else None
        finally:
            if group:
                group.remove()
    if streamed["returncode"]:
        print(
            f"streamed run failed: exit {streamed['returncode']}{' (killed)' if streamed['killed'] else ''}"
        )
        return 1
    r = streamed["result"]
    m = r["metrics"]
    read = m["steps"] * args.batch_size * (args.features * 4 + 8)
    figures = {
        "data_bytes": data_bytes,
        "limit_bytes": limit if peak is not None else None,
        "data_loading": r.get("data_loading"),
        "cgroup_peak_bytes": peak,
        "peak_rss_bytes": streamed["peak_rss"],
        "bytes_read": read,
        "steps": m["steps"],
        "samples_per_s": m["samples_per_s"],
        "data_wait_frac": m["data_wait_frac"],
        "memory_path": None
        if memory is None
        else ("killed" if memory.get("killed") else memory["returncode"]),
    }
    print(f"path taken (data_loading=auto): {figures['data_loading']}")
    if peak is not None:
        print(f"cgroup peak (RSS + page cache): {peak / MIB:.0f} MiB of the {args.limit_mib} MiB limit")
    print(
        f"peak RSS of the largest process: {streamed['peak_rss'] / MIB:.0f} MiB against {data_bytes / MIB:.0f} MiB "
        f"of data; read {read / MIB:.0f} MiB in {m['steps']} steps"
    )
    print(
        f"samples/s {m['samples_per_s']:.0f}, data-wait share {m['data_wait_frac']:.1%} of the timed window (goal < 5 %)"
    )
    if memory is not None:
        print(f"data_loading=memory under the same limit: {figures['memory_path']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"schema": "ampflow.bench.streaming/1", **figures}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
