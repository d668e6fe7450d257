"""Atomic writes leave files that follow the umask, like any other file (issue 12, part 4): a dataset a
prep pod or CI wrote must be readable by the training image's user and the Airflow worker."""

from __future__ import annotations

import os
import stat

import pytest

from ampflow.io import atomic_write_json, atomic_write_text, umask


@pytest.fixture
def mask():
    """Set the umask for one test and restore it afterwards."""
    before = os.umask(0o022)
    os.umask(before)

    def set_mask(value: int) -> None:
        os.umask(value)

    yield set_mask
    os.umask(before)


@pytest.mark.parametrize(("value", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_follow_the_umask(tmp_path, mask, value, mode):
    mask(value)
    assert umask() == value
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_text(tmp_path / "b.txt", "x")
    for name in ("a.json", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_a_prepared_dataset_is_readable_by_others_under_the_usual_umask(tmp_path, mask):
    from ampflow.config import RunConfig
    from ampflow.steps import Paths, prep

    mask(0o022)
    out = tmp_path / "data"
    prep.run(RunConfig(recipe="mnist-cnn"), Paths.of(out=out), limit=60)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o644
