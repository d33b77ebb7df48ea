"""The README's commands for the local target run verbatim in a fresh copy of the repository, as a newcomer
runs them: the local one of "Two commands", then "A sweep in three commands", then the local commands its text
names (`lab status --local`, `lab backup --local`, `lab sweeps`, `lab sweep show quickstart`), then `lab down`.

How it stays verbatim without a long install:
- **A fresh copy.** The repository's tracked files (`git ls-files`, as they are in this working tree) are
  copied into a temporary folder: what a fresh clone holds, with no `.venv`, no `out/`, no state.
- **The install, run as written, made quick, and honest.** Before the README's line runs, the copy gets a `.venv`
  of its own (`python -m venv`, with pip) into which uv installs the copy's `[project] dependencies` and its
  `local` extra, read from the copy's pyproject.toml (`uv pip install -r pyproject.toml --extra local`): those
  packages and what they need, nothing else; no `.pth` or path leads into this test run's environment, which the
  test checks. uv is this test run's (the `local` extra brings it), its cache the account's own (`UV_CACHE_DIR` if
  set, else `~/.cache/uv` of the account, not the test's fresh HOME), so it outlives the test: warm, the venv is
  hardlinked from it (copied where the cache is on another filesystem) in seconds; cold (a fresh CI machine), uv
  downloads the packages from the index (PyPI, or `UV_INDEX_URL`/`UV_DEFAULT_INDEX` if set; uv reads no pip.conf)
  in well under a minute (its modules are compiled on first import, as in a newcomer's venv, which makes the first
  `lab` commands slower than in this test run's). It uses the system's certificates (`UV_NATIVE_TLS=1`, as pip's
  `cert` does). The README's commands then run unchanged: `python3 -m venv .venv` sets up that venv again, and
  `.venv/bin/pip install -e '.[local]'` finds every dependency already installed and installs only `lab` itself,
  editable from the copy (building it as pip does, with hatchling), in about 20 s instead of minutes. A dependency
  missing from the `local` extra is missing in the copy too, and the command that needs it fails. `python3` is
  this test run's base interpreter (first on PATH), as on CI where one `python3` makes the venv; pip's own
  configuration (its index) is the machine's: the account's `~/.config/pip/pip.conf` or `~/.pip/pip.conf`, if any,
  is copied into the test's HOME. The test checks that the copy's `lab` runs the copy's code, not this checkout's.
- **One command at a time.** The local line is `A && B && C && D`: each command runs verbatim, in order,
  and each must succeed before the next (what `&&` does), so a failure names its command.
- **The venv active.** The sweep's commands say plain `lab`, after `. .venv/bin/activate`: the test puts the
  copy's `.venv/bin` first on PATH and sets VIRTUAL_ENV, which is what activating does.
- **Its own ports.** `lab up --local` takes MLflow's 5000 and Jupyter's 8888, as the README says; another lab
  on the machine (another test run, another developer) may hold them. As root (CI, and the VM-like host
  tests need it anyway) every `lab` command runs in a network namespace of this test's own (`unshare
  --net`, loopback up; each command entered with `nsenter`), so the defaults are free whatever else runs;
  the installs run on the machine's network (pip may fetch the build backend). Without root everything
  uses the machine's network, and a taken port fails `lab up` with the name of who holds it.
- **State.** HOME and LAB_HOME are the test's own (tests/conftest.py's `isolated`), so `~/.lab` is fresh.
- **Always down.** Whatever fails, `lab down` (how the README stops the lab) runs at the end, and no service the
  test started is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
INSTALL_TIMEOUT_S = 900
COMMAND_TIMEOUT_S = 600
STOP_COMMAND = "lab down"
# Local commands the README's text names around those blocks (as `code`): they run too, after the sweep.
INLINE_COMMANDS = ("lab status --local", "lab backup --local", "lab sweeps", "lab sweep show quickstart")


def shell_blocks(title: str) -> list[str]:
    """The ```sh blocks of the README's section `## title`."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert found, f"the README has no section '## {title}'"
    return re.findall(r"^```sh\n(.*?)^```", found.group(1), re.MULTILINE | re.DOTALL)


def commands_of(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip()]


def local_command() -> str:
    blocks = [b for b in shell_blocks("Two commands") if "'.[local]'" in b]
    assert len(blocks) == 1, "'Two commands' has one block that installs '.[local]'"
    [command] = commands_of(blocks[0])
    return command


def sweep_commands() -> list[str]:
    [block] = shell_blocks("A sweep in three commands")
    commands = commands_of(block)
    assert len(commands) == 3, f"'A sweep in three commands' shows {len(commands)} commands"
    return commands


def tracked_files(root: Path) -> list[Path]:
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True)
    return [Path(name) for name in listed.stdout.decode().split("\0") if name]


def fresh_copy(destination: Path) -> Path:
    """The tracked files as they are in this working tree; without git (a CI that unpacks an archive), the tree
    less what .gitignore names."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True, check=False).returncode != 0:
        ignored = [line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()]
        patterns = [line for line in ignored if line and not line.startswith("#")]
        shutil.copytree(ROOT, destination, symlinks=True, ignore=shutil.ignore_patterns(".git", *patterns))
        return destination
    for relative in tracked_files(ROOT):
        source = ROOT / relative
        if not source.exists() and not source.is_symlink():
            continue  # deleted in this working tree, not yet committed
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination / relative, follow_symlinks=False)
    return destination


def prepare_venv(clone: Path) -> None:
    """The copy's own .venv holding what its `.[local]` needs, installed by uv (see the module's docstring)."""
    venv.EnvBuilder(with_pip=True, symlinks=True).create(clone / ".venv")  # as `python3 -m venv`
    uv = Path(sys.executable).with_name("uv")
    assert uv.is_file(), f"no uv beside {sys.executable}: the `local` extra brings it"
    account_cache = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "uv"
    env = {
        **os.environ,
        "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR") or str(account_cache),
        "UV_LINK_MODE": os.environ.get("UV_LINK_MODE") or "hardlink",
        "UV_NATIVE_TLS": os.environ.get("UV_NATIVE_TLS") or "1",
    }
    python = clone / ".venv" / "bin" / "python"
    command = [str(uv), "pip", "install", "--python", str(python), "-r", "pyproject.toml", "--extra", "local"]
    done = subprocess.run(
        command, cwd=clone, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"`{shlex.join(command)}` exited {done.returncode}:\n{done.stderr[-6000:]}"


def sees_only_its_own_packages(shell: Shell) -> None:
    """The copy's Python finds nothing of this test run's environment: no path into it, no package only it has."""
    said = shell.run(".venv/bin/python -c 'import sys; print(*sys.path, sep=chr(10))'")
    ours = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    entries = [Path(entry).resolve() for entry in said.splitlines() if entry]
    leaks = [str(entry) for entry in entries if any(entry.is_relative_to(path) for path in ours)]
    assert not leaks, f"the copy's Python sees this test run's environment: {leaks}"
    said = shell.run(".venv/bin/python -c 'import importlib.util as u; print(u.find_spec(\"pytest\"))'")
    assert said.strip() == "None", f"the copy's Python finds pytest, which `.[local]` does not install: {said}"


def machines_pip_config(home: Path) -> None:
    """The account's own pip configuration (index, find-links), copied into the test's HOME."""
    account_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    for relative in (Path(".config/pip/pip.conf"), Path(".pip/pip.conf")):
        if (account_home / relative).is_file() and account_home != home:
            (home / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(account_home / relative, home / relative)


def python3_first(folder: Path) -> Path:
    """A folder holding `python3`: this test run's base interpreter, the one that made the copy's venv."""
    folder.mkdir()
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    (folder / "python3").symlink_to(base)
    return folder


@dataclass
class Shell:
    """Runs command lines as a user types them (sh -c), in the copy, in the test's network namespace."""

    cwd: Path
    env: dict[str, str]
    prefix: list[str] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)

    def run(self, line: str, *, env: dict[str, str] | None = None, timeout: float = COMMAND_TIMEOUT_S) -> str:
        runs_lab = Path(shlex.split(line)[0]).name == "lab"
        done = subprocess.run(
            [*(self.prefix if runs_lab else []), "sh", "-c", line],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.transcript.append(f"$ {line}\n(exit {done.returncode})\n{done.stdout}{done.stderr}")
        assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{self.tail()}"
        return done.stdout + done.stderr

    def tail(self, chars: int = 6000) -> str:
        return "\n".join(self.transcript)[-chars:]


@pytest.fixture
def network() -> Iterator[list[str]]:
    """The prefix that runs a command in a network namespace of this test's own, or [] where that cannot be."""
    tools = all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip"))
    if os.geteuid() != 0 or not tools:
        yield []
        return
    with subprocess.Popen(
        ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && echo up && exec sleep 3600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as holder:
        try:
            ready = holder.stdout is not None and holder.stdout.readline().strip() == "up"
            yield ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"] if ready else []
        finally:
            holder.kill()


def test_the_readmes_local_commands_run_verbatim_in_a_fresh_copy(tmp_path, isolated, network):
    install_and_up = local_command()
    sweep = sweep_commands()
    assert f"`{STOP_COMMAND}`" in README, "the README says how the lab stops"
    machines_pip_config(isolated)
    clone = fresh_copy(tmp_path / "lab")
    prepare_venv(clone)
    bin_dir = python3_first(tmp_path / "bin")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "200",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    shell = Shell(clone, env, network)
    activated = {"PATH": f"{clone / '.venv' / 'bin'}{os.pathsep}{env['PATH']}", "VIRTUAL_ENV": str(clone / ".venv")}
    run_dir = Path(os.environ["LAB_HOME"]) / "stacks" / "dev" / "run"
    failed = True
    try:
        # Two commands: install, check the machine, and start the lab on this machine.
        for command in install_and_up.split(" && "):
            said = shell.run(command, timeout=INSTALL_TIMEOUT_S)
        assert "http://127.0.0.1:5000" in said and "http://127.0.0.1:8888/lab" in said, shell.tail()
        where = shell.run(".venv/bin/python -c 'import toolkit; print(toolkit.__file__)'")
        assert Path(where.strip()).resolve().is_relative_to(clone.resolve()), f"the copy's lab runs {where}"
        sees_only_its_own_packages(shell)

        # A sweep in three commands, with the venv active: they reach the lab just started.
        up, dispatch, status = sweep
        said = shell.run(up, env=activated)
        assert "http://127.0.0.1:5000" in said, shell.tail()
        trials = int(shlex.split(dispatch)[shlex.split(dispatch).index("--trials") + 1])
        said = shell.run(dispatch, env=activated)
        assert re.search(rf"\b{trials} completed, 0 failed\b", said), shell.tail()
        assert "best run: http://127.0.0.1:5000/" in said, shell.tail()
        said = shell.run(status, env=activated)
        assert re.search(r"mlflow\s.*running\s.*http://127\.0\.0\.1:5000", said), shell.tail()
        assert re.search(r"jupyter\s.*running", said), shell.tail()
        for command in INLINE_COMMANDS:
            assert f"`{command}`" in README, f"the README no longer shows `{command}`: update INLINE_COMMANDS"
            shell.run(command, env=activated)
        failed = False
    finally:
        try:
            said = shell.run(STOP_COMMAND, env=activated)
            assert "the lab is down" in said, shell.tail()
            left = sorted(p.name for p in run_dir.glob("*.json")) if run_dir.is_dir() else []
            assert not left, f"`{STOP_COMMAND}` left services running: {left}"
        except AssertionError:
            if not failed:
                raise
        finally:
            stop_leftovers(run_dir)


def stop_leftovers(run_dir: Path) -> None:
    """Last resort after a failed `lab down`: end the services the copy's lab recorded (same process only)."""
    import psutil

    for record in run_dir.glob("*.json") if run_dir.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError, psutil.Error):
            found = json.loads(record.read_text())
            process = psutil.Process(found["pid"])
            if abs(process.create_time() - found["create_time"]) < 1.0:
                process.kill()
