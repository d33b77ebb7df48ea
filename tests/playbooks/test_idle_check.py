"""lab-idle-check (the lab_idle role's script) against a fake /proc, fake trials, a fake Jupyter and a fake
systemctl: it never powers this machine off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.conftest import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "playbooks/roles/lab_idle/files/lab-idle-check.py"
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
BOOTED = 1_700_000_000  # the fake host's boot time (epoch seconds)


def pid1_stat(start_ticks: int) -> str:
    """/proc/1/stat with PID 1's start time (field 22, in clock ticks after the boot)."""
    return "1 (systemd) S " + " ".join(["0"] * 18) + f" {start_ticks} 0 0\n"


def tcp_line(local_port: int, state: str) -> str:
    return f"   0: 0B00C80A:{local_port:04X} 0C00C80A:D2F0 {state} 00000000:00000000 00:00000000 00000000 0 0 1 1\n"


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    """A fake host: /proc (booted at BOOTED, no connection, no process), trials, state, log, PATH."""
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "net").mkdir()
    (proc / "stat").write_text(f"cpu  1 2 3\nbtime {BOOTED}\n")
    (proc / "1" / "stat").write_text(pid1_stat(5 * os.sysconf("SC_CLK_TCK")))
    (proc / "net" / "tcp").write_text(TCP_HEADER)
    (proc / "net" / "tcp6").write_text(TCP_HEADER)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl-calls"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    (tmp_path / "trials").mkdir()
    return {
        "proc": proc,
        "bin": bin_dir,
        "calls": calls,
        "trials": tmp_path / "trials",
        "state": tmp_path / "last-active",
        "log": tmp_path / "idle.log",
        "env": tmp_path / "jupyter.env",
    }


def check(host: dict[str, Path], *extra: str, minutes: float = 1, jupyter_port: int | None = None) -> dict:
    argv = [sys.executable, str(SCRIPT), "--minutes", str(minutes), "--proc", str(host["proc"])]
    argv += ["--trials", str(host["trials"]), "--state", str(host["state"]), "--log", str(host["log"])]
    argv += ["--jupyter-env", str(host["env"]), "--jupyter-port", str(jupyter_port or free_port()), *extra]
    env = {"PATH": str(host["bin"]), "HOME": str(host["bin"])}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "--dry-run" in extra else {"stdout": done.stdout}


def test_an_idle_host_past_the_limit_powers_off_and_says_why(host):
    host["state"].write_text(f"{BOOTED + 60}\n")
    seen = check(host, "--dry-run")
    assert seen["busy"] == [] and seen["would_power_off"], seen
    assert seen["checks"]["gpu"] == {"busy": False, "seen": "no nvidia-smi"}

    out = check(host)["stdout"]
    assert host["calls"].read_text().split() == ["poweroff"]
    assert out.startswith("powering off: idle for ")
    logged = host["log"].read_text()
    assert "powering off" in logged and "ssh: no SSH session" in logged and "(limit 1 min)" in logged


def test_recent_activity_or_a_recent_boot_keeps_the_host_on(host):
    host["state"].write_text(f"{time.time() - 30:.0f}\n")
    seen = check(host, "--dry-run")
    assert seen["busy"] == [] and not seen["would_power_off"] and 25 <= seen["idle_for_s"] <= 60, seen
    # an old last-activity from before this boot counts from the boot instead
    host["state"].write_text(f"{BOOTED - 3600}\n")
    just_booted = time.time() - BOOTED - 10  # PID 1 started 10 s ago
    (host["proc"] / "1" / "stat").write_text(pid1_stat(int(just_booted * os.sysconf("SC_CLK_TCK"))))
    seen = check(host, "--dry-run")
    assert not seen["would_power_off"] and seen["idle_for_s"] < 60, seen
    check(host)
    assert not host["calls"].exists()


def test_minutes_zero_does_nothing(host):
    check(host, minutes=0)
    assert not host["calls"].exists() and not host["state"].exists() and not host["log"].exists()


def test_a_live_trial_is_busy_and_recorded_and_a_stale_one_is_not(host):
    (host["trials"] / "run-1").write_text(f"{os.getpid()}\n")
    seen = check(host, "--dry-run")
    assert seen["busy"] == ["trials"] and seen["checks"]["trials"]["seen"].startswith("1 running trial file"), seen
    before = time.time()
    check(host)
    assert float(host["state"].read_text()) >= before - 1 and not host["calls"].exists()

    dead = subprocess.Popen(["true"])
    dead.wait()
    (host["trials"] / "run-1").write_text(json.dumps({"pid": dead.pid}))
    seen = check(host, "--dry-run")
    assert "trials" not in seen["busy"] and "1 stale file" in seen["checks"]["trials"]["seen"], seen


def test_a_papermill_process_is_busy(host):
    (host["proc"] / "4242").mkdir()
    (host["proc"] / "4242" / "cmdline").write_bytes(
        b"/opt/lab/venv/bin/python\0/opt/lab/venv/bin/papermill\0nb.ipynb\0"
    )
    seen = check(host, "--dry-run")
    assert seen["busy"] == ["trials"] and "1 papermill process" in seen["checks"]["trials"]["seen"], seen


def test_an_established_ssh_connection_is_busy_and_a_listening_socket_is_not(host):
    (host["proc"] / "net" / "tcp").write_text(TCP_HEADER + tcp_line(22, "0A"))  # LISTEN
    assert check(host, "--dry-run")["busy"] == []
    (host["proc"] / "net" / "tcp6").write_text(TCP_HEADER + tcp_line(22, "01") + tcp_line(2222, "01"))
    seen = check(host, "--dry-run")
    assert seen["busy"] == ["ssh"] and seen["checks"]["ssh"]["seen"] == "1 SSH connection(s)", seen
    assert check(host, "--dry-run", "--ssh-port", "2222")["busy"] == ["ssh"]


def test_gpu_use_is_busy(host):
    fake = host["bin"] / "nvidia-smi"
    fake.write_text('#!/bin/sh\ncase "$1" in --query-gpu=*) echo 0; echo 37 ;; *) ;; esac\n')
    fake.chmod(0o755)
    seen = check(host, "--dry-run")
    assert seen["busy"] == ["gpu"] and seen["checks"]["gpu"]["seen"].startswith("utilization 0,37%"), seen
    fake.write_text('#!/bin/sh\ncase "$1" in --query-gpu=*) echo 0 ;; *) ;; esac\n')
    assert check(host, "--dry-run")["checks"]["gpu"] == {"busy": False, "seen": "1 GPU(s) at 0%, no compute process"}
    fake.write_text('#!/bin/sh\ncase "$1" in --query-gpu=*) echo 0 ;; *) echo 1234 ;; esac\n')
    assert check(host, "--dry-run")["busy"] == ["gpu"]
    fake.write_text("#!/bin/sh\nexit 9\n")  # a broken driver must not keep the host on
    assert check(host, "--dry-run")["checks"]["gpu"]["busy"] is False


class FakeJupyter(BaseHTTPRequestHandler):
    kernels: ClassVar[list[dict]] = []
    accepted = "token s3cret"

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.accepted:
            self.send_response(403)
            self.end_headers()
            return
        body = json.dumps(self.kernels).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_busy_jupyter_kernel_is_busy_and_a_silent_jupyter_is_not(host):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJupyter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        host["env"].write_text("JUPYTER_TOKEN=s3cret\n")
        FakeJupyter.kernels = [{"id": "a", "execution_state": "idle"}, {"id": "b", "execution_state": "busy"}]
        seen = check(host, "--dry-run", jupyter_port=port)
        assert seen["busy"] == ["jupyter"] and seen["checks"]["jupyter"]["seen"] == "1 of 2 kernel(s) busy", seen
        FakeJupyter.kernels = [{"id": "a", "execution_state": "idle"}]
        assert check(host, "--dry-run", jupyter_port=port)["busy"] == []
        host["env"].write_text("JUPYTER_TOKEN=wrong\n")  # 403: counted as not answering
        FakeJupyter.kernels = [{"id": "b", "execution_state": "busy"}]
        seen = check(host, "--dry-run", jupyter_port=port)
        assert seen["busy"] == [] and "did not answer" in seen["checks"]["jupyter"]["seen"], seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_sweep_holding_the_worker_keeps_it_on_until_its_hold_goes_stale(host):
    """A sweep with trials queued for a worker touches hold-<sweep> every minute (toolkit.sweeps.workers.hold): the
    worker is busy while that file is younger than --hold-minutes, whatever else it does between two trials."""
    host["state"].write_text(f"{BOOTED + 60}\n")  # idle for long: it would power off
    hold = host["trials"] / "hold-resnet-sweep"
    hold.touch()
    seen = check(host, "--dry-run", "--hold-minutes", "5")
    assert seen["busy"] == ["sweeps"] and not seen["would_power_off"], seen
    assert seen["checks"]["sweeps"] == {"busy": True, "seen": "held by sweep(s) resnet-sweep"}
    assert seen["checks"]["trials"]["seen"].startswith("no running trial (0 stale file(s))"), "a hold is no trial"
    check(host, "--hold-minutes", "5")
    assert not host["calls"].exists() and float(host["state"].read_text()) >= time.time() - 5

    host["state"].write_text(f"{BOOTED + 60}\n")
    six_minutes_ago = time.time() - 6 * 60
    os.utime(hold, (six_minutes_ago, six_minutes_ago))  # the sweep ended or died: it touches it no more
    seen = check(host, "--dry-run", "--hold-minutes", "5")
    assert seen["busy"] == [] and seen["would_power_off"], seen
    assert seen["checks"]["sweeps"] == {"busy": False, "seen": "no sweep holds it (1 stale hold file(s))"}
    assert check(host, "--dry-run", "--hold-minutes", "10")["busy"] == ["sweeps"], "the limit is the option's"
    far_ahead = time.time() + 3600  # a file dated far in the future holds nothing
    os.utime(hold, (far_ahead, far_ahead))
    assert check(host, "--dry-run")["busy"] == []
    check(host, "--hold-minutes", "5")
    assert host["calls"].read_text().split() == ["poweroff"]
    assert "sweeps: no sweep holds it" in host["log"].read_text()


def test_holds_and_trial_markers_side_by_side(host):
    (host["trials"] / "run-1").write_text(f"{os.getpid()}\n")
    (host["trials"] / "hold-a").touch()
    (host["trials"] / "hold-b").touch()
    seen = check(host, "--dry-run")
    assert seen["busy"] == ["trials", "sweeps"], seen
    assert seen["checks"]["sweeps"]["seen"] == "held by sweep(s) a, b"
    assert seen["checks"]["trials"]["seen"].startswith("1 running trial file(s)")
