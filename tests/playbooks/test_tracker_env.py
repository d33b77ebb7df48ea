"""/etc/lab/tracker.env (the replica's S3 keys, a bucket's credentials: docs/ssh-target.md) is root's, readable by
the replica's group only (0640), and out of MLflow's reach (issue 26, finding 8). Read from the lab_tracker role's
own files, as Ansible would (its tasks' YAML, its defaults, MLflow's unit template); the file on a real tracker is
checked on VM-like hosts (tests/labs/ssh)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

from toolkit.tracker import agent

ROLE = Path(__file__).resolve().parents[2] / "playbooks/roles/lab_tracker"


def tasks(node: Any) -> list[dict[str, Any]]:
    """Every task of a task list, blocks opened."""
    found = []
    for item in node or []:
        found.append(item)
        for key in ("block", "rescue", "always"):
            found += tasks(item.get(key))
    return found


def defaults() -> dict[str, Any]:
    return yaml.safe_load((ROLE / "defaults/main.yml").read_text())


def test_the_role_names_the_file_the_agent_reads():
    assert defaults()["lab_tracker_env_file"] == "{{ lab_base_config_dir }}/tracker.env"
    assert str(agent.ENV_FILE) == "/etc/lab/tracker.env"  # lab_base_config_dir's default is /etc/lab


def test_the_env_file_is_roots_and_the_replica_users_group_0640():
    found = [
        t
        for t in tasks(yaml.safe_load((ROLE / "tasks/main.yml").read_text()))
        if t.get("ansible.builtin.file", {}).get("path") == "{{ lab_tracker_env_file }}"
    ]
    assert len(found) == 1, "no task sets the owner and mode of lab_tracker_env_file"
    task = found[0]["ansible.builtin.file"]
    assert task["owner"] == "root"
    assert task["group"] == "{{ lab_tracker_user }}"  # lab-replica.service's User= and Group=
    assert task["mode"] == "0640"
    assert task["state"] == "touch"  # made when missing, never emptied: a person writes the keys into it
    assert task["access_time"] == task["modification_time"] == "preserve"  # idempotent
    replica = (ROLE / "templates/lab-replica.service.j2").read_text()
    assert "User={{ lab_tracker_user }}" in replica and "Group={{ lab_tracker_user }}" in replica


def test_mlflow_does_not_load_it_and_cannot_open_it():
    source = (ROLE / "templates/lab-mlflow.service.j2").read_text()
    jinja = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701
    base = yaml.safe_load((ROLE.parent / "lab_base/defaults/main.yml").read_text())
    sandbox = jinja.from_string(base["lab_base_unit_sandbox_service"]).render(base)
    rendered = jinja.from_string(source).render(
        lab_base_unit_sandbox_service=sandbox,
        ansible_managed="test",
        lab_tracker_firewall=True,
        lab_tracker_firewall_guard="/opt/lab/bin/lab-firewall-guard",
        lab_tracker_data="/srv/lab",
        lab_tracker_bind_address="10.0.0.2",
        lab_tracker_mlflow_port=5000,
        lab_tracker_user="lab-tracker",
        lab_tracker_artifacts="/srv/lab/artifacts",
        lab_tracker_mlflow_stop_timeout=30,
        lab_base_venv="/opt/lab/venv",
        lab_tracker_env_file="/etc/lab/tracker.env",
    )
    lines = [line.strip() for line in rendered.splitlines()]
    assert not [line for line in lines if line.startswith("EnvironmentFile")], "MLflow's unit loads an env file"
    # MLflow runs as the tracker's user, who is in the file's group: systemd hides the file from its namespace.
    assert "InaccessiblePaths=-/etc/lab/tracker.env" in lines
    assert "CapabilityBoundingSet=" in lines and "PrivateDevices=true" in lines  # the tracker services' sandbox
