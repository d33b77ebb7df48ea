"""lab.hosts.files, the roles' module for folders and small files, run by real ansible-playbook on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

PLAY = """\
- name: Write a role's files
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Write the folders and files
      lab.hosts.files:
        folders:
          - {path: "{{ base }}/etc", mode: "0755"}
          - {path: "{{ base }}/data/deep", mode: "0750"}
        files:
          - {path: "{{ base }}/etc/unit.service", content: "{{ unit }}", mode: "0644"}
          - {path: "{{ base }}/etc/describe.json", content: "{{ {'gpus': gpus | int} | to_nice_json }}\\n",
             mode: "0644"}
          - {path: "{{ base }}/etc/kernel.json", content: "{{ lookup('ansible.builtin.template', 'kernel.j2') }}",
             mode: "0600"}
          - {path: "{{ base }}/etc/rules.conf", content: "{{ rules }}", mode: "0644", validate: "grep -q ok %s"}
          # validate sees the staged file: it already has its mode (not mkstemp's 0600) before it takes the name
          - {path: "{{ base }}/etc/secret.env", content: "TOKEN=x\\n", mode: "0640",
             validate: 'sh -c "find $0 -perm 640 | grep -q ." %s'}
      register: wrote

    - name: Keep what the module answered
      ansible.builtin.copy:
        content: "{{ {'changed': wrote.changed, 'paths': wrote.changed_paths} | to_json }}"
        dest: "{{ answer }}"
        mode: "0644"
      check_mode: false
"""


Run = Callable[..., tuple[subprocess.CompletedProcess[str], dict | None]]


@pytest.fixture
def play(tmp_path: Path) -> tuple[Path, Run]:
    book = tmp_path / "play.yml"
    book.write_text(PLAY)
    (tmp_path / "templates").mkdir()
    kernel = "{{ {'argv': ['python', '-m', 'ipykernel'], 'n': gpus | int} | to_json }}\n"
    (tmp_path / "templates" / "kernel.j2").write_text(kernel)
    base = tmp_path / "host"

    def run(*, unit: str = "[Service]\nExecStart=/bin/true\n", gpus: int = 1, rules: str = "ok\n", check: bool = False):
        answer = tmp_path / "answer.json"
        answer.unlink(missing_ok=True)
        extra = {"base": str(base), "unit": unit, "gpus": gpus, "rules": rules, "answer": str(answer)}
        argv = [str(BIN / "ansible-playbook"), str(book), "-i", "localhost,", "-e", json.dumps(extra)]
        argv += ["-e", f"ansible_python_interpreter={sys.executable}"]
        if check:
            argv.append("--check")
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
        return done, json.loads(answer.read_text()) if answer.exists() else None

    return base, run


def test_writes_only_what_differs(play):
    base, run = play
    done, result = run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["changed"] and len(result["paths"]) == 7
    assert (base / "etc" / "unit.service").read_text() == "[Service]\nExecStart=/bin/true\n"
    # JSON rendered on the controller arrives as the same text, not as a re-serialised dict
    assert json.loads((base / "etc" / "describe.json").read_text()) == {"gpus": 1}
    assert (base / "etc" / "describe.json").read_text().endswith("}\n")
    assert json.loads((base / "etc" / "kernel.json").read_text()) == {"argv": ["python", "-m", "ipykernel"], "n": 1}
    assert (base / "etc" / "kernel.json").stat().st_mode & 0o777 == 0o600
    assert (base / "data" / "deep").stat().st_mode & 0o777 == 0o750
    assert (base / "etc" / "secret.env").stat().st_mode & 0o777 == 0o640

    done, result = run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert result == {"changed": False, "paths": []}, "a second run with nothing new changed something"

    (base / "etc" / "unit.service").chmod(0o600)
    done, result = run(gpus=2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(result["paths"]) == sorted(
        [str(base / "etc" / "unit.service"), str(base / "etc" / "describe.json"), str(base / "etc" / "kernel.json")]
    )
    assert (base / "etc" / "unit.service").stat().st_mode & 0o777 == 0o644
    assert json.loads((base / "etc" / "describe.json").read_text()) == {"gpus": 2}


def test_check_mode_reports_without_writing(play):
    base, run = play
    done, result = run(check=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["changed"]
    assert not base.exists(), "check mode wrote to the host"


def test_content_that_does_not_validate_leaves_the_file_alone(play):
    base, run = play
    assert run()[0].returncode == 0
    done, _ = run(rules="bad\n")
    assert done.returncode != 0
    assert "rules.conf did not validate" in done.stdout
    assert (base / "etc" / "rules.conf").read_text() == "ok\n"
    assert [p.name for p in (base / "etc").iterdir() if p.name.startswith(".")] == [], "a staged file was left"


def test_a_misspelt_key_is_refused_before_anything_is_written(play, tmp_path):
    base, run = play
    book = tmp_path / "play.yml"
    book.write_text(book.read_text().replace('mode: "0750"}', 'mdoe: "0750"}'))
    done, result = run()
    assert done.returncode != 0 and result is None
    assert "mdoe" in done.stdout, done.stdout
    assert not base.exists(), "a play with a misspelt key wrote to the host"
