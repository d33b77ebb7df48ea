"""The ssh target on real hosts: one tracker and two workers (systemd-nspawn machines with their own IP,
sshd and systemd), configured by the real playbooks through `lab up`, used through the real CLI.

The tests run in order and build on each other (the hosts are expensive): up, a second up, the tunnel,
a sweep that loses a worker, a tracker reboot, backup/restore/down, then idle self-shutdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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

    def write_stack(self, idle_minutes: float = 0) -> None:
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
    """The session's hosts reset to the bare base first (their disks' changes dropped), whatever modules ran on them
    before: the first `up` here is a first configure wherever this module runs in the order."""
    host_pool.down()
    host_pool.up(3)
    root = tmp_path_factory.mktemp("ssh-lab")
    hosts = host_pool.hosts()
    for host in hosts:
        assert host_pool.ssh(host, "test ! -e /opt/lab && test ! -e /etc/lab", check=False).returncode == 0, host
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
    from toolkit.hosts import configure
    from toolkit.hosts import ssh as remote

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
    # a first configure: every host was bare (the fixture reset them) and had its lab installed
    assert all(h["changed_tasks"] for h in document["configure"]["hosts"].values()), document["configure"]
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
    dashboard_port = free_port()
    command += ["--dashboard-port", str(dashboard_port)]
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
        while sum("Jupyter on" in line for line in lines) < 2 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any(f"http://127.0.0.1:{mlflow_port}" in line for line in lines), lines
        with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=10) as answer:
            assert answer.read().decode().strip() == "OK"
        # optuna-dashboard, on the tracker's 127.0.0.1, reading the studies through the Optuna proxy
        assert any("Optuna dashboard" in line and f"http://127.0.0.1:{dashboard_port}" in line for line in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/api/studies", timeout=10) as answer:
            studies = json.load(answer)["study_summaries"]  # earlier modules' sweeps on these hosts, or none
        read = (
            "import sqlite3; db = sqlite3.connect('/srv/lab/tracker/optuna.db'); "
            "print(*(r[0] for r in db.execute('select study_name from studies')))"
        )
        tracker_db = site.on(site.tracker, f'/opt/lab/venv/bin/python -c "{read}"')
        assert sorted(s["study_name"] for s in studies) == sorted(tracker_db.stdout.split()), tracker_db.stderr
        for number, port in enumerate((jupyter_port, jupyter_port + 1), start=1):
            token_file = site.home / "stacks" / "hosts" / "secrets" / f"jupyter_token.worker-{number}"
            # each Jupyter URL says where its own worker's token is
            (line,) = [line for line in lines if f"http://127.0.0.1:{port}/lab" in line]
            assert f"Jupyter on worker-{number}" in line and str(token_file) in line, line
            token = token_file.read_text().strip()
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


def environ_on(site: Site, host: object, pid: str) -> dict[str, str]:
    text = site.on(host, f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def worker_tokens(site: Site) -> list[str]:
    secrets = site.home / "stacks" / "hosts" / "secrets"
    return [(secrets / f"jupyter_token.worker-{n}").read_text().strip() for n in range(1, len(site.workers) + 1)]


def test_each_worker_has_its_own_token_and_no_kernel_sees_one(site):
    tokens = worker_tokens(site)
    assert len(set(tokens)) == len(site.workers), "two workers share a Jupyter token"
    assert not (site.home / "stacks" / "hosts" / "secrets" / "jupyter_token").exists(), "a token for every host"
    for worker, token, other in zip(site.workers, tokens, reversed(tokens), strict=True):
        assert site.on(worker, "stat -c '%U %a' /etc/lab/jupyter.env").stdout.split() == ["ci", "600"]
        assert site.on(worker, "cat /etc/lab/jupyter.env").stdout.strip() == f"JUPYTER_TOKEN={token}"
        api = "http://127.0.0.1:8888/api/kernels"
        refused = site.on(worker, f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Authorization: token {other}' {api}")
        assert refused.stdout == "403", "a worker took another worker's token"
        pid = site.on(worker, "systemctl show --property=MainPID --value lab-jupyter.service").stdout.strip()
        jupyter_env = environ_on(site, worker, pid)
        assert "JUPYTER_TOKEN" not in jupyter_env and token not in "\n".join(jupyter_env.values())
        # a kernel started by JupyterLab (a notebook opened through the tunnel)
        started = site.on(
            worker,
            f"curl -sf -X POST -H 'Authorization: token {token}' -H 'Content-Type: application/json' "
            f'-d \'{{"name": "python3"}}\' {api}',
        )
        assert started.returncode == 0, started.stderr
        kernel_id = json.loads(started.stdout)["id"]
        deadline = time.monotonic() + 60
        kernel_pids: list[str] = []
        while not kernel_pids and time.monotonic() < deadline:
            kernel_pids = site.on(worker, f"pgrep -f 'kernel-{kernel_id}'").stdout.split()
            time.sleep(0.5)
        assert kernel_pids, "JupyterLab started no kernel"
        kernel_env = environ_on(site, worker, kernel_pids[0])
        assert "JUPYTER_TOKEN" not in kernel_env and token not in "\n".join(kernel_env.values())
        assert kernel_env["MLFLOW_TRACKING_URI"] == f"http://{site.tracker.ip}:5000"
        site.on(worker, f"curl -sf -X DELETE -H 'Authorization: token {token}' {api}/{kernel_id}")


def test_a_trials_kernel_on_a_worker_sees_no_token_nor_the_callers_secrets(site, tmp_path, monkeypatch):
    import threading

    import nbformat

    from toolkit.hosts import ssh as remote
    from toolkit.sweeps import slots, ssh_slots

    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "secret-xyz")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-abc")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import json, os\nfrom pathlib import Path\n"
            "seen = {**os.environ, '_cwd': os.getcwd(), '_beside': open('beside.txt').read()}\n"
            "Path.home().joinpath('trial-env.json').write_text(json.dumps(seen))"
        )
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "env.ipynb")
    (tmp_path / "beside.txt").write_text("next to the notebook\n")  # issue 25 item 7: it goes with the trial
    access = remote.Access(user="ci", key=site.pool.key, known_hosts=site.home / "stacks" / "hosts" / "known_hosts")
    worker = remote.Host("worker-1", site.workers[0].ip, remote.WORKER)
    slot = ssh_slots.SshSlot("worker-1/0", access, worker, {"CUDA_VISIBLE_DEVICES": "0"})
    job = slots.Job(tmp_path / "env.ipynb", tmp_path / "out.ipynb", {}, {"MLFLOW_RUN_ID": "feedc0de" * 4})
    outcome = slot.run(job, threading.Event())
    slot.close()
    assert outcome.kind == "ok", outcome.error
    trial_env = json.loads(site.on(site.workers[0], "cat ~ci/trial-env.json && rm ~ci/trial-env.json").stdout)
    for name in ("JUPYTER_TOKEN", "PULUMI_CONFIG_PASSPHRASE", "AWS_SECRET_ACCESS_KEY"):
        assert name not in trial_env, f"a trial's kernel got {name}"
    assert worker_tokens(site)[0] not in "\n".join(trial_env.values())
    assert trial_env["MLFLOW_RUN_ID"] == "feedc0de" * 4 and trial_env["CUDA_VISIBLE_DEVICES"] == "0"
    assert trial_env["MLFLOW_TRACKING_URI"] == f"http://{site.tracker.ip}:5000"  # the worker's lab.env
    assert trial_env["_beside"] == "next to the notebook\n"
    assert trial_env["_cwd"] == trial_env["LAB_TRIAL_DIR"] == f"/home/ci/.lab-trials/{'feedc0de' * 4}"


def test_an_ssh_slot_keeps_its_next_kernel_warm_and_a_stopped_trial_leaves_nothing(site, tmp_path):
    """The slot's runner on the worker (one SSH session): the first trial's kernel starts cold, the next ones are
    warm (started while the one before ran), so a trial's first cell runs within a second or two of the slot
    being free; a trial stopped mid-run (Ctrl-C, --timeout) leaves no kernel and no marker on the worker."""
    import threading

    import nbformat

    from toolkit.hosts import ssh as remote
    from toolkit.sweeps import slots, ssh_slots

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("sleep_s = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import time\nprint('first cell at', time.time())\ntime.sleep(sleep_s)",
        ),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "warm.ipynb")
    access = remote.Access(user="ci", key=site.pool.key, known_hosts=site.home / "stacks" / "hosts" / "known_hosts")
    worker = remote.Host("worker-2", site.workers[1].ip, remote.WORKER)
    slot = ssh_slots.SshSlot("worker-2/0", access, worker, warm=True)
    waits, warm = [], []
    try:
        for number in range(3):
            log = tmp_path / f"trial-{number}.log"
            job = slots.Job(tmp_path / "warm.ipynb", tmp_path / f"out-{number}.ipynb", {}, {}, log=log)
            asked = time.time()
            outcome = slot.run(job, threading.Event())
            assert outcome.kind == "ok", outcome.error
            first_cell = float(log.read_text().split("first cell at ")[1].split()[0])
            waits.append(first_cell - asked)
            warm.append(slot.runner.warm_start)
        print(f"SSH slot, slot free to first cell: {', '.join(f'{w:.2f}' for w in waits)} s (warm: {warm})")
        assert warm == [False, True, True]
        assert max(waits[1:]) < min(waits[0], 5.0), waits  # the worker's clock is this machine's (containers)
        cancel = threading.Event()
        job = slots.Job(
            tmp_path / "warm.ipynb", tmp_path / "out-stop.ipynb", {"sleep_s": 300}, {"MLFLOW_RUN_ID": "5709" * 8}
        )
        threading.Timer(8, cancel.set).start()
        outcome = slot.run(job, cancel)
        assert outcome.kind == "cancelled"
    finally:
        slot.close()
    left = site.on(
        site.workers[1],
        "sleep 2; ls /var/lib/lab/trials; pgrep -a -u ci -f '[i]pykernel|[t]oolkit.sweeps.runner' || true",
    )
    assert "5709" * 8 not in left.stdout and "python" not in left.stdout, left.stdout


def mlflow_reachable_from_here(site: Site) -> bool:
    """This machine is on the lab's network but is not a worker: the firewall must keep it away from MLflow."""
    try:
        with urllib.request.urlopen(f"http://{site.tracker.ip}:5000/health", timeout=2):
            return True
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return False


def unit_state(site: Site, unit: str) -> str:
    return site.on(site.tracker, f"systemctl is-active {unit}").stdout.strip()


def wait_for(condition, timeout: float) -> float | None:
    """Seconds until `condition()` held, or None when it did not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def wait_for_mlflow_from_a_worker(site: Site, timeout: float = 120) -> None:
    health = f"curl -sf -m 5 http://{site.tracker.ip}:5000/health"
    assert wait_for(lambda: site.on(site.workers[0], health).returncode == 0, timeout) is not None


def test_mlflow_stops_with_the_firewall(site):
    assert site.on(site.tracker, "systemctl stop lab-firewall.service").returncode == 0
    assert unit_state(site, "lab-mlflow.service") != "active", "MLflow outlived its firewall"
    assert unit_state(site, "lab-firewall-guard.service") != "active"
    assert site.on(site.tracker, "nft list table inet lab").returncode != 0
    # Starting MLflow loads the firewall first.
    started = site.on(site.tracker, "systemctl start lab-mlflow.service")
    assert started.returncode == 0, started.stderr
    assert unit_state(site, "lab-firewall.service") == "active"
    assert unit_state(site, "lab-firewall-guard.service") == "active"
    wait_for_mlflow_from_a_worker(site)
    assert not mlflow_reachable_from_here(site)


def test_a_deleted_firewall_table_is_restored_within_seconds(site):
    assert site.on(site.tracker, "nft delete table inet lab").returncode == 0
    seconds = wait_for(lambda: site.on(site.tracker, "nft list table inet lab").returncode == 0, 20)
    assert seconds is not None, "the firewall's table was not restored"
    print(f"the firewall's table was restored {seconds:.1f} s after it was deleted")
    assert not mlflow_reachable_from_here(site)
    assert unit_state(site, "lab-mlflow.service") == "active"  # restored, so MLflow kept serving the workers
    journal = site.on(site.tracker, "journalctl -u lab-firewall-guard.service --no-pager -o cat").stdout
    assert "the table inet lab is not loaded: restored the lab's rules" in journal, journal[-2000:]
    wait_for_mlflow_from_a_worker(site)


def test_mlflow_stops_when_the_firewall_cannot_be_restored(site):
    broken = "echo 'this is not nft' >> /etc/lab/firewall.nft && nft delete table inet lab"
    assert site.on(site.tracker, broken).returncode == 0
    seconds = wait_for(lambda: unit_state(site, "lab-mlflow.service") != "active", 20)
    assert seconds is not None, "MLflow still runs without its firewall"
    print(f"MLflow stopped {seconds:.1f} s after its firewall's table was deleted (and could not be restored)")
    assert not mlflow_reachable_from_here(site)
    journal = site.on(site.tracker, "journalctl -u lab-firewall-guard.service --no-pager -o cat").stdout
    assert "stopping lab-mlflow.service: the table inet lab is not loaded" in journal, journal[-2000:]
    # It does not start again while the table is missing ...
    assert site.on(site.tracker, "systemctl start lab-mlflow.service").returncode != 0
    assert not mlflow_reachable_from_here(site)
    # ... and `lab up` puts the rules and MLflow back, also when it updates the toolkit (which restarts the
    # services bound to the firewall: the table must be back first).
    assert site.on(site.tracker, "echo '# older' >> /opt/lab/lib/toolkit/__init__.py").returncode == 0
    json_of(site.lab("up", "--json"))
    wait_for_mlflow_from_a_worker(site)
    assert not mlflow_reachable_from_here(site)


def test_sweep_goes_on_when_a_worker_powers_off(site, tmp_path):
    worker_1, worker_2 = site.workers
    for worker in site.workers:
        assert site.on(worker, f"touch {HOLD} && chmod 666 {HOLD}").returncode == 0
    # what an older lab left: a trials folder open to every user of the worker
    assert site.on(worker_1, "sudo -u ci mkdir -p ~ci/.lab-trials && chmod 1777 ~ci/.lab-trials").returncode == 0
    space = tmp_path / "space.yml"
    space.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
        f"fixed: {{hold: {HOLD}}}\n"
        "sampler: {name: random, seed: 3}\n"
    )
    command = [str(LAB), "dispatch", str(PROBE), "--space", str(space), "--trials", "6", "--study", "lose-a-worker"]
    command += [
        "--no-detach",
        "--json",
        "--output",
        str(tmp_path / "out/{trial}-{run_id}.ipynb"),
        "--stack",
        str(site.stack),
    ]
    sweep = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**site.env(), "PYTHONFAULTHANDLER": "1"},  # a dispatcher that hangs shows where
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
        try:
            out, err = sweep.communicate(timeout=600)
        except subprocess.TimeoutExpired:  # where each of its threads waits (PYTHONFAULTHANDLER) goes in the failure
            sweep.send_signal(signal.SIGABRT)
            out, err = sweep.communicate()
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    assert sweep.returncode == 0, err[-6000:]
    summary = json.loads(out)
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 6, summary["trials"]
    moved = [t for t in summary["trials"] if t["attempts"] > 1]
    assert moved, "the trial of the worker that powered off should have run again"
    assert all(t["slot"].startswith("worker-1/") for t in moved)
    for trial in summary["trials"]:
        assert Path(trial["output"]).is_file(), trial
    assert site.on(worker_1, "stat -c %a ~ci/.lab-trials").stdout.strip() == "700"
    site.pool.up(3)  # the powered-off worker boots again, as it was
    assert site.on(worker_2, "stat -c %a ~ci/.lab-trials").stdout.strip() == "700"


def test_a_trials_folder_holding_another_users_files_is_refused(site, tmp_path):
    import threading

    from toolkit.errors import LabError
    from toolkit.hosts import ssh as remote
    from toolkit.sweeps import slots, ssh_slots

    worker = site.workers[1]
    # planted by another user of the worker while an older lab left the folder open to everyone (1777)
    plant = "useradd -m other && sudo -u ci mkdir -p ~ci/.lab-trials && chmod 1777 ~ci/.lab-trials"
    assert site.on(worker, plant + " && sudo -u other mkdir ~ci/.lab-trials/planted").returncode == 0
    access = remote.Access(user="ci", key=site.pool.key, known_hosts=site.home / "stacks" / "hosts" / "known_hosts")
    slot = ssh_slots.SshSlot("worker-2/0", access, remote.Host("worker-2", worker.ip, remote.WORKER))
    job = slots.Job(PROBE, tmp_path / "out.ipynb", {}, {"MLFLOW_RUN_ID": "0badc0de" * 4})
    try:
        with pytest.raises(LabError, match="holds files of other users, so no trial runs there"):
            slot.run(job, threading.Event())
        left = site.on(worker, "ls ~ci/.lab-trials").stdout.split()
        assert "planted" in left and "0badc0de" * 4 not in left  # nothing unpacked there
    finally:
        site.on(worker, "rm -rf ~ci/.lab-trials/planted && chmod 700 ~ci/.lab-trials && userdel -r other")


def test_sweeps_are_read_from_the_trackers_storage(site, tmp_path):
    listed = json_of(site.lab("sweeps", "--json"))
    found = {s["name"]: s for s in listed}
    assert found["lose-a-worker"]["complete"] == 6
    shown = json_of(site.lab("sweep", "show", "lose-a-worker", "--json", "--plot-dir", str(tmp_path)))
    assert len(shown["best"]) == 5 and all(Path(p).is_file() for p in shown["plots"])
    # optuna-dashboard on the tracker shows it too (through the Optuna proxy)
    studies = site.on(site.tracker, "curl -sf -m 10 http://127.0.0.1:8080/api/studies")
    assert studies.returncode == 0 and '"lose-a-worker"' in studies.stdout, studies


@contextlib.contextmanager
def laptop(site: Site, tmp_path: Path) -> Iterator[list[str]]:
    """A stand-in for a laptop: a network namespace of its own on the hosts' bridge (its own address and link, its
    own SSH connections); the argv prefix that runs a command there. Removed, with what still runs in it, when the
    block ends."""
    pool = site.pool
    name = f"labctl{os.getpid() % 10000}"
    inside, outside = f"{name}a", f"{name}b"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", inside, "type", "veth", "peer", "name", outside],
        ["ip", "link", "set", outside, "master", pool.bridge, "up"],
        ["ip", "link", "set", inside, "netns", name],
        ["ip", "-n", name, "addr", "add", f"{pool.net}.250/24", "dev", inside],
        ["ip", "-n", name, "link", "set", inside, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    scratch = None
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        # its own ControlMaster sockets, nothing shared with this namespace (short: a socket path has 108 bytes)
        scratch = Path(tempfile.mkdtemp(prefix="ctl", dir="/tmp"))
        yield ["ip", "netns", "exec", name, "env", f"TMPDIR={scratch}"]
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:  # whatever the laptop still ran goes with it
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "link", "delete", outside], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def test_a_detached_sweep_goes_on_without_the_laptop(site, tmp_path):
    for worker in site.workers:
        assert site.on(worker, f"touch {HOLD} && chmod 666 {HOLD}").returncode == 0
    space = tmp_path / "space.yml"
    space.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
        f"fixed: {{hold: {HOLD}}}\n"
        "sampler: {name: random, seed: 5}\n"
    )
    with laptop(site, tmp_path) as there:
        started = time.monotonic()
        ran = subprocess.run(
            [*there, str(LAB), "dispatch", str(PROBE), "--space", str(space),
             "--trials", "4", "--study", "detached", "--json", "--stack", str(site.stack)],
            capture_output=True, text=True, env=site.env(), timeout=300, check=False,
        )  # fmt: skip
        handed = json_of(ran)
        print(f"`lab dispatch` (detached, ssh target) returned in {time.monotonic() - started:.1f} s")
        assert handed["sweep"] == "detached" and handed["where"] == f"on the tracker ({site.tracker.ip})"
        deadline = time.monotonic() + 240
        while len(running_trials(site)) < 2:  # a trial runs on each worker, held there
            assert time.monotonic() < deadline, "the detached sweep's trials never started"
            time.sleep(1)
    holds = [site.on(w, "ls /var/lib/lab/trials").stdout.split() for w in site.workers]
    assert all("hold-detached" in held for held in holds), f"the sweep holds its workers awake: {holds}"
    # the laptop is gone: its process, its network namespace, its address
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "labctl" not in namespaces, namespaces
    assert site.on(site.tracker, "systemctl is-active lab-sweep@detached.service").stdout.strip() == "active"
    for worker in site.workers:
        site.on(worker, f"rm -f {HOLD}")
    watched = site.lab("sweep", "watch", "detached", "--json", timeout=600)  # from another machine (this one)
    assert watched.returncode == 0, watched.stderr[-3000:]
    final = json.loads(
        watched.stdout[watched.stdout.rindex("\n{") + 1 :] if "\n{" in watched.stdout else watched.stdout
    )
    assert final["status"] == "finished" and final["completed"] == 4, final
    assert {s["name"].split("/")[0] for s in final["slots"]} == {"worker-1", "worker-2"}
    assert set(final["workers"]) == {"worker-1", "worker-2"}, "watch shows each worker (no GPU here: no gpus)"
    holds = [site.on(w, "ls /var/lib/lab/trials").stdout.split() for w in site.workers]
    assert not any("hold-detached" in held for held in holds), f"an ended sweep gives its holds back: {holds}"
    trial_log = site.lab("sweep", "logs", "detached")
    assert "trial 3 complete" in trial_log.stdout or "complete" in trial_log.stdout, trial_log.stdout
    listed = {s["name"]: s for s in json_of(site.lab("sweeps", "--json"))}
    assert listed["detached"]["status"] == "finished" and listed["detached"]["complete"] == 4


def checkpointed_notebook(folder: Path) -> Path:
    """Eight slow steps, a checkpoint after each (its running total); a retry resumes from the newest one."""
    import nbformat

    folder.mkdir(parents=True)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "x = 0.5\nsteps = 8\npause = 2.0\ntrial_number = 0\nseed = 0", metadata={"tags": ["parameters"]}
        ),
        nbformat.v4.new_code_cell(
            "import time\nimport mlflow\nfrom toolkit import checkpoints\n"
            "found = checkpoints.load_latest()\n"
            "state, start = (found[0], found[1] + 1) if found else ({'total': 0.0}, 0)\n"
            "with mlflow.start_run():\n"
            "    mlflow.set_tag('resumed_at', str(start))\n"
            "    for step in range(start, steps):\n"
            "        time.sleep(pause)\n"
            "        state = {'total': state['total'] + x}\n"
            "        checkpoints.save(state, step)\n"
            "        checkpoints.flush()\n"
            "        print(f'saved step {step}', flush=True)\n"
            "    mlflow.log_metric('total', state['total'])\n"
            "    mlflow.log_metric('val_loss', (x - 0.3) ** 2)"
        ),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "ckpt.ipynb"
    nbformat.write(notebook, path)
    return path


def tracker_file(site: Site, path: str) -> str:
    return site.on(site.tracker, f"cat {path}").stdout


def test_a_worker_powered_off_mid_trial_resumes_from_its_checkpoint_and_rejoins(site, tmp_path):
    notebook = checkpointed_notebook(tmp_path / "ckpt")
    space = tmp_path / "space.yml"
    space.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
        "sampler: {name: random, seed: 11}\n"
    )
    json_of(site.lab("dispatch", str(notebook), "--space", str(space), "--trials", "10", "--study", "ckpt", "--json"))
    folder = "/srv/lab/sweeps/ckpt"
    worker_2 = site.workers[1]
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:  # the trial on worker-2, once it checkpointed step 3
        assert time.monotonic() < deadline, tracker_file(site, f"{folder}/dispatch.log")
        state = json.loads(tracker_file(site, f"{folder}/state.json") or "{}")
        for slot in state.get("slots", []):
            if slot["name"].startswith("worker-2/") and slot.get("trial") is not None:
                log = tracker_file(site, f"{folder}/trials/trial-{slot['trial']}.log")
                victim = slot["trial"] if "saved step 3" in log else None
        time.sleep(1)
    site.on(worker_2, "systemctl --no-block poweroff", timeout=20)
    powered_off = time.monotonic()
    assert site.pool.wait_stopped(worker_2, timeout=120)
    # Down until the sweep has seen it gone (a worker back within seconds is just retried, not lost).
    deadline = time.monotonic() + 300
    while "slot worker-2/0 lost" not in tracker_file(site, f"{folder}/dispatch.log"):
        assert time.monotonic() < deadline, "the sweep never saw worker-2 go: " + tracker_file(
            site, f"{folder}/dispatch.log"
        )
        time.sleep(1)
    site.pool.up(3)  # it boots again while trials are left: its slot takes trials again
    print(f"worker-2 powered off and booted again in {time.monotonic() - powered_off:.1f} s")
    # the tracker's own view of it, as the sweep's slot asks (its key, the pinned host keys, strict)
    reach = (
        "sudo -u lab-tracker /opt/lab/venv/bin/python -c 'import json, sys; from pathlib import Path; "
        'from toolkit.hosts import ssh as r; f = json.loads(Path("/etc/lab/tracker.json").read_text()); '
        'w = [x for x in f["workers"] if x["name"] == "worker-2"][0]; '
        'a = r.Access(w["user"], Path(f["ssh_key"]), Path(f["known_hosts"]), strict=True); '
        'h = r.Host(w["name"], w["address"], r.WORKER); '
        'p = r.proc.run(a.ssh(h, ["true"]), check=False, timeout=20); print(p.returncode, p.stderr)\''
    )
    seen = site.on(site.tracker, reach, timeout=60)
    print(f"the tracker reaches worker-2 after its boot: {seen.stdout.strip()} {seen.stderr.strip()[-500:]}")
    watched = site.lab("sweep", "watch", "ckpt", "--json", timeout=900)
    assert watched.returncode == 0, watched.stderr[-3000:]
    final = json.loads(
        watched.stdout[watched.stdout.rindex("\n{") + 1 :] if "\n{" in watched.stdout else watched.stdout
    )
    log = tracker_file(site, f"{folder}/dispatch.log")
    assert final["status"] == "finished" and final["completed"] == 10, (final, log)

    result = json.loads(tracker_file(site, f"{folder}/result.json"))
    moved = next(t for t in result["trials"] if t["number"] == victim)
    assert moved["state"] == "COMPLETE" and moved["attempts"] >= 2 and moved["resumed_from"], moved
    script = (
        "import mlflow, json; r = mlflow.MlflowClient().get_run('" + moved["run_id"] + "'); "
        "print(json.dumps({'tags': r.data.tags, 'metrics': r.data.metrics, 'x': r.data.params['x']}))"
    )
    ran = site.on(site.workers[0], f'set -a; . /etc/lab/lab.env; /opt/lab/venv/bin/python -c "{script}"', timeout=120)
    run = json.loads(ran.stdout)
    assert run["tags"]["lab.resumes"] == moved["resumed_from"]
    assert int(run["tags"]["resumed_at"]) >= 4, "the retry started after the checkpointed steps, not from zero"
    assert run["metrics"]["total"] == pytest.approx(8 * float(run["x"])), "with the state the checkpoint held"
    lines = log.splitlines()
    lost = next((i for i, line in enumerate(lines) if "slot worker-2/0 lost" in line), None)
    back = next((i for i, line in enumerate(lines) if "slot worker-2/0 is back" in line), None)
    assert lost is not None and back is not None and back > lost, "worker-2 went away and rejoined: " + log
    assert any("started on worker-2/" in line for line in lines[back:]), "and took trials again: " + log


def running_trials(site: Site) -> list[str]:
    return [m for w in site.workers for m in site.on(w, "ls /var/lib/lab/trials").stdout.split() if "hold-" not in m]


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
    from toolkit.tracker import backups

    status = json_of(site.lab("status", "--json"))
    assert status["hosts"]["tracker"]["services"]["lab-mlflow.service"] == "active"
    assert status["hosts"]["worker-1"]["services"]["lab-jupyter.service"] == "active"

    made = json_of(site.lab("backup", "--json"))
    backup = Path(made["path"])
    assert backups.verify(backup).id == made["id"]
    runs = backups.read_manifest(backup).mlflow.counts["runs"]
    assert runs == mlflow_runs_seen_from(site, site.workers[0])

    # A run logged after the backup: the restore must take the tracker back to before it.
    later = (
        "import mlflow; c = mlflow.MlflowClient(); "
        "c.set_terminated(c.create_run(c.create_experiment('later')).info.run_id)"
    )
    logged = site.on(site.workers[0], f'set -a; . /etc/lab/lab.env; /opt/lab/venv/bin/python -c "{later}"', timeout=120)
    assert logged.returncode == 0, logged.stderr
    assert mlflow_runs_seen_from(site, site.workers[0]) == runs + 1

    refused = site.lab("restore", made["id"])
    assert refused.returncode == 1 and "the tracker is running" in refused.stderr
    restored = site.lab("restore", made["id"], "--stop")
    assert restored.returncode == 0, restored.stderr
    assert mlflow_runs_seen_from(site, site.workers[0]) == runs, "the run logged after the backup is gone"
    # stopped with what takes writes for the restore, and started again after it
    assert site.on(site.tracker, "systemctl is-active lab-optuna-dashboard").stdout.strip() == "active"

    down = json_of(site.lab("down", "--json"))
    assert backups.verify(Path(down["backup"]))
    for host in (site.tracker, *site.workers):
        assert site.on(host, "true").returncode == 0, f"{host.name} should still be reachable"
    assert site.on(site.tracker, "systemctl is-active lab-mlflow").stdout.strip() != "active"
    assert site.on(site.tracker, "systemctl is-active lab-optuna-dashboard").stdout.strip() != "active"
    assert site.on(site.workers[0], "systemctl is-active lab-jupyter").stdout.strip() != "active"


def test_idle_worker_powers_itself_off(site):
    site.write_stack(idle_minutes=0.25)  # 15 s: the check's timer (every 20 s) is what the test waits on
    json_of(site.lab("up", "--json"))
    started = time.monotonic()
    # No SSH to the workers from here on: an SSH session counts as activity.
    for number, worker in enumerate(site.workers, start=1):
        assert site.pool.wait_stopped(worker, timeout=330), f"worker-{number} should have powered itself off"
        seconds = time.monotonic() - started
        print(f"idle self-shutdown with lab:idleMinutes=0.25: worker-{number} off {seconds:.0f} s after `lab up`")
    assert site.pool.is_running(site.tracker), "the tracker never powers itself off"
    # Read why from their disks while they are off, and take the timer off those disks: booted with it on, a
    # worker powers itself off again a minute later, while the next module uses it (seen in CI).
    for worker in site.workers:
        disk = site.pool.root_of(worker)
        reason = (disk / "var/log/lab/idle.log").read_text()
        assert "idle" in reason and "power" in reason, f"{worker.name}: {reason}"
        (disk / "etc/systemd/system/timers.target.wants/lab-idle.timer").unlink()
    site.pool.up(3)  # they boot again for the next module, without the idle timer
    for worker in site.workers:
        assert site.on(worker, "systemctl is-enabled lab-idle.timer").stdout.strip() == "disabled"
