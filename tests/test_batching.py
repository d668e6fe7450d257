"""Padding-aware batching (``pad_to=bucket``) and the streaming path (``data_loading=stream``).

The order and padding logic is checked on its own (bucket boundaries, the length-grouped order, rank
slices, resume positions); the trainer is checked end to end through the real CLI on a tiny token
recipe (``tests/token_fixture.py``): the same weights whether the split is in memory or streamed,
whether or not a run was interrupted and resumed, and tokens/s counting real tokens only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ampflow.cli import main
from ampflow.config import ConfigError, RunConfig
from ampflow.data.batching import (
    DataOrder,
    Position,
    bucket_length,
    default_buckets,
    epoch_permutation,
    length_grouped_order,
)
from ampflow.data.loading import STREAM_SHARE, TrainData, choose_loading
from ampflow.data.rows import RowFile, sequence_extent
from ampflow.engine.precision import make_policy
from tests import token_fixture
from tests.recipes_fixture import NAME as TINY_BLOBS
from tests.recipes_fixture import write_dataset as write_blobs

torch.set_num_threads(1)
CPU = torch.device("cpu")
BUCKETS = (16, 32, 48, 64)


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("AMPFLOW_TRACKING", "off")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return token_fixture.write_dataset(tmp_path_factory.mktemp("tokens") / "data")


def train(data: Path, out: Path, *extra: str, recipe: str = token_fixture.NAME) -> int:
    return main(["train", "--recipe", recipe, "--data", str(data), "--out", str(out), *extra])


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def train_data(data: Path, precision: str = "32-true", **settings) -> TrainData:
    config = RunConfig(recipe=token_fixture.NAME, pad_to="bucket", **settings)
    return TrainData(data, config, token_fixture.tiny_tokens(), CPU, make_policy(precision, "cpu"))


# -- the order and the padding -------------------------------------------------------------------


def test_bucket_boundaries():
    assert default_buckets(64) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert default_buckets(40, 16) == (16, 32, 40) and default_buckets(20, 16) == (16, 20)
    cases = {1: 16, 16: 16, 17: 32, 32: 32, 33: 48, 48: 48, 49: 64, 64: 64, 70: 64}
    assert {n: bucket_length(n, BUCKETS) for n in cases} == cases
    # the length of a right-padded row is its last non-zero position + 1, a zero id inside included
    rows = np.array([[5, 0, 7, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert sequence_extent(rows).tolist() == [3, 0, 5]


def test_length_grouped_order_groups_lengths_and_is_seeded():
    lengths = np.random.default_rng(3).integers(1, 65, size=1000)
    order = length_grouped_order(0, 2, lengths, batch=10, mega=5)
    assert sorted(order.tolist()) == list(range(1000))  # a permutation: every sample once
    assert np.array_equal(order, length_grouped_order(0, 2, lengths, batch=10, mega=5))
    assert not np.array_equal(order, length_grouped_order(0, 3, lengths, batch=10, mega=5))
    # every batch is a run of one sorted mega-batch of the epoch's permutation: the same samples
    perm = epoch_permutation(0, 2, 1000)
    megas = [set(perm[i : i + 50].tolist()) for i in range(0, 1000, 50)]
    batches = order.reshape(100, 10)
    assert all(any(set(b.tolist()) <= m for m in megas) for b in batches)
    # grouped by length: far less padding than the plain permutation's batches
    padded = sum(bucket_length(lengths[b].max(), BUCKETS) for b in batches)
    plain = sum(bucket_length(lengths[b].max(), BUCKETS) for b in perm.reshape(100, 10))
    assert padded < 0.8 * plain
    # and the batches are shuffled, not in mega-batch order (batch 0 would be the shortest)
    assert [lengths[b].max() for b in batches[:5]] != sorted(lengths[b].max() for b in batches[:5])


def test_rank_slices_partition_the_global_order_with_one_pad_length():
    lengths = np.random.default_rng(1).integers(1, 65, size=100)
    single = DataOrder(100, 8, 0, 0, 1, CPU, Position(), lengths, BUCKETS)
    ranks = [DataOrder(100, 8, 0, r, 2, CPU, Position(), lengths, BUCKETS) for r in range(2)]
    seen: list[int] = []
    for _ in range(12):  # the 12 full batches of epoch 0 (96 of 100 samples)
        e, s = single.next_global()
        assert [r.next_global() for r in ranks] == [(e, s), (e, s)]
        parts = [r.local_array(e, s) for r in ranks]
        assert len(parts[0]) == len(parts[1]) == 4
        assert np.array_equal(np.concatenate(parts), single.global_indices(e, s))
        assert torch.equal(torch.cat([r.local_indices(e, s) for r in ranks]), single.local_indices(e, s))
        # every rank pads to the global batch's bucket: one shape per step on every rank
        assert ranks[0].pad_length(e, s) == ranks[1].pad_length(e, s) == single.pad_length(e, s)
        assert single.pad_length(e, s) == bucket_length(lengths[single.global_indices(e, s)].max(), BUCKETS)
        seen.extend(np.concatenate(parts).tolist())
    assert len(set(seen)) == 96 and set(seen) <= set(range(100))
    assert single.next_global() == (1, 0)  # drop-last, then the next epoch


def test_resume_position_replays_exactly_the_remaining_batches():
    lengths = np.random.default_rng(2).integers(1, 65, size=100)
    straight = DataOrder(100, 8, 5, 1, 2, CPU, Position(), lengths, BUCKETS)
    batches = [straight.next_global() for _ in range(20)]  # crosses into epoch 1
    served = [(straight.local_array(e, s).tolist(), straight.pad_length(e, s)) for e, s in batches]
    saved = Position(7, *batches[6])  # a checkpoint after 7 micro-batches holds the next position
    saved.index += 8
    resumed = DataOrder(100, 8, 5, 1, 2, CPU, saved, lengths, BUCKETS)
    rest = [resumed.next_global() for _ in range(13)]
    assert rest == batches[7:]
    assert [(resumed.local_array(e, s).tolist(), resumed.pad_length(e, s)) for e, s in rest] == served[7:]


def test_pad_to_max_is_the_plain_permutation_at_full_width(data):
    td = TrainData(data, RunConfig(recipe=token_fixture.NAME, pad_to="max"), token_fixture.tiny_tokens(), CPU,
                   make_policy("32-true", "cpu"))  # fmt: skip
    order = td.make_order(16, 0, 0, 1, Position())
    assert td.pad_lengths() == [None] and not order.bucketing
    assert np.array_equal(order.epoch_order(0), epoch_permutation(0, 0, 256))
    inputs, labels = td.fetch(order.next_global())
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape == (16, 64)
    assert torch.equal(
        labels, torch.from_numpy(np.load(data / "train" / "labels.npy")[epoch_permutation(0, 0, 256)[:16]])
    )


def test_bucketed_batches_are_the_same_rows_cut_to_the_bucket_for_every_precision(data):
    ids = np.load(data / "train" / "input_ids.npy")
    served = {}
    for precision in ("32-true", "bf16-mixed", "bf16-true"):
        td = train_data(data, precision)
        order = td.make_order(16, 0, 0, 1, Position())
        served[precision] = []
        for _ in range(20):
            e, s = order.next_global()
            inputs, _ = td.fetch((e, s))
            idx = order.local_array(e, s)
            pad = order.pad_length(e, s)
            assert inputs["input_ids"].shape == (16, pad) and pad in default_buckets(64)
            assert np.array_equal(inputs["input_ids"].numpy(), ids[idx, :pad])
            assert not ids[idx, pad:].any()  # only padding was cut off
            served[precision].append((e, s, idx.tolist(), pad))
    assert served["32-true"] == served["bf16-mixed"] == served["bf16-true"]
    assert len({p for *_, p in served["32-true"]}) > 1  # the fixture's lengths hit several buckets


def test_bucketing_needs_sequence_arrays(tmp_path):
    blobs = write_blobs(tmp_path / "blobs")
    assert train(blobs, tmp_path / "run", "--set", "pad_to=bucket", recipe=TINY_BLOBS) == 2
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match="pad_to"):
        RunConfig(pad_to="shortest")


# -- the streaming path --------------------------------------------------------------------------


def test_auto_choice_streams_what_would_take_over_half_the_free_memory(data):
    assert choose_loading("auto", 600, 1000) == "stream"
    assert choose_loading("auto", int(STREAM_SHARE * 1000), 1000) == "memory"
    assert choose_loading("auto", 10**12, None) == "memory"  # unknown free memory: as before
    assert choose_loading("stream", 1, 10**12) == "stream" and choose_loading("memory", 10**12, 1) == "memory"
    with pytest.raises(ConfigError, match="data_loading"):
        RunConfig(data_loading="disk")
    assert train_data(data).mode == "memory"  # a few hundred KB against gigabytes free


def test_row_reads_match_the_memory_map(data):
    path = data / "train" / "input_ids.npy"
    mapped = np.load(path, mmap_mode="r")
    rows = RowFile(path)
    idx = np.array([200, 3, 4, 5, 0, 255, 17])
    assert rows.shape == mapped.shape and rows.dtype == mapped.dtype
    assert np.array_equal(rows.take(idx), mapped[idx])
    assert np.array_equal(rows.read_range(250, 300), mapped[250:])
    with pytest.raises(IndexError):
        rows.take([256])


@pytest.mark.parametrize("workers", [0, 1])
def test_stream_serves_the_memory_paths_batches_from_a_resume_position(data, workers):
    """From a mid-epoch position (a resume), through the next epoch: the same tensors."""
    served = {}
    for mode in ("memory", "stream"):
        td = train_data(data, data_loading=mode, data_workers=workers)
        order = td.make_order(16, 0, 0, 1, Position(3, 0, 48))
        td.start(20)
        refs = [order.next_global() for _ in range(20)]  # 16 batches in epoch 0: crosses into epoch 1
        served[mode] = [td.fetch(r) for r in refs]
        td.close()
    assert td.mode == "stream"
    for (a, la), (b, lb) in zip(served["memory"], served["stream"], strict=True):
        assert a.keys() == b.keys() and torch.equal(la, lb)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_stream_refuses_to_serve_out_of_order(data):
    td = train_data(data, data_loading="stream", data_workers=0)
    td.make_order(16, 0, 0, 1, Position())
    td.start(4)
    with pytest.raises(RuntimeError, match="served micro-batch"):
        td.fetch((0, 16))  # the stream's first batch is (0, 0)


# -- end to end through ampflow train ------------------------------------------------------------


def test_stream_and_resume_train_the_same_weights(data, tmp_path):
    """In memory straight through, streamed straight through, and streamed with a kill-free
    interruption at step 3 and a resume: the same micro-batches, so bit-identical weights."""
    # a constant learning rate without warm-up: the 3-step run's schedule is the 6-step run's prefix
    common = ("--set", "max_steps=6", "--set", "warmup_steps=1", "--set", "lr_schedule=constant",
              "--set", "lr_warmup_steps=0")  # fmt: skip
    assert train(data, tmp_path / "mem", *common, "--set", "data_loading=memory") == 0
    assert (
        train(data, tmp_path / "st", *common, "--set", "data_loading=stream", "--set", "data_workers=1") == 0
    )
    part = tmp_path / "part"
    assert train(data, part, *common, "--set", "max_steps=3", "--set", "data_loading=stream",
                 "--set", "data_workers=0") == 0  # fmt: skip
    assert train(data, part, "--resume", *common, "--set", "data_loading=stream") == 0
    assert (
        result(tmp_path / "mem")["data_loading"] == "memory"
        and result(tmp_path / "st")["data_loading"] == "stream"
    )
    assert result(part)["resumed_from_step"] == 3
    ref = weights(tmp_path / "mem")
    for run in (tmp_path / "st", part):
        assert all(torch.equal(ref[k], v) for k, v in weights(run).items())


def test_tokens_per_s_counts_real_tokens_of_the_timed_window(data, tmp_path):
    run = tmp_path / "tok"
    assert train(data, run, "--set", "max_steps=6", "--set", "warmup_steps=2") == 0
    r = result(run)
    m = r["metrics"]
    assert r["config"]["pad_to"] == "bucket" and m["timed_steps"] == 4
    mask = np.load(data / "train" / "attention_mask.npy")
    lengths = mask.sum(1)
    order = DataOrder(256, 16, 0, 0, 1, CPU, Position(), sequence_extent(mask), BUCKETS)
    batches = [order.next_global() for _ in range(6)][2:]  # the 4 timed steps
    real = int(sum(lengths[order.global_indices(e, s)].sum() for e, s in batches))
    padded = sum(order.pad_length(e, s) * 16 for e, s in batches)
    assert m["tokens_per_s"] * m["timed_wall_s"] == pytest.approx(real, rel=1e-9)
    assert real < padded  # the padded positions computed on are not counted
