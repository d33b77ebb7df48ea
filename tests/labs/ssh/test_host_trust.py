"""The ssh target's trust in its hosts, against a real sshd: a host key is trusted on first use and kept in the
stack's own known_hosts, and a host whose key has changed is refused with one line (a machine reinstalled, or
someone in the way) until the user removes the old key. The gcp target pins keys from GCE instead of trusting
the first answer: tests/gcp/test_host_keys.py."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import LAB

pytestmark = pytest.mark.hosts


def test_a_host_key_is_trusted_on_first_use_and_a_changed_one_refused(host_pool, tracker_host, tmp_path):
    stack = tmp_path / "Pulumi.trust.yaml"
    stack.write_text(
        "config:\n"
        "  lab:target: ssh\n"
        f"  lab:trackerHost: {tracker_host.ip}\n"
        "  lab:sshUser: ci\n"
        f"  lab:sshPublicKeyPath: {host_pool.key}.pub\n"
    )
    home = tmp_path / "lab-home"
    home.mkdir()
    # Its own folder for lab's shared SSH connections (ControlPersist): one an earlier test left open to this host
    # would be used without a host key exchange, and nothing would be learnt or checked.
    env = {
        **os.environ,
        "LAB_HOME": str(home),
        "COLUMNS": "200",
        "TMPDIR": tempfile.mkdtemp(prefix="trust-", dir="/tmp"),
    }
    known_hosts = home / "stacks" / "trust" / "known_hosts"

    def lab_ssh(*command: str) -> subprocess.CompletedProcess[str]:
        argv = [str(LAB), "ssh", "--stack", str(stack), "tracker", "--", *command]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)

    def known_fingerprints() -> str:
        return subprocess.run(
            ["ssh-keygen", "-l", "-F", tracker_host.ip, "-f", str(known_hosts)], capture_output=True, text=True
        ).stdout

    first = lab_ssh("true")
    assert first.returncode == 0, first.stderr
    trusted = known_fingerprints()
    assert "ED25519" in trusted, "the host's key is kept in the stack's own known_hosts"
    assert lab_ssh("true").returncode == 0, "and it is still the one the host shows"

    # The machine gets new host keys (a reinstall, or someone answering in its place).
    changed = host_pool.ssh(
        tracker_host,
        "rm -f /etc/ssh/ssh_host_*key* && ssh-keygen -A >/dev/null && systemctl restart ssh",
        check=False,
        timeout=60,
    )
    assert changed.returncode == 0, changed.stderr
    # A connection lab already has open (ControlPersist) is to the machine as it was: start afresh.
    env["TMPDIR"] = tempfile.mkdtemp(prefix="trust-", dir="/tmp")
    # Every command that reaches the host refuses it (`lab ssh` hands the terminal to ssh, which prints
    # OpenSSH's own warning; the others say it in one line).
    assert lab_ssh("true").returncode == 255
    refused = subprocess.run(
        [str(LAB), "backup", "--stack", str(stack)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach tracker ({tracker_host.ip}) over SSH"), lines
    assert "its host key is not the one known for it, so the connection was refused" in lines[0]
    assert known_fingerprints() == trusted, "the old key is not replaced behind the user's back"

    # What the user does once they know why the key changed: forget it; the next connection trusts the new one.
    subprocess.run(["ssh-keygen", "-R", tracker_host.ip, "-f", str(known_hosts)], capture_output=True, check=True)
    again = lab_ssh("cat", "/etc/hostname")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "c1"
    assert known_fingerprints() not in ("", trusted)
    Path(str(known_hosts) + ".old").unlink(missing_ok=True)
