"""glip.utils.fs.atomic_write_text: the one atomic text writer (checkpoints' LAST file,
pseudo-label parts, evaluation reports, detect/caption outputs)."""

from __future__ import annotations

import os

import pytest

from glip.utils.fs import atomic_write_text


def test_writes_the_text_and_creates_the_folder(tmp_path):
    path = tmp_path / "a" / "b.json"
    assert atomic_write_text(path, "{}\n") == path
    assert path.read_text(encoding="utf-8") == "{}\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "LAST"
    atomic_write_text(path, "old")

    def fail(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["LAST"]
