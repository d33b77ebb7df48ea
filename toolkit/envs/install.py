"""Install (or find) an experiment's environment on this host: `python -m toolkit.envs.install --spec SPEC`.

Runs with the lab's Python, as the user trials run as. The environment is a venv in ROOT/<hash> made with uv from
the spec (a requirements.txt: `uv pip install -r`; a pyproject.toml with its uv.lock: `uv sync --frozen`), plus
what a trial's kernel needs (ipykernel, mlflow-skinny at the lab's version, the lab's toolkit on its path), with a
Jupyter kernel `lab-env-<hash12>` in the user's Jupyter folder. The venv is layered on the lab's kernel: the lab's
Python's site-packages come after the venv's own on its path, so what the lab's kernel has stays importable and
what the spec installs wins. A venv already there and verified (its marker's digest of its files still matches,
toolkit.envs.integrity) is not installed again; one whose files changed since is installed anew. Installs of one
environment are serialized by a lock.

uv runs with an allow-listed environment (toolkit.environment.for_installs: not the caller's secrets, which an
sdist's build script would see) and copies packages out of its cache (UV_LINK_MODE=copy): a hardlink would share
one file between the cache and every environment made from it, so an edit in one would reach the next.

With --imports, the notebook's modules are then imported in the venv (toolkit.envs.imports), with a kernel's
environment: one it lacks, or one whose import fails, is an error. Prints one JSON line: hash, kernel, python,
path, installed (false when it was there), seconds; or `{"error": ..., "hint": ...}` (one line: what, and uv's
reason) with exit 1.

ROOT: --root, else the worker's `envs_dir` (/etc/lab/worker.json), else $LAB_HOME/envs. uv's cache: --cache,
else the worker's `envs_cache`, else uv's own (UV_CACHE_DIR or ~/.cache/uv); kept across `up`s either way.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit import environment, proc
from toolkit.envs import imports as notebook_imports
from toolkit.envs import integrity
from toolkit.envs import spec as envspec
from toolkit.errors import LabError

WORKER_JSON = Path("/etc/lab/worker.json")
MARKER = "lab-env.json"
INSTALL_TIMEOUT_S = 3600.0
IMPORTS_TIMEOUT_S = 600.0  # importing the notebook's modules once (a cold torch on a fresh disk takes a while)
# The modules a trial's kernel imports from the environment (checked before an environment is reused).
KERNEL_MODULES = ("ipykernel", "mlflow")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BOX = re.compile("^[\\s\u00d7╰─▶│├┬┴╭╮╯•|]+")


@dataclass(frozen=True)
class Installed:
    digest: str
    kernel: str
    python: str
    path: Path
    installed: bool
    seconds: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "hash": self.digest,
                "kernel": self.kernel,
                "python": self.python,
                "path": str(self.path),
                "installed": self.installed,
                "seconds": round(self.seconds, 2),
            }
        )


def kernel_packages() -> list[str]:
    """What a trial's kernel needs besides the user's requirements: ipykernel, and MLflow's client at the lab's
    version (the notebook contract's logging)."""
    return ["ipykernel", f"mlflow-skinny=={lab_mlflow_version()}"]


def lab_mlflow_version() -> str:
    for name in ("mlflow-skinny", "mlflow"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    raise LabError("the lab's Python has no MLflow", hint="configure the host with `lab up` first")


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def base_python() -> str:
    """The interpreter the lab's venv was made from: environments are made from the same one."""
    return getattr(sys, "_base_executable", None) or sys.executable


def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if not found:
        raise LabError("uv is not installed in the lab's Python", hint="configure the host again with `lab up`")
    return found


def defaults() -> tuple[Path, Path | None]:
    """ROOT and uv's cache when not given: the worker's (worker.json), else $LAB_HOME/envs and uv's own cache."""
    if WORKER_JSON.is_file():
        worker = json.loads(WORKER_JSON.read_text())
        if worker.get("envs_dir"):
            cache = worker.get("envs_cache")
            return Path(worker["envs_dir"]), Path(cache) if cache else None
    from toolkit.config import paths

    return paths.lab_home() / "envs", None


def uv_env(cache: Path | None) -> dict[str, str]:
    """uv's environment: the allow-list (toolkit.environment.for_installs), never the caller's whole shell, and
    packages copied out of the cache, never hardlinked into the environment."""
    env = {**environment.for_installs(), "NO_COLOR": "1", "UV_NO_PROGRESS": "1", "UV_PYTHON_DOWNLOADS": "never"}
    env["UV_LINK_MODE"] = "copy"
    env.setdefault("UV_SYSTEM_CERTS", "1")  # the host's CA store, as Debian's pip uses it
    env.pop("VIRTUAL_ENV", None)
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    if cache is not None:
        env["UV_CACHE_DIR"] = str(cache)
    return env


def reason(output: str) -> str:
    """uv's error as one line: its message lines without the drawing characters, joined."""
    lines = []
    for raw in _ANSI.sub("", output).splitlines():
        line = _BOX.sub("", raw).strip().removeprefix("error: ").removeprefix("cause: ").removeprefix("Caused by: ")
        if line and not line.startswith(("Using ", "Resolved ", "Prepared ", "Installed ", "Audited ", "warning:")):
            lines.append(line)
    text = ": ".join(line.rstrip(":") for line in lines) or "uv gave no reason"
    return text if len(text) <= 600 else text[:597] + "..."


def ensure(spec: envspec.Spec, root: Path, cache: Path | None) -> Installed:
    """The environment of `spec` on this host: found when there and verified, else installed."""
    started = time.monotonic()
    extra = kernel_packages()
    digest = envspec.env_hash(spec, python_version(), extra)
    folder = root / digest
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{digest}.lock"):
        installed = not _verified(folder, digest)
        if installed:
            _install(spec, folder, extra, cache)
        _finish(folder, digest, installed)
    return Installed(
        digest, envspec.kernel_name(digest), python_version(), folder, installed, time.monotonic() - started
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def venv_python(folder: Path) -> Path:
    return folder / "venv" / "bin" / "python"


def _verified(folder: Path, digest: str) -> bool:
    """Whether the environment is there, complete (its marker is written last), made of the files it was installed
    with (toolkit.envs.integrity) and imports the kernel's modules."""
    marker = folder / MARKER
    if not marker.is_file() or not venv_python(folder).exists():
        return False
    try:
        written = json.loads(marker.read_text())
    except (ValueError, OSError):
        return False
    if not isinstance(written, dict) or written.get("hash") != digest:
        return False
    if written.get("files") != integrity.digest(folder / "venv"):
        return False  # changed since it was installed (a trial's code can write there): installed anew
    probe = "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))"
    ran = proc.run(
        [venv_python(folder), "-c", probe, *KERNEL_MODULES], check=False, timeout=60, env=environment.for_kernels()
    )
    return ran.returncode == 0


def _install(spec: envspec.Spec, folder: Path, extra: list[str], cache: Path | None) -> None:
    if folder.exists():
        shutil.rmtree(folder)  # a broken or half-made environment
    source = folder / "spec"
    source.mkdir(parents=True)
    for name, text in spec.files.items():
        (source / name).write_text(text, encoding="utf-8")
    uv, env, python = uv_binary(), uv_env(cache), venv_python(folder)
    _uv(spec, [uv, "venv", "--quiet", "--python", base_python(), folder / "venv"], env)
    if spec.kind == envspec.KIND_REQUIREMENTS:
        _uv(spec, [uv, "pip", "install", "--python", python, "-r", source / envspec.REQUIREMENTS, *extra], env)
        return
    env = {**env, "UV_PROJECT_ENVIRONMENT": str(folder / "venv")}
    _uv(spec, [uv, "sync", "--frozen", "--no-install-project", "--project", source, "--python", python], env)
    present = {d.metadata["Name"].lower() for d in importlib.metadata.distributions(path=[_site_packages(folder)])}
    missing = [p for p in extra if not _provided(p, present)]
    if missing:
        _uv(spec, [uv, "pip", "install", "--python", python, *missing], env)


def _provided(requirement: str, present: set[str]) -> bool:
    """Whether the lock already brings what `requirement` gives the kernel (its own MLflow counts as MLflow's)."""
    name = re.split(r"[=<>!~\[ ]", requirement, maxsplit=1)[0].lower()
    if name == "mlflow-skinny":
        return bool({"mlflow", "mlflow-skinny"} & present)
    return name in present


def _uv(spec: envspec.Spec, argv: Sequence[str | Path], env: dict[str, str]) -> None:
    ran = proc.run(argv, check=False, timeout=INSTALL_TIMEOUT_S, env=env)
    if ran.returncode != 0:
        raise LabError(
            f"cannot install the sweep's environment ({spec.label}): {reason(ran.stderr or ran.stdout)}",
            hint=f"fix {spec.source} and dispatch again",
        )


def _site_packages(folder: Path) -> str:
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    ran = proc.run([venv_python(folder), "-c", code], timeout=60, env=environment.for_kernels())
    return ran.stdout.strip()


def _finish(folder: Path, digest: str, installed: bool) -> None:
    """What is cheap to write every time (the lab's toolkit on the venv's path, the kernel), then the marker of a
    new install (written last: an environment without it is made again)."""
    lib = folder / "lab-lib"  # the lab's toolkit alone (not what sits beside it: a checkout, the lab's venv)
    lib.mkdir(exist_ok=True)
    link, toolkit_dir = lib / "toolkit", Path(__file__).resolve().parents[1]
    if not link.is_symlink() or link.readlink() != toolkit_dir:
        link.unlink(missing_ok=True)
        link.symlink_to(toolkit_dir, target_is_directory=True)
    # The lab's toolkit, then the lab's kernel's packages (with their own .pth files), after the venv's own: one
    # file, so the order holds (Python reads a .pth's lines in order, after the venv's site-packages).
    layered = "".join(f"import site; site.addsitedir({path!r})\n" for path in lab_site_dirs())
    _write(Path(_site_packages(folder)) / "lab-toolkit.pth", f"{lib}\n{layered}")
    kernels = Path(_jupyter_data_dir()) / "kernels" / envspec.kernel_name(digest)
    kernels.mkdir(parents=True, exist_ok=True)
    kernel = {
        # `-m ipykernel`, not `-m ipykernel_launcher`: the slots' runner forks kernels of its own Python from a warm
        # process, and a venv's python resolves to the same interpreter as the lab's; this one is always started anew
        "argv": [str(venv_python(folder)), "-m", "ipykernel", "-f", "{connection_file}"],
        "display_name": f"Python (lab env {digest[:12]})",
        "language": "python",
        "metadata": {"lab": {"env": digest}},
    }
    _write(kernels / "kernel.json", json.dumps(kernel, indent=1) + "\n")
    if installed:
        files = integrity.digest(folder / "venv")
        marker = {"hash": digest, "python": python_version(), "made": time.time(), "files": files}
        _write(folder / MARKER, json.dumps(marker) + "\n")


def lab_site_dirs() -> list[str]:
    """The lab's Python's site-packages (and those it sees itself, when it is layered too): what an environment
    sees after its own packages."""
    import site
    import sysconfig

    found = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    return [path for path in dict.fromkeys(found) if Path(path).is_dir()]


def check_imports(spec: envspec.Spec, folder: Path, modules: Sequence[str]) -> None:
    """Import the notebook's top-level `modules` with the environment's Python; LabError (one line: which module,
    which file to add it to) when one is missing or fails to import."""
    if not modules:
        return
    ran = proc.run(
        [venv_python(folder), "-c", notebook_imports.PROBE, *modules],
        check=False,
        timeout=IMPORTS_TIMEOUT_S,
        env=environment.for_kernels(),  # the packages' import-time code: as untrusted as a trial's
    )
    answer: dict = {}
    for line in reversed(ran.stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            break
    if ran.returncode != 0 or not isinstance(answer, dict) or "missing" not in answer:
        raise LabError(f"cannot import the notebook's modules in its environment: {reason(ran.stderr or ran.stdout)}")
    where = _add_to(spec)
    missing, failed = list(answer["missing"]), dict(answer["failed"])
    if missing:
        named = ", ".join(repr(name) for name in missing)
        raise LabError(
            f"the notebook imports {named}, which neither {spec.label} nor the lab's kernel provides: no trial was run",
            hint=f"add the package{'s' * (len(missing) > 1)} that provide{'s' * (len(missing) == 1)} {named} to "
            f"{where} and dispatch again",
        )
    if failed:
        name, error = next(iter(failed.items()))
        raise LabError(
            f"the notebook's `import {name}` fails in its environment ({error}): no trial was run",
            hint=f"pin versions that fit together in {where} (its packages come before the lab's kernel's)",
        )


def _add_to(spec: envspec.Spec) -> str:
    """The file a package is added to: the requirements.txt, or the pyproject.toml beside the lock (then locked)."""
    if spec.kind == envspec.KIND_REQUIREMENTS:
        return spec.source
    return f"{Path(spec.source).with_name(envspec.PYPROJECT)} (then `uv lock`)"


def _jupyter_data_dir() -> str:
    try:
        from jupyter_core.paths import jupyter_data_dir

        return jupyter_data_dir()
    except ImportError:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return os.environ.get("JUPYTER_DATA_DIR") or str(Path(base) / "jupyter")


def _write(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.envs.install", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the environment's files (toolkit.envs.spec.encode)")
    parser.add_argument("--source", default="the sweep", help="where the files came from (for messages)")
    parser.add_argument("--root", type=Path, help="the folder of the environments")
    parser.add_argument("--cache", type=Path, help="uv's cache")
    parser.add_argument("--imports", default="", help="the notebook's top-level modules, comma-separated: imported")
    args = parser.parse_args(argv)
    root, cache = defaults()
    try:
        spec = envspec.decode(args.spec, args.source)
        done = ensure(spec, args.root or root, args.cache or cache)
        check_imports(spec, done.path, [name for name in args.imports.split(",") if name])
    except LabError as error:
        print(json.dumps({"error": error.message, "hint": error.hint}))
        return 1
    print(done.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
