"""The ssh target shares one connection per host through ControlMaster sockets; a socket's path must fit sun_path
(104 bytes on macOS and the BSDs). ssh makes the master's socket as "<ControlPath>.<16 random characters>" and refuses
a path that does not fit (OpenSSH mux.c muxserver_listen, misc.c unix_listener: "path too long"), so a long
temporary folder (macOS gives each user one under /var/folders/) must not break every command. The last test logs
in to a VM-like host with real ssh from under such a folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.errors import LabError
from toolkit.hosts import ssh as remote


@pytest.fixture
def long_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder as long as macOS's per-user one, set as this process's and its children's."""
    folder = tmp_path / ("t" * max(1, 70 - len(str(tmp_path))))
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return folder


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short temporary folder (pytest's own are too long to keep the sockets), set as TMPDIR."""
    folder = Path(tempfile.mkdtemp(prefix="lab-t", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    yield folder
    shutil.rmtree(folder)


def test_a_short_temporary_folder_keeps_the_sockets(short_tmp: Path) -> None:
    folder = remote._control_dir()
    assert folder == short_tmp / f"lab-ssh-{os.getuid()}"
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_long_temporary_folder_falls_back_to_a_short_one(long_tmp: Path) -> None:
    folder = remote._control_dir()
    assert not folder.is_relative_to(long_tmp)
    assert len(os.fsencode(folder)) + remote.CONTROL_SOCKET_TAIL < remote.SUN_PATH_MAX
    assert folder.stat().st_uid == os.getuid() and folder.stat().st_mode & 0o777 == 0o700


def test_a_link_or_a_file_where_the_folder_goes_is_refused(short_tmp: Path) -> None:
    spot = short_tmp / f"lab-ssh-{os.getuid()}"
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir()
    spot.symlink_to(elsewhere)
    with pytest.raises(LabError, match="not a folder of your own"):
        remote._control_dir()
    spot.unlink()
    spot.write_text("")
    with pytest.raises(LabError, match="not a folder of your own"):
        remote._control_dir()


@pytest.mark.hosts
def test_ssh_from_under_a_long_temporary_folder_logs_in_and_shares_its_connection(
    long_tmp: Path, worker_hosts, tmp_path: Path
) -> None:
    vm = worker_hosts[0]
    access = remote.Access(user=vm.user, key=vm.key, known_hosts=tmp_path / "known_hosts")
    host = remote.Host("worker-1", vm.ip, remote.WORKER)
    argv = access.ssh(host, ["echo", "hello"])
    for _ in range(2):  # the first starts the master; the second goes through its socket
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert ran.returncode == 0 and ran.stdout == "hello\n", ran.stderr
    check = subprocess.run([*argv[: argv.index("--")], "-O", "check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr  # "Master running"
    subprocess.run([*argv[: argv.index("--")], "-O", "exit"], capture_output=True, check=False, timeout=30)
