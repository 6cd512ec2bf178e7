"""File-system trouble (a file in the way, no permission, a long name, a full disk, a bad port)
ends in exit status 2 with the path and what to do, never a traceback or a half-written file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

import dermae.data.cache as cache_module
from dermae.cli import _os_error_text
from tests.reliability.common import prepare_args


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a file, not a folder")
    return path


def test_run_dir_that_is_a_file(cli, toy, a_file: Path) -> None:
    root, _ = toy
    for args in (
        prepare_args(root, a_file),  # --run-dir FILE
        ["train", "--set", f"run_dir={a_file}"],
        ["train", "--set", f"run_dir={a_file / 'sub'}"],  # a run dir under a file
    ):
        result = cli(*args)
        assert result.code == 2
        assert "'run_dir'" in result.err and f"{a_file} is a file, not a folder" in result.err


def test_out_or_run_dir_under_a_file_is_a_usage_error(cli, a_file: Path) -> None:
    under = a_file / "out"
    for args in (
        ["evaluate", "--out", under],
        ["export", "--out", under],
        ["predict", "x.jpg", "--model", "m", "--out", under / "p.csv"],
        ["train", "--run-dir", under],
    ):
        result = cli(*args)
        assert result.code == 2
        assert f"{a_file} is a file, so {under}" in result.err


def test_over_long_names(cli, tmp_path: Path) -> None:
    long = tmp_path / ("r" * 300)
    result = cli("train", "--run-dir", long)
    assert result.code == 2 and "over 255 bytes" in result.err
    result = cli("train", "--set", f"run_dir={long}")
    assert result.code == 2
    assert "'run_dir'" in result.err and "300 bytes long, more than the 255" in result.err


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_bad_port_is_a_usage_error(cli, port: str) -> None:
    result = cli("serve", "--model", "m", "--port", port)
    assert result.code == 2 and "argument --port" in result.err and port in result.err


def test_read_only_run_dir(cli, toy, tmp_path: Path, monkeypatch) -> None:
    """A folder that refuses writes: the path and a remedy. Simulated, because tests may run
    as root (where chmod does not stop writes); the real case is below."""
    root, _ = toy
    run_dir = tmp_path / "locked"
    real_mkdir = Path.mkdir

    def refuse(self: Path, *args, **kwargs) -> None:
        if self.is_relative_to(run_dir):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = cli(*prepare_args(root, run_dir))
    assert result.code == 2
    [line] = result.error_lines
    assert line.startswith(f"dermae: error: {run_dir}/")  # the folder it could not make
    assert line.endswith(
        ": Permission denied (make it writable, or set run_dir (--run-dir) / --out to a folder "
        "you can write)"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_run_dir_for_real(cli, toy, tmp_path: Path) -> None:
    root, _ = toy
    run_dir = tmp_path / "locked"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        result = cli(*prepare_args(root, run_dir))
    finally:
        run_dir.chmod(0o700)
    assert result.code == 2 and str(run_dir) in result.err and "Permission denied" in result.err


def test_full_disk_while_reserving_the_cache(cli, toy, tmp_path: Path, monkeypatch) -> None:
    root, _ = toy
    run_dir = tmp_path / "run"

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.os, "posix_fallocate", no_space)
    result = cli(*prepare_args(root, run_dir))
    assert result.code == 2
    assert len(result.error_lines) == 1
    line = result.error_lines[0]
    assert f"no space left on the device of {run_dir / 'data' / 'images.npy'}" in line
    assert "free some space" in line
    assert list((run_dir / "data").glob("*.tmp")) == []  # no images.npy.tmp left behind
    assert not (run_dir / "data" / "info.json").exists()


def test_full_disk_midway_leaves_no_temporary_file(toy, tmp_path: Path, monkeypatch) -> None:
    """A write error after the cache file exists (e.g. the page cache cannot be flushed)."""
    root, truth = toy
    paths = [root / f for f in truth["file"]]
    calls = {"n": 0}
    real = cache_module._load_one

    def fails_third(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(job)

    monkeypatch.setattr(cache_module, "_load_one", fails_third)
    out = tmp_path / "cache" / "images.npy"
    with pytest.raises(cache_module.DataError, match="no space left"):
        cache_module.build_image_cache(paths, 8, out, progress=False)
    assert calls["n"] == 3
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no images.npy(.tmp)


def test_the_cache_file_is_allocated_up_front(tmp_path: Path) -> None:
    """The memory-mapped cache starts sparse; reserving it allocates every block, so writing
    the map later cannot meet a full disk (which would be SIGBUS, not an error)."""
    path = tmp_path / "images.npy.tmp"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(64, 64, 64, 3))
    if os.stat(path).st_blocks * 512 >= os.stat(path).st_size:
        pytest.skip("this file system does not create sparse files")
    cache_module._reserve_disk(path)
    st = os.stat(path)
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate on this platform")
    assert st.st_blocks * 512 >= st.st_size


def test_os_error_text_names_the_path_and_remedy(a_file: Path) -> None:
    err = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(a_file / "x" / "y"))
    assert _os_error_text(err) == (
        f"{a_file / 'x' / 'y'}: Not a directory ({a_file} is a file, not a folder: remove it, "
        "or choose another path)"
    )
    err = OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.safetensors")
    assert _os_error_text(err).startswith("/runs/x/model.safetensors: No space left on device (")
    assert "free some space" in _os_error_text(err)
    err = OSError(errno.ENAMETOOLONG, "File name too long", "/r/" + "n" * 300)
    assert "over 255 bytes" in _os_error_text(err)
    err = OSError(errno.EADDRINUSE, "Address already in use")
    assert _os_error_text(err) == (
        "Address already in use (another program listens on this port: pick another --port)"
    )
    assert _os_error_text(OSError(errno.EIO, "Input/output error")) == "Input/output error"
    assert _os_error_text(FileNotFoundError("run `dermae data prepare` first")) == (
        "run `dermae data prepare` first"
    )
