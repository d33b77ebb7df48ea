"""The configure step: the packaged playbooks run against the lab's hosts through ansible-runner.

The runner's event stream becomes a live table (one row per host: its current task, ok/changed/failed
counts); a failure is summarised as host, task and message. SSH runs with pipelining and ControlPersist,
with the same key and known-hosts file as every other SSH use of the toolkit (`toolkit.hosts.ssh`).
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.config import paths
from toolkit.errors import LabError
from toolkit.hosts import ssh as remote

MESSAGE_CHARS = 300
SLOWEST = 10  # tasks listed in the report's slowest_tasks


@dataclass
class HostState:
    name: str
    task: str = "waiting"
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: bool = False
    changed_tasks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    host: str
    task: str
    message: str

    def __str__(self) -> str:
        return f"{self.host}: {self.task}: {self.message}"


@dataclass
class Report:
    """What one playbook run did, per host."""

    playbook: str
    hosts: dict[str, HostState]
    failures: list[Failure] = field(default_factory=list)
    status: str = "unknown"
    seconds: float = 0.0
    task_seconds: dict[str, float] = field(default_factory=dict)  # each task's longest run on any host

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "status": self.status,
            "seconds": round(self.seconds, 1),
            "hosts": {
                name: {
                    "ok": h.ok,
                    "changed": h.changed,
                    "failed": h.failed,
                    "skipped": h.skipped,
                    "unreachable": h.unreachable,
                    "changed_tasks": h.changed_tasks,
                }
                for name, h in self.hosts.items()
            },
            "failures": [str(f) for f in self.failures],
            "slowest_tasks": [
                {"task": task, "seconds": round(seconds, 2)}
                for task, seconds in sorted(self.task_seconds.items(), key=lambda item: -item[1])[:SLOWEST]
            ],
        }


class PlaybookFailed(LabError):
    def __init__(self, report: Report) -> None:
        self.report = report
        first = report.failures[0] if report.failures else None
        more = f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        what = str(first) if first else f"the run ended {report.status}"
        super().__init__(
            f"configuring the hosts failed at {what}{more}",
            hint="fix that and run the same command again; finished steps are not repeated",
        )


def playbooks_dir() -> Path:
    return paths.packaged_project() / "playbooks"


def inventory(hosts: Sequence[remote.Host], access: remote.Access) -> dict[str, Any]:
    """An Ansible inventory: group `tracker` (one host) and group `workers`."""

    def entry(host: remote.Host) -> dict[str, Any]:
        return {
            "ansible_host": host.address,
            "ansible_user": access.user,
            "ansible_ssh_private_key_file": str(access.key),
            "ansible_become": True,
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    groups: dict[str, dict[str, Any]] = {"tracker": {"hosts": {}}, "workers": {"hosts": {}}}
    for host in hosts:
        group = "tracker" if host.role == remote.TRACKER else "workers"
        groups[group]["hosts"][host.name] = entry(host)
    return {"all": {"children": groups}}


def _ansible_env(access: remote.Access, project: Path) -> dict[str, str]:
    ssh_args = [o for o in access.options() if o not in ("-i", str(access.key))]
    env = {
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": shlex.join(ssh_args),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_TIMEOUT": str(remote.CONNECT_TIMEOUT_S * 3),
        "ANSIBLE_NOCOLOR": "True",
        # ansible-playbook from the same environment as lab (a venv's bin is not always on PATH)
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    if (project / "ansible.cfg").is_file():
        env["ANSIBLE_CONFIG"] = str(project / "ansible.cfg")
    return env


def _message(result: Mapping[str, Any]) -> str:
    for key in ("msg", "stderr", "module_stderr", "stdout"):
        value = result.get(key)
        if isinstance(value, str) and value.strip():
            lines = [line for line in value.strip().splitlines() if line.strip()]
            text = lines[-1] if key != "msg" else " ".join(lines)
            return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."
    if result.get("censored"):
        return "the output is hidden (no_log); run with LAB_DEBUG=1 and look at the runner's artifacts"
    return "no message"


class _Events:
    """Folds ansible-runner's events into a Report and calls `changed` after each one that matters."""

    def __init__(self, report: Report, on_change: Callable[[], None]) -> None:
        self.report = report
        self.on_change = on_change
        self.lock = threading.Lock()

    def __call__(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host_name = data.get("host") or data.get("remote_addr")
        task = str(data.get("task") or "").strip()
        with self.lock:
            host = self.report.hosts.get(str(host_name)) if host_name else None
            duration = data.get("duration")
            if isinstance(duration, int | float) and task:
                self.report.task_seconds[task] = max(self.report.task_seconds.get(task, 0.0), float(duration))
            if kind == "runner_on_start" and host:
                host.task = task
            elif kind == "runner_on_ok" and host:
                host.ok += 1
                if (data.get("res") or {}).get("changed"):
                    host.changed += 1
                    host.changed_tasks.append(task)
            elif kind == "runner_on_skipped" and host:
                host.skipped += 1
            elif kind == "runner_on_failed" and host and not data.get("ignore_errors"):
                host.failed += 1
                host.task = f"FAILED: {task}"
                self.report.failures.append(Failure(host.name, task, _message(data.get("res") or {})))
            elif kind == "runner_on_unreachable" and host:
                host.unreachable = True
                host.task = "UNREACHABLE"
                self.report.failures.append(Failure(host.name, task, _message(data.get("res") or {})))
            elif kind == "playbook_on_stats":
                for state in self.report.hosts.values():
                    if not state.failed and not state.unreachable:
                        state.task = "done"
            else:
                return True
        self.on_change()
        return True


def run(
    playbook: str,
    hosts: Sequence[remote.Host],
    access: remote.Access,
    extravars: Mapping[str, Any],
    state_dir: Path,
    *,
    on_change: Callable[[Report], None] = lambda report: None,
    limit: str | None = None,
    project: Path | None = None,
) -> Report:
    """Run one packaged playbook (or one of `project`); returns its report, or raises PlaybookFailed with
    host, task and message."""
    import time

    import ansible_runner

    project = project or playbooks_dir()
    book = project / playbook
    if not book.is_file():
        raise LabError(f"the playbook {book} is missing from this install", hint="reinstall lab")
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)
    report = Report(playbook=playbook, hosts={h.name: HostState(h.name) for h in hosts})
    events = _Events(report, lambda: on_change(report))
    started = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=str(state_dir),
        project_dir=str(project),
        playbook=playbook,
        inventory=inventory(hosts, access),
        extravars=dict(extravars),
        envvars=_ansible_env(access, project),
        event_handler=events,
        quiet=True,
        suppress_env_files=True,  # extra variables (the token's lookup, not the token) stay out of files
        rotate_artifacts=5,
        limit=limit,
        omit_event_data=False,
    )
    report.seconds = time.monotonic() - started
    report.status = str(runner.status)
    if runner.status != "successful" or report.failures:
        if not report.failures and runner.rc not in (0, None):
            tail = _stdout_tail(runner)
            report.failures.append(Failure("ansible", playbook, tail or f"exit code {runner.rc}"))
        raise PlaybookFailed(report)
    return report


def _stdout_tail(runner: Any) -> str:
    try:
        lines = [line for line in runner.stdout.read().splitlines() if line.strip()]
    except (OSError, AttributeError):
        return ""
    return lines[-1][:MESSAGE_CHARS] if lines else ""


def table(report: Report) -> Any:
    """The live view: one row per host."""
    from rich.table import Table

    view = Table(title=f"configuring ({report.playbook})", title_justify="left")
    for column in ("host", "task", "ok", "changed", "failed"):
        view.add_column(column)
    for host in report.hosts.values():
        view.add_row(host.name, host.task, str(host.ok), str(host.changed), str(host.failed))
    return view
