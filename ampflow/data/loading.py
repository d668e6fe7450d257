"""The train split as the trainer consumes it: copied to the device once, or streamed from disk.

``data_loading`` chooses (:func:`choose_loading`): ``memory`` copies every array to the device at the
start (the fastest path when it fits); ``stream`` reads each micro-batch's rows from the prepared
``.npy`` files (:class:`ampflow.data.rows.RowFile`) in DataLoader workers, pins them on CUDA and copies
them to the device without blocking; ``auto`` streams when the split would take more than
:data:`STREAM_SHARE` of the free memory (:func:`available_memory`).

Both paths serve the same micro-batches: the order is :class:`ampflow.data.batching.DataOrder`'s (the
streaming sampler replays it from the run's position, so a resume skips exactly the consumed prefix),
and under ``pad_to=bucket`` both cut the sequence arrays to the batch's bucket length. The trainer
hands :meth:`TrainData.fetch` the ``(epoch, start)`` of each micro-batch, inside the timed data fetch
of :class:`ampflow.engine.step.Stepper`, so the data-wait share is measured the same way for both.

torch and numpy load inside the functions and methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ampflow.config import ConfigError, RunConfig
from ampflow.data.batching import DataOrder, Position, default_buckets, epoch_permutation
from ampflow.data.manifest import read_manifest
from ampflow.data.rows import RowFile, sequence_extent

# stream when the split would take more than this share of the free memory: the in-memory path holds
# a host copy while it moves the split to the device, and the run needs the rest for the model,
# optimizer state and activations
STREAM_SHARE = 0.5
# rows a streamed run keeps in memory for the FLOP count, the batch-size search and the model
# signature (the in-memory path uses its whole split)
STREAM_PROBE_ROWS = 4096
# batches each DataLoader worker reads ahead
PREFETCH_FACTOR = 4
# rows per read when a whole array is scanned (sequence lengths, token counts)
SCAN_ROWS = 65536


def choose_loading(setting: str, data_bytes: int, available_bytes: int | None) -> str:
    """``memory`` or ``stream`` for the ``data_loading`` setting (``auto``, ``memory``, ``stream``).

    ``auto``: ``stream`` when ``data_bytes`` exceeds :data:`STREAM_SHARE` x ``available_bytes``,
    ``memory`` otherwise or when the free memory is unknown (None).
    """
    if setting in ("memory", "stream"):
        return setting
    if setting != "auto":
        raise ConfigError(f"data_loading must be one of auto, memory, stream; got {setting!r}")
    if available_bytes is None:
        return "memory"
    return "stream" if data_bytes > STREAM_SHARE * available_bytes else "memory"


def available_memory(device: Any) -> int | None:
    """Bytes the split could take on ``device``: free host memory (``MemAvailable``, capped by the
    process's cgroup memory limit less its anonymous usage), and on CUDA also the device's free
    memory (the host copy is made first). None when nothing is readable."""
    host = _host_available()
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free) if host is None else min(host, int(free))
    return host


def _host_available() -> int | None:
    values = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    values.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        values.append(cgroup)
    return min(values) if values else None


def _cgroup_headroom() -> int | None:
    """The own cgroup's memory limit less its anonymous memory (v2 or v1); None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit_file, stat_key = base / "memory.max", "anon"
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit_file, stat_key = base / "memory.limit_in_bytes", "total_rss"
        else:
            continue
        try:
            raw = limit_file.read_text(encoding="ascii").strip()
            if raw == "max" or int(raw) >= 1 << 60:
                continue
            stat = dict(ln.split() for ln in (base / "memory.stat").read_text(encoding="ascii").splitlines())
            return max(0, int(raw) - int(stat.get(stat_key, 0)))
        except (OSError, ValueError):
            continue
    return None


class TrainData:
    """The train split of a run, in memory or streamed; built before the batch size is known.

    ``inputs`` (``{name: (m, ...)}`` tensors on the device, floats converted by ``policy``) and
    ``labels`` (int64 ``(m,)``) are the whole split in memory, or its first ``STREAM_PROBE_ROWS`` rows
    when streaming (for the FLOP count, the batch-size search and the model signature). ``n`` is the
    split's example count, ``mode`` the path taken, ``lengths`` the sequence lengths under bucketing.
    Raises ConfigError for a bad split, or ``pad_to=bucket`` on a recipe without sequence arrays.
    """

    def __init__(self, data_dir: str | Path, config: RunConfig, recipe: Any, device: Any, policy: Any):
        self.device, self.policy, self.recipe = device, policy, recipe
        self.workers = config.data_workers
        manifest = read_manifest(data_dir)
        if "train" not in manifest["rows"]:
            raise ConfigError(f"--data {data_dir}: no split 'train'; splits: {', '.join(manifest['rows'])}")
        folder = Path(data_dir) / "train"
        self.files = {name: RowFile(folder / f"{name}.npy") for name in manifest["arrays"]}
        if "labels" not in self.files:
            raise ConfigError(f"--data {data_dir}: split 'train' has no labels array")
        n = len(self.files["labels"])
        self.n = min(n, config.limit_train_samples) if config.limit_train_samples else n
        if self.n == 0:
            raise ConfigError(f"--data {data_dir}: split 'train' is empty")
        self.data_bytes = sum(f.row_bytes for f in self.files.values()) * self.n
        self.mode = choose_loading(
            config.data_loading,
            self.data_bytes,
            available_memory(device) if config.data_loading == "auto" else None,
        )
        self.seq_arrays, self.buckets, self.lengths = self._bucketing(config, recipe, data_dir)
        rows = self.n if self.mode == "memory" else min(self.n, STREAM_PROBE_ROWS)
        self.inputs, self.labels = self._tensors(0, rows)
        self.order: DataOrder | None = None
        self._loader: Any = None
        self._it: Any = None

    # -- set-up -------------------------------------------------------------------------------

    def _bucketing(self, config: RunConfig, recipe: Any, data_dir: Any) -> tuple[tuple[str, ...], Any, Any]:
        """``(sequence arrays, buckets, lengths)``; ``((), None, None)`` under fixed padding."""
        if config.pad_to != "bucket":
            return (), None, None
        seq = tuple(getattr(recipe, "sequence_arrays", ()) or ())
        length_name = getattr(recipe, "length_array", None) or (seq[0] if seq else None)
        name = getattr(recipe, "name", config.recipe)
        if not seq or length_name not in self.files:
            raise ConfigError(
                f"pad_to=bucket: recipe {name!r} declares no sequence arrays (sequence_arrays, "
                "length_array); use pad_to=max"
            )
        widths = {self.files[a].row_shape for a in seq if a in self.files}
        if len(widths) != 1 or len(next(iter(widths))) != 1 or set(seq) - set(self.files):
            raise ConfigError(
                f"pad_to=bucket: --data {data_dir}: the sequence arrays {', '.join(seq)} of recipe {name!r} "
                "must all exist with one shape (n, width)"
            )
        width = next(iter(widths))[0]
        declared = getattr(recipe, "pad_buckets", None)
        buckets = tuple(sorted({min(int(b), width) for b in (declared or default_buckets(width))} | {width}))
        f = self.files[length_name]
        import numpy as np

        lengths = np.concatenate(
            [
                sequence_extent(f.read_range(lo, min(lo + SCAN_ROWS, self.n)))
                for lo in range(0, self.n, SCAN_ROWS)
            ]
        )
        return seq, buckets, lengths

    def _tensors(self, lo: int, hi: int) -> tuple[dict[str, Any], Any]:
        """Rows ``lo:hi`` of every array as tensors on the device: ``(inputs, labels)``."""
        import torch

        out = {name: torch.from_numpy(f.read_range(lo, hi)) for name, f in self.files.items()}
        labels = out.pop("labels").to(torch.long).to(self.device)
        return {k: self.policy.convert_input(v.to(self.device)) for k, v in out.items()}, labels

    def make_order(self, batch: int, seed: int, rank: int, world: int, pos: Position) -> DataOrder:
        """The run's :class:`DataOrder` from ``pos`` (advanced in place by the trainer); kept for fetch."""
        self.order = DataOrder(self.n, batch, seed, rank, world, self.device, pos, self.lengths, self.buckets)
        if self.mode == "memory":
            self._flat = {k: (v.reshape(v.shape[0], -1), tuple(v.shape[1:])) for k, v in self.inputs.items()}
        return self.order

    def start(self, micro_batches: int) -> None:
        """Open the stream for the next ``micro_batches`` micro-batches from the order's current
        position (call after :meth:`make_order` and any restore; a no-op in memory)."""
        if self.mode != "stream" or micro_batches <= 0:
            return
        import torch

        plan = _Plan(self.order, micro_batches)
        reader = _Reader(self.files, self.seq_arrays)
        self._loader = torch.utils.data.DataLoader(
            reader,
            batch_size=None,
            sampler=plan,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=PREFETCH_FACTOR if self.workers else None,
        )
        self._it = iter(self._loader)

    def close(self) -> None:
        """Stop the stream's workers (idempotent)."""
        self._it = self._loader = None

    # -- per micro-batch ----------------------------------------------------------------------

    def fetch(self, ref: tuple[int, int]) -> tuple[dict[str, Any], Any]:
        """This rank's micro-batch at ``ref = (epoch, start)``: ``(inputs, labels)`` on the device.

        Under bucketing the sequence arrays are ``(local, pad_length)``. Raises RuntimeError when the
        stream is not open or serves another micro-batch than ``ref`` (never silently out of order).
        """
        epoch, start = ref
        if self.mode == "memory":
            idx = self.order.local_indices(epoch, start)
            pad = self.order.pad_length(epoch, start)
            inputs = {}
            for k, (flat, shape) in self._flat.items():
                if pad is not None and k in self.seq_arrays:
                    # index_select gathers the cut columns into a contiguous (local, pad) tensor
                    inputs[k] = flat.narrow(1, 0, pad).index_select(0, idx)
                else:  # 2-D gathers are several times faster than N-D ones (images)
                    inputs[k] = flat.index_select(0, idx).view(-1, *shape)
            return inputs, self.labels.index_select(0, idx)
        if self._it is None:
            raise RuntimeError("the data stream is not open (TrainData.start was not called)")
        batch = next(self._it)
        got = tuple(int(v) for v in batch.pop("_ref"))
        if got != (epoch, start):
            raise RuntimeError(
                f"the data stream served micro-batch {got}, the trainer expected {(epoch, start)}"
            )
        labels = batch.pop("labels").to(self.device, non_blocking=True).long()
        inputs = {
            k: self.policy.convert_input(v.to(self.device, non_blocking=True)) for k, v in batch.items()
        }
        return inputs, labels

    # -- figures ------------------------------------------------------------------------------

    def probe(self, seed: int, k: int, pad: int | None = None) -> tuple[dict[str, Any], Any]:
        """``k`` samples for the FLOP count: the first of epoch 0's permutation in memory, the first
        rows of the split when streaming (the rows held in memory); sequence arrays cut to ``pad``."""
        import torch

        m = int(self.labels.shape[0])
        idx = epoch_permutation(seed, 0, self.n)[:k] if self.mode == "memory" else range(min(k, m))
        sel = torch.as_tensor(list(idx), dtype=torch.long, device=self.device)
        inputs = {
            name: (v[:, :pad] if pad is not None and name in self.seq_arrays else v).index_select(0, sel)
            for name, v in self.inputs.items()
        }
        return inputs, self.labels.index_select(0, sel)

    def pad_lengths(self) -> list[int | None]:
        """The padded lengths a micro-batch may have: the buckets, or ``[None]`` (the split's width)."""
        return list(self.buckets) if self.buckets else [None]

    def mean_over(
        self, by_pad: dict[int | None, float | None], batches: list[tuple[int, int]]
    ) -> float | None:
        """The mean of a per-sample figure given per padded length (FLOPs per sample) over the
        micro-batches ``batches``; the widest length's figure when ``batches`` is empty, None when any
        needed figure is."""
        widest = by_pad[max(by_pad, key=lambda p: -1 if p is None else p)]
        if self.order is None or not self.order.bucketing or not batches:
            return widest
        values = [by_pad.get(self.order.pad_length(e, s)) for e, s in batches]
        return None if any(v is None for v in values) else sum(values) / len(values)

    def count_tokens(self, recipe: Any, batches: list[tuple[int, int]]) -> int:
        """Real tokens of the global micro-batches ``batches`` (the timed window), by the recipe's
        ``tokens_in_batch`` over whole rows (padding never counts); 0 without that method."""
        import numpy as np
        import torch

        if not hasattr(recipe, "tokens_in_batch") or not batches or self.order is None:
            return 0
        idx = np.concatenate([self.order.global_indices(e, s) for e, s in batches])
        total = 0
        for lo in range(0, len(idx), 4096):
            part = idx[lo : lo + 4096]
            if self.mode == "memory":
                sel = torch.from_numpy(part).to(self.device)
                rows = {k: v.index_select(0, sel) for k, v in self.inputs.items()}
            else:
                rows = {k: torch.from_numpy(f.take(part)) for k, f in self.files.items() if k != "labels"}
            total += int(recipe.tokens_in_batch(rows))
        return total


class _Plan:
    """A DataLoader sampler: the next micro-batches of a :class:`DataOrder` from a copy of its position.

    Yields ``(epoch, start, local indices, pad length)``; the position is copied when built, so the
    trainer moving its own position (before the first fetch) changes nothing here.
    """

    def __init__(self, order: DataOrder, micro_batches: int):
        self.order = order.clone()
        self.count = micro_batches

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        order = self.order.clone()
        for _ in range(self.count):
            epoch, start = order.next_global()
            yield epoch, start, order.local_array(epoch, start), order.pad_length(epoch, start)


class _Reader:
    """A map-style dataset whose item is a whole micro-batch: ``(epoch, start, indices, pad)`` in,
    ``{name: tensor, "_ref": (epoch, start)}`` out (read in a worker, sequence arrays cut to ``pad``)."""

    def __init__(self, files: dict[str, RowFile], seq_arrays: tuple[str, ...]):
        self.files, self.seq = files, seq_arrays

    def __len__(self) -> int:
        return len(self.files["labels"])

    def __getitem__(self, item: tuple[int, int, Any, int | None]) -> dict[str, Any]:
        import numpy as np
        import torch

        epoch, start, idx, pad = item
        out: dict[str, Any] = {}
        for name, f in self.files.items():
            rows = f.take(idx)
            if pad is not None and name in self.seq:
                rows = np.ascontiguousarray(rows[:, :pad])
            out[name] = torch.from_numpy(rows)
        out["_ref"] = (epoch, start)
        return out
