"""Which requirements a sweep names, and the environment's hash (toolkit.envs.spec), on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.envs import install, spec
from toolkit.envs import sweep as env_sweep
from toolkit.errors import LabError
from toolkit.sweeps.place import SweepPlace

KERNEL = ["ipykernel", "mlflow-skinny==3.17.2"]


def write(folder: Path, requirements: str | None = None) -> Path:
    """A notebook's folder, with `requirements` as its requirements.txt when given."""
    folder.mkdir(parents=True, exist_ok=True)
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return folder


def test_the_hash_follows_the_requirements_the_python_and_the_kernels_packages(tmp_path):
    a = spec.find(write(tmp_path / "a", requirements="termcolor==2.4.0\n"))
    b = spec.find(write(tmp_path / "b", requirements="termcolor==2.4.0\n"))
    c = spec.find(write(tmp_path / "c", requirements="termcolor==2.5.0\n"))
    assert a is not None and b is not None and c is not None
    digest = spec.env_hash(a, "3.11", KERNEL)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert spec.env_hash(b, "3.11", KERNEL) == digest  # same text, elsewhere: the same environment
    assert spec.env_hash(a, "3.11", list(reversed(KERNEL))) == digest
    assert spec.env_hash(c, "3.11", KERNEL) != digest
    assert spec.env_hash(a, "3.12", KERNEL) != digest
    assert spec.env_hash(a, "3.11", ["ipykernel", "mlflow-skinny==3.18.0"]) != digest
    assert spec.kernel_name(digest) == "lab-env-" + digest[:12]


def test_a_lock_wins_over_requirements_and_hashes_both_its_files(tmp_path):
    folder = write(tmp_path / "p", requirements="termcolor\n")
    (folder / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\ndependencies = ["termcolor"]\n')
    (folder / "uv.lock").write_text("version = 1\n")
    found = spec.find(folder)
    assert found is not None and found.kind == spec.KIND_LOCK and set(found.files) == {"pyproject.toml", "uv.lock"}
    before = spec.env_hash(found, "3.11", KERNEL)
    (folder / "uv.lock").write_text("version = 1\n# changed\n")
    assert spec.env_hash(spec.find(folder), "3.11", KERNEL) != before  # type: ignore[arg-type]


def test_a_pyproject_with_dependencies_and_no_lock_is_refused_and_one_without_is_left_alone(tmp_path):
    folder = write(tmp_path / "p")
    (folder / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\ndependencies = ["termcolor"]\n')
    with pytest.raises(LabError, match=r"has no uv\.lock beside it"):
        spec.find(folder)
    (folder / "pyproject.toml").write_text("[tool.ruff]\nline-length = 120\n")
    assert spec.find(folder) is None


def test_the_notebooks_folder_wins_over_the_stack_and_the_stack_serves_the_rest(tmp_path):
    stack_file = tmp_path / "stack-reqs.txt"
    stack_file.write_text("termcolor==2.4.0\n")
    own = write(tmp_path / "own", requirements="termcolor==2.5.0\n")
    bare = write(tmp_path / "bare")
    assert spec.find(own, stack_file).files["requirements.txt"] == "termcolor==2.5.0\n"  # type: ignore[union-attr]
    assert spec.find(bare, stack_file).files["requirements.txt"] == "termcolor==2.4.0\n"  # type: ignore[union-attr]
    assert spec.find(bare, None) is None
    with pytest.raises(LabError, match="lab:requirements names"):
        spec.find(bare, write(tmp_path / "empty"))


REFUSED = [
    ("-r other.txt", "names a file on this machine, which a worker does not have"),
    ("-e .", "names a file on this machine"),
    ("--constraint c.txt", "names a file on this machine"),
    ("./wheels/x.whl", "names a file on this machine"),
    ("wheels/x-1.0-py3-none-any.whl", "names a file on this machine"),
    ("pkg @ file:///home/me/pkg", "names a file on this machine"),
    ("file:///home/me/pkg", "names a file on this machine"),
    ("--find-links /home/me/wheels", "names a file on this machine"),
    ("-f file:///home/me/wheels", "names a file on this machine"),
    ("--find-links http://example.org/wheels", "fetches code over plain http, which anyone on the way can change"),
    ("--index-url http://example.org/simple", "fetches code over plain http"),
    ("-i http://example.org/simple", "fetches code over plain http"),
    ("pkg @ git+ssh://git@github.com/me/pkg.git", "fetches code with the host's own SSH keys"),
    ("git+ssh://git@github.com/me/pkg.git#egg=pkg", "fetches code with the host's own SSH keys"),
    ("pkg @ git+http://example.org/pkg.git", "fetches code over plain http"),
    ("--extra-index-url https://user:secret@example.org/simple", "holds a user or password"),
    ("--trusted-host example.org", "turns off TLS checks for a host"),
    ("--index-url git+https://example.org/simple", "fetches from a git+https: URL, which lab does not fetch from"),
    ("pkg --global-option=--evil", "passes --global-option to a requirement"),
    ("--config-settings x=y", "is an option lab does not pass to uv (--config-settings)"),
]


@pytest.mark.parametrize(("line", "why"), REFUSED)
def test_each_form_lab_does_not_install_is_refused_naming_its_line(tmp_path, line, why):
    """Local paths, plain http, SSH-keyed fetches, credentials in URLs, TLS off, unknown options: the file's line,
    what it is and why, and what to do, in one line; before any install, and again on the host that decodes it."""
    folder = write(tmp_path / "exp", requirements=f"# the experiment's packages\ntermcolor==2.4.0\n{line}  # why not\n")
    with pytest.raises(LabError) as refused:
        spec.find(folder)
    message = refused.value.one_line()
    assert message.startswith(f"{folder / 'requirements.txt'}:3: {line!r} {why}"), message
    assert "\n" not in message and refused.value.hint
    crafted = spec.Spec(spec.KIND_REQUIREMENTS, {"requirements.txt": f"{line}\n"}, "sent")
    with pytest.raises(LabError, match=r"^sent:1: "):
        spec.decode(spec.encode(crafted), "sent")


def test_packages_and_https_indexes_pass(tmp_path):
    text = (
        "--index-url https://pypi.org/simple\n"
        "--extra-index-url https://download.pytorch.org/whl/cu121  # torch's own\n"
        "-f https://data.pyg.org/whl/torch-2.4.0+cu121.html\n"
        "--only-binary :all:\n"
        "--pre\n"
        "termcolor\n"
        "numpy>=1.26,<3 ; python_version >= '3.10'\n"
        "torch[opt]==2.4.0 \\\n    --hash=sha256:0123\n"
        "pkg @ https://example.org/pkg-1.0-py3-none-any.whl\n"
        "tool @ git+https://github.com/me/tool.git@v1.2\n"
    )
    found = spec.find(write(tmp_path / "ok", requirements=text))
    assert found is not None and spec.decode(spec.encode(found)).files == found.files


def test_the_spec_travels_as_one_argument_and_comes_back_the_same(tmp_path):
    found = spec.find(write(tmp_path / "a", requirements="termcolor==2.4.0\n" * 50))
    assert found is not None
    text = spec.encode(found)
    assert text.isascii() and " " not in text
    back = spec.decode(text, found.source)
    assert back.files == found.files and back.kind == found.kind


def test_uvs_error_becomes_one_line_with_its_reason():
    output = (
        "Using Python 3.11.7 environment at: x\n"
        "error: No solution found when resolving dependencies\n"
        "  cause: Because nosuchpkg was not found in the package registry and you require nosuchpkg==1.0, we can"
        " conclude that your requirements are unsatisfiable.\n"
    )
    assert install.reason(output) == (
        "No solution found when resolving dependencies: Because nosuchpkg was not found in the package registry and"
        " you require nosuchpkg==1.0, we can conclude that your requirements are unsatisfiable."
    )


def test_a_sweep_without_requirements_gets_no_step_and_one_with_them_does(tmp_path):
    place = SweepPlace([], "http://127.0.0.1:1", tmp_path / "optuna.db")
    assert env_sweep.step(None, write(tmp_path / "bare"), place) is None  # type: ignore[arg-type]
    made = env_sweep.step(None, write(tmp_path / "own", requirements="termcolor\n"), place)  # type: ignore[arg-type]
    assert made is not None and made.name == "environment"
    made.check()
    place.requirements = tmp_path / "own" / "requirements.txt"
    assert env_sweep.step(None, write(tmp_path / "bare2"), place) is not None  # type: ignore[arg-type]


def test_a_detached_sweep_takes_the_stacks_requirements_when_its_folder_names_none(tmp_path):
    """The tracker runs a detached sweep from its bundle, without the stack's files: the stack's lab:requirements
    goes into the bundle beside the notebook, so the sweep's environment is the one it gets in the terminal; a
    folder with its own requirements keeps them."""
    import io
    import tarfile
    from types import SimpleNamespace

    from toolkit.cli.commands.dispatch import _stack_requirements
    from toolkit.sweeps import service

    stack_file = tmp_path / "stack-requirements.txt"
    stack_file.write_text("termcolor==2.4.0\n")
    lab = SimpleNamespace(settings=SimpleNamespace(requirements=str(stack_file)))
    bare = write(tmp_path / "bare")
    (bare / "nb.ipynb").write_text("{}")
    (tmp_path / "space.yml").write_text("params: {}\n")
    extra = _stack_requirements(lab, bare / "nb.ipynb")  # type: ignore[arg-type]
    data = service.pack(bare / "nb.ipynb", tmp_path / "space.yml", {"study": "s"}, extra=extra)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert tar.extractfile("bundle/requirements.txt").read() == b"termcolor==2.4.0\n"  # type: ignore[union-attr]
        tar.extractall(tmp_path / "tracker", filter="data")
    assert {"bundle/nb.ipynb", "space.yml", "sweep.json"} <= set(names)
    on_tracker, on_laptop = spec.find(tmp_path / "tracker" / "bundle"), spec.find(bare, stack_file)
    assert on_tracker is not None and on_laptop is not None
    assert spec.env_hash(on_tracker, "3.11", KERNEL) == spec.env_hash(on_laptop, "3.11", KERNEL)
    own = write(tmp_path / "own", requirements="termcolor==2.5.0\n")
    assert _stack_requirements(lab, own / "nb.ipynb") == {}  # type: ignore[arg-type]
