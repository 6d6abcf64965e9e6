"""drm.base.atomic: an output appears complete or not at all; leftovers of killed writers go."""
import errno
import os

import pytest

from drm.base.atomic import DiskFullError, atomic_dir, atomic_file, clean_stale, write_text


def test_file_is_published_only_when_complete(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            assert tmp.parent == path.parent and tmp.suffix == ".json" and tmp != path
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(path.parent) == ["a.json"]
    with atomic_file(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and os.listdir(path.parent) == ["a.json"]


def test_folder_is_swapped_in_whole(tmp_path):
    out = tmp_path / "zeroshot"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("2")
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(os.listdir(out)) == ["a"] and (out / "a").read_text() == "1"
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(os.listdir(out)) == ["b"] and sorted(os.listdir(tmp_path)) == ["zeroshot"]


def test_leftovers_of_dead_writers_are_removed(tmp_path):
    dead = 2 ** 22 + 12345  # above the usual pid_max
    stale = tmp_path / f".a.parquet.tmp-{dead}-abcdef.parquet"
    stale.write_text("x")
    (tmp_path / f".world.old-{dead}-abcdef").mkdir()
    mine = tmp_path / f".a.parquet.tmp-{os.getpid()}-abcdef.parquet"
    mine.write_text("x")
    assert clean_stale(tmp_path / "a.parquet") == [stale]
    assert mine.exists()
    clean_stale(tmp_path / "world")
    assert sorted(os.listdir(tmp_path)) == [mine.name]


def test_disk_full_says_so_and_where(tmp_path):
    path = tmp_path / "logits.parquet"
    write_text(path, "old")
    with pytest.raises(DiskFullError) as err:
        with atomic_file(path) as tmp:
            tmp.write_text("par")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value) == (f"disk full: no space left on the device holding {tmp_path} while writing {path}; "
                              "free space there and rerun (logits.parquet, if it existed before, is unchanged)")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["logits.parquet"]
