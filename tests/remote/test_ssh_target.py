"""The ssh target on real hosts: one tracker and two workers (systemd-nspawn machines with their own IP,
sshd and systemd), configured by the real playbooks through `lab up`, used through the real CLI.

The tests run in order and build on each other (the hosts are expensive): up, a second up, the tunnel,
a sweep that loses a worker, a tracker reboot, backup/restore/down, then idle self-shutdown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LAB, ROOT, free_port, sigint_default

pytestmark = pytest.mark.hosts

PROBE = ROOT / "tests" / "data" / "notebooks" / "probe.ipynb"
HOLD = "/tmp/lab-test-hold"  # a path on the test hosts: trials wait while it exists


@dataclass
class Site:
    pool: object
    stack: Path
    home: Path
    tracker: object
    workers: list

    def env(self) -> dict[str, str]:
        return {**os.environ, "LAB_HOME": str(self.home), "COLUMNS": "200"}

    def lab(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(LAB), *args, "--stack", str(self.stack)],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )

    def write_stack(self, idle_minutes: int = 0) -> None:
        key = self.pool.key  # type: ignore[attr-defined]
        self.stack.write_text(
            "config:\n"
            "  lab:target: ssh\n"
            f"  lab:trackerHost: {self.tracker.ip}\n"
            f"  lab:workerHosts: [{', '.join(w.ip for w in self.workers)}]\n"
            "  lab:sshUser: ci\n"
            f"  lab:sshPublicKeyPath: {key}.pub\n"
            "  lab:runsPerGpu: 1\n"
            f"  lab:idleMinutes: {idle_minutes}\n"
        )

    def on(self, host: object, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.pool.ssh(host, command, check=False, timeout=timeout)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def site(host_pool, tmp_path_factory) -> Site:
    root = tmp_path_factory.mktemp("ssh-lab")
    hosts = host_pool.hosts()
    made = Site(host_pool, root / "Pulumi.hosts.yaml", root / "lab-home", hosts[0], hosts[1:3])
    made.home.mkdir()
    made.write_stack()
    return made


def json_of(ran: subprocess.CompletedProcess[str]) -> dict:
    assert ran.returncode == 0, f"exit {ran.returncode}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr[-3000:]}"
    return json.loads(ran.stdout)


def mlflow_runs_seen_from(site: Site, worker: object) -> int:
    script = (
        "import mlflow; c = mlflow.MlflowClient(); "
        "print(sum(len(c.search_runs([e.experiment_id], max_results=5000)) for e in c.search_experiments()))"
    )
    ran = site.on(worker, f"set -a; . /etc/lab/lab.env; /opt/lab/venv/bin/python -c '{script}'", timeout=120)
    assert ran.returncode == 0, ran.stderr
    return int(ran.stdout.strip())


def test_a_failing_task_is_summarised_as_host_task_and_message(site, tmp_path):
    from toolkit import configure, remote

    (tmp_path / "book.yml").write_text(
        "- name: A play that fails on the second task\n"
        "  hosts: all\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: Say hello\n"
        "      ansible.builtin.command: echo hello\n"
        "      changed_when: false\n"
        "    - name: Read a file that is not there\n"
        "      ansible.builtin.slurp:\n"
        "        src: /nonexistent/lab-file\n"
    )
    access = remote.Access(user="ci", key=site.pool.key, known_hosts=tmp_path / "known_hosts")
    hosts = [remote.Host("tracker", site.tracker.ip, remote.TRACKER)]
    seen: list[str] = []
    with pytest.raises(configure.PlaybookFailed) as failed:
        configure.run(
            "book.yml",
            hosts,
            access,
            {},
            tmp_path / "runner",
            project=tmp_path,
            on_change=lambda r: seen.append(r.hosts["tracker"].task),
        )
    message = failed.value.one_line()
    assert message.startswith("configuring the hosts failed at tracker: Read a file that is not there: ")
    assert "/nonexistent/lab-file" in message and "{" not in message  # a message, not a wall of JSON
    assert "Say hello" in seen  # the live view saw each task start
    assert failed.value.report.hosts["tracker"].ok == 1


def test_first_up_configures_the_tracker_and_workers(site):
    started = time.monotonic()
    document = json_of(site.lab("up", "--json"))
    seconds = time.monotonic() - started
    print(f"first `lab up --target ssh` of 1 tracker + 2 workers: {seconds:.1f} s")
    assert document["configure"]["status"] == "successful"
    assert set(document["configure"]["hosts"]) == {"tracker", "worker-1", "worker-2"}
    assert document["tracker"]["mlflow_url"] == f"http://{site.tracker.ip}:5000"

    # MLflow answers from a worker...
    health = site.on(site.workers[0], f"curl -sS -m 5 http://{site.tracker.ip}:5000/health")
    assert health.returncode == 0 and health.stdout.strip() == "OK", health
    # ...and not from outside the lab's network (this machine is on the bridge, like any other host)
    with pytest.raises((urllib.error.URLError, TimeoutError, ConnectionError)):
        urllib.request.urlopen(f"http://{site.tracker.ip}:5000/health", timeout=5)
    # Jupyter listens on 127.0.0.1 only
    for worker in site.workers:
        listening = site.on(worker, "ss -ltnH 'sport = :8888'").stdout.split()
        addresses = [word for word in listening if word.endswith(":8888")]
        assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), listening


def test_second_up_changes_nothing(site):
    started = time.monotonic()
    document = json_of(site.lab("up", "--json"))
    seconds = time.monotonic() - started
    print(f"second `lab up` with no changes: {seconds:.1f} s")
    hosts = document["configure"]["hosts"]
    assert {name: h["changed_tasks"] for name, h in hosts.items()} == {name: [] for name in hosts}
    assert all(h["ok"] > 0 and h["failed"] == 0 for h in hosts.values())


def test_tunnel_reaches_mlflow_and_jupyter_until_ctrl_c(site):
    mlflow_port, jupyter_port = free_port(), free_port()
    while jupyter_port + 1 == mlflow_port:
        jupyter_port = free_port()
    command = [str(LAB), "tunnel", "--stack", str(site.stack), "--mlflow-port", str(mlflow_port)]
    command += ["--jupyter-port", str(jupyter_port)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env(),
        preexec_fn=sigint_default,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not any("token" in line for line in lines) and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any(f"http://127.0.0.1:{mlflow_port}" in line for line in lines), lines
        with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=10) as answer:
            assert answer.read().decode().strip() == "OK"
        token = (site.home / "stacks" / "hosts" / "secrets" / "jupyter_token").read_text().strip()
        for port in (jupyter_port, jupyter_port + 1):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=10) as answer:
                assert answer.status == 200
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernels", timeout=10)
            refused.value.close()
            assert refused.value.code == 403
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=20)
        errors = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    assert code == 0, errors
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=5)


def test_sweep_goes_on_when_a_worker_powers_off(site, tmp_path):
    worker_1, worker_2 = site.workers
    for worker in site.workers:
        assert site.on(worker, f"touch {HOLD} && chmod 666 {HOLD}").returncode == 0
    space = tmp_path / "space.yml"
    space.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
        f"fixed: {{hold: {HOLD}}}\n"
        "sampler: {name: random, seed: 3}\n"
    )
    command = [str(LAB), "dispatch", str(PROBE), "--space", str(space), "--trials", "6", "--study", "lose-a-worker"]
    command += ["--json", "--output", str(tmp_path / "out/{trial}-{run_id}.ipynb"), "--stack", str(site.stack)]
    sweep = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env(),
    )
    try:
        deadline = time.monotonic() + 240
        running = {}
        while time.monotonic() < deadline and not all(running.get(w.name) for w in site.workers):
            for worker in site.workers:
                running[worker.name] = site.on(worker, "ls /var/lib/lab/trials").stdout.split()
            assert sweep.poll() is None, sweep.stderr.read()
            time.sleep(1)
        assert all(running.values()), f"a trial should be running on each worker: {running}"
        site.on(worker_2, "systemctl --no-block poweroff", timeout=20)
        assert site.pool.wait_stopped(worker_2, timeout=120)
        site.on(worker_1, f"rm -f {HOLD}")
        out, err = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    assert sweep.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 6, summary["trials"]
    moved = [t for t in summary["trials"] if t["attempts"] > 1]
    assert moved, "the trial of the worker that powered off should have run again"
    assert all(t["slot"].startswith("worker-1/") for t in moved)
    for trial in summary["trials"]:
        assert Path(trial["output"]).is_file(), trial
    site.pool.up(3)  # the powered-off worker boots again, as it was


def test_sweeps_are_read_from_the_trackers_storage(site, tmp_path):
    listed = json_of(site.lab("sweeps", "--json"))
    found = {s["name"]: s for s in listed}
    assert found["lose-a-worker"]["complete"] == 6
    shown = json_of(site.lab("sweep", "show", "lose-a-worker", "--json", "--plot-dir", str(tmp_path)))
    assert len(shown["best"]) == 5 and all(Path(p).is_file() for p in shown["plots"])


def test_tracker_reboot_keeps_every_run(site):
    before = mlflow_runs_seen_from(site, site.workers[0])
    assert before >= 7  # six completed trials and the failed attempt on the lost worker
    site.pool.reboot(site.tracker)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if site.on(site.workers[0], f"curl -sf -m 5 http://{site.tracker.ip}:5000/health").returncode == 0:
            break
        time.sleep(2)
    assert mlflow_runs_seen_from(site, site.workers[0]) == before


def test_status_backup_restore_and_down(site):
    from toolkit import backups

    status = json_of(site.lab("status", "--json"))
    assert status["hosts"]["tracker"]["services"]["lab-mlflow.service"] == "active"
    assert status["hosts"]["worker-1"]["services"]["lab-jupyter.service"] == "active"

    made = json_of(site.lab("backup", "--json"))
    backup = Path(made["path"])
    assert backups.verify(backup).id == made["id"]
    runs = backups.read_manifest(backup).mlflow.counts["runs"]
    assert runs == mlflow_runs_seen_from(site, site.workers[0])

    refused = site.lab("restore", made["id"])
    assert refused.returncode == 1 and "the tracker is running" in refused.stderr
    restored = site.lab("restore", made["id"], "--stop")
    assert restored.returncode == 0, restored.stderr
    assert mlflow_runs_seen_from(site, site.workers[0]) == runs

    down = json_of(site.lab("down", "--json"))
    assert backups.verify(Path(down["backup"]))
    for host in (site.tracker, *site.workers):
        assert site.on(host, "true").returncode == 0, f"{host.name} should still be reachable"
    assert site.on(site.tracker, "systemctl is-active lab-mlflow").stdout.strip() != "active"
    assert site.on(site.workers[0], "systemctl is-active lab-jupyter").stdout.strip() != "active"


def test_idle_worker_powers_itself_off(site):
    site.write_stack(idle_minutes=1)
    json_of(site.lab("up", "--json"))
    started = time.monotonic()
    # No SSH to the workers from here on: an SSH session counts as activity.
    for number, worker in enumerate(site.workers, start=1):
        assert site.pool.wait_stopped(worker, timeout=330), f"worker-{number} should have powered itself off"
        seconds = time.monotonic() - started
        print(f"idle self-shutdown with lab:idleMinutes=1: worker-{number} off {seconds:.0f} s after `lab up`")
    assert site.pool.is_running(site.tracker), "the tracker never powers itself off"
    # Every worker is off before any boots again: starting one while another is still on its way down races.
    site.pool.up(3)  # boot them again to read why they went off
    reason = site.on(site.workers[0], "cat /var/log/lab/idle.log").stdout
    assert "idle" in reason and "power" in reason, reason
