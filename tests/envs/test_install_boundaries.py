"""What an experiment's install may touch (toolkit.envs.install): the caller's secrets stay out of an sdist's build
script, and one environment's files never reach another, nor are reused once changed. Real uv, real venvs, real
packages made in the test (tests/envs/packages.py), installed offline from a folder; the kernel's own packages
(ipykernel, mlflow-skinny, from PyPI) are left out of these installs: the lab's kernel provides them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.envs import packages
from toolkit.envs import install, integrity, spec

SECRETS = {
    "PULUMI_CONFIG_PASSPHRASE": "pulumi-passphrase-lab-test",
    "GITHUB_TOKEN": "ghp_labtest0000000000000000000000000000",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-lab-test",
}


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A find-links folder as the only index (the user's own uv settings, which lab passes to uv), and installs
    without the kernel's packages from PyPI."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("UV_FIND_LINKS", str(links))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setattr(install, "kernel_packages", lambda: [])
    return links


def requirements(folder: Path, text: str) -> spec.Spec:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "requirements.txt").write_text(text)
    found = spec.find(folder)
    assert found is not None
    return found


def installed(root: Path, found: spec.Spec, cache: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """`python -m toolkit.envs.install` as a host runs it (in this process), its JSON answer."""
    code = install.main(["--spec", spec.encode(found), "--root", str(root), "--cache", str(cache)])
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, answer
    return answer


def test_an_sdists_build_script_never_sees_the_callers_secrets(offline, tmp_path, monkeypatch, capsys):
    seen = tmp_path / "seen-by-build.json"
    build = f"import json, os\nopen({str(seen)!r}, 'w').write(json.dumps(dict(os.environ)))"
    packages.sdist(offline, "leaky", "1.0", build)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LAB_PASS_ENV", "")
    found = requirements(tmp_path / "exp", "leaky==1.0\n")
    answer = installed(tmp_path / "envs", found, tmp_path / "cache", capsys)
    assert answer["installed"] is True
    environ = json.loads(seen.read_text())  # the build script ran, with uv's environment
    assert "PATH" in environ and environ.get("HOME") == str(Path.home())
    leaked = {name for name, value in SECRETS.items() if name in environ or value in json.dumps(environ)}
    assert not leaked, f"the build script saw {sorted(leaked)}"


def test_an_edit_in_one_environment_reaches_neither_the_next_nor_its_own_reuse(offline, tmp_path, capsys):
    packages.wheel(offline, "tinypkg", "1.0", "WHO = 'the wheel'\n")
    found, cache = requirements(tmp_path / "exp", "tinypkg==1.0\n"), tmp_path / "cache"
    first = installed(tmp_path / "a", found, cache, capsys)
    module = Path(integrity.site_packages(Path(first["path"]) / "venv")[0]) / "tinypkg" / "__init__.py"
    assert module.read_text() == "WHO = 'the wheel'\n"
    module.write_text("WHO = 'a trial that edited env A'\n")  # in place: a hardlinked file would change everywhere

    second = installed(tmp_path / "b", found, cache, capsys)  # a fresh environment, same requirements, same cache
    assert second["hash"] == first["hash"] and second["installed"] is True
    fresh = integrity.site_packages(Path(second["path"]) / "venv")[0] / "tinypkg" / "__init__.py"
    assert fresh.read_text() == "WHO = 'the wheel'\n", "env A's edit reached env B through uv's cache"
    assert module.stat().st_nlink == 1 and fresh.stat().st_nlink == 1  # copies, not the cache's file

    again = installed(tmp_path / "a", found, cache, capsys)  # env A is not reused as it is: installed anew
    assert again["installed"] is True
    assert module.read_text() == "WHO = 'the wheel'\n"
    assert installed(tmp_path / "a", found, cache, capsys)["installed"] is False  # untouched since: reused


def test_a_dropped_pth_file_is_caught_too(offline, tmp_path, capsys):
    packages.wheel(offline, "tinypkg", "1.0", "")
    found, cache = requirements(tmp_path / "exp", "tinypkg==1.0\n"), tmp_path / "cache"
    first = installed(tmp_path / "a", found, cache, capsys)
    site = integrity.site_packages(Path(first["path"]) / "venv")[0]
    (site / "zz-evil.pth").write_text("import os\n")  # run by every start of the environment's Python
    assert installed(tmp_path / "a", found, cache, capsys)["installed"] is True
    assert not (site / "zz-evil.pth").exists()
