"""Tiny real packages for install tests, made in the test and installed offline (a `--find-links` folder given to uv
through UV_FIND_LINKS and UV_NO_INDEX, the user's own uv settings, which lab passes on).

- `wheel(folder, name, version, source)`: a pure-Python wheel (PEP 427: the module, METADATA, WHEEL and a RECORD
  with each file's sha256), as any build backend writes it.
- `sdist(folder, name, version, build_code)`: an sdist (PEP 517/625: `name-version.tar.gz` with PKG-INFO and a
  pyproject.toml) whose build backend is in the tree (`backend-path`, `requires = []`: nothing to download), and
  runs `build_code` when uv builds it, as a setup.py would: the code a package's author runs on the installing host.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path


def _metadata(name: str, version: str) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel_bytes(name: str, version: str, source: str) -> tuple[str, bytes]:
    """A wheel's file name and bytes: one module `name` holding `source`."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{info}/METADATA": _metadata(name, version).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: lab-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", record)
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()


def wheel(folder: Path, name: str, version: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    file_name, data = wheel_bytes(name, version, source)
    (folder / file_name).write_bytes(data)
    return folder / file_name


BACKEND = '''\
"""An in-tree PEP 517 backend: runs the package author's build code, then writes a one-module wheel."""
import base64, hashlib, io, os, zipfile

NAME, VERSION, SOURCE = {name!r}, {version!r}, {source!r}


def _build_code():
{build_code}


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _build_code()
    info = f"{{NAME}}-{{VERSION}}.dist-info"
    files = {{
        f"{{NAME}}/__init__.py": SOURCE.encode(),
        f"{{info}}/METADATA": f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n".encode(),
        f"{{info}}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: lab-tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    def digest(data):
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record = "".join(f"{{p}},{{digest(d)}},{{len(d)}}\\n" for p, d in files.items()) + f"{{info}}/RECORD,,\\n"
    file_name = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, file_name), "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{{info}}/RECORD", record)
    return file_name
'''


def sdist(folder: Path, name: str, version: str, build_code: str, source: str = "") -> Path:
    """`name-version.tar.gz` in `folder`; `build_code` (statements) runs when it is built into a wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    indented = "\n".join("    " + line for line in build_code.splitlines()) or "    pass"
    base = f"{name}-{version}"
    files = {
        "PKG-INFO": _metadata(name, version),
        "pyproject.toml": (
            f'[project]\nname = "{name}"\nversion = "{version}"\n\n'
            '[build-system]\nrequires = []\nbuild-backend = "lab_test_backend"\nbackend-path = ["."]\n'
        ),
        "lab_test_backend.py": BACKEND.format(name=name, version=version, source=source, build_code=indented),
    }
    path = folder / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for relative, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(f"{base}/{relative}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path
