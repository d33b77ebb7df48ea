"""The gcp VMs' SSH host keys are pinned from what GCE publishes (guest attributes `hostkeys/`, read through the
Compute API) before the first connection, and SSH to them checks strictly; the ssh target (the user's own
machines) stays trust-on-first-use. Keys are real ones made by ssh-keygen; the known_hosts file is checked
with OpenSSH's own lookup (`ssh-keygen -F`) and the options with `ssh -G`. No sshd runs here, so a refused
key is shown with OpenSSH's own words (sshconnect.c) as ssh prints them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.gcp.gcp_vms import LABELS
from tests.gcp.pulumi_fakes import gcp_settings
from toolkit.hosts import ssh as remote
from toolkit.labs import ssh as remote_lab


def host_key(folder: Path, kind: str, name: str) -> tuple[str, str, str]:
    """A real host key: (type, base64, fingerprint as ssh-keygen prints it)."""
    path = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    kind_name, value = path.with_suffix(".pub").read_text().split()[:2]
    listed = subprocess.run(["ssh-keygen", "-lf", str(path.with_suffix(".pub"))], capture_output=True, text=True)
    return kind_name, value, listed.stdout.split()[1]


def lookup(known_hosts: Path, address: str) -> subprocess.CompletedProcess:
    """OpenSSH's own lookup of a host in a known_hosts file, with fingerprints (-l)."""
    return subprocess.run(
        ["ssh-keygen", "-l", "-F", address, "-f", str(known_hosts)], capture_output=True, text=True, check=False
    )


@pytest.fixture
def keys(tmp_path):
    return {
        "ed25519": host_key(tmp_path, "ed25519", "tracker_ed25519.pub"[:-4]),
        "ecdsa": host_key(tmp_path, "ecdsa", "tracker_ecdsa"),
        "other": host_key(tmp_path, "ed25519", "other_ed25519"),
    }


def test_new_vms_are_pinned_before_the_first_connection(lab_state, fake_gcp, keys):
    (kind, value, print_ed), (kind2, value2, print_ecdsa) = keys["ed25519"], keys["ecdsa"]
    fake_gcp.add("lab-dev-tracker", external_ip="203.0.113.5", labels=LABELS, host_keys={kind: value, kind2: value2})
    fake_gcp.add("lab-dev-worker-0", "us-central1-b", external_ip="203.0.113.6", labels=LABELS)  # not published yet
    said: list[str] = []
    lab = remote_lab.open_lab("dev", "gcp", say=said.append)
    known = lab.access.known_hosts
    found = lookup(known, "203.0.113.5")
    assert found.returncode == 0, found.stderr
    assert print_ed in found.stdout and print_ecdsa in found.stdout
    assert lookup(known, "203.0.113.6").returncode == 1, "nothing is trusted for a VM whose keys are not published"
    assert any("pinned the SSH host keys GCE published for tracker" in line and print_ed in line for line in said)
    assert oct(known.stat().st_mode & 0o777) == "0o600"

    options = subprocess.run(
        ["ssh", "-G", *lab.access.options(), lab.access.login(lab.tracker)], capture_output=True, text=True, check=True
    ).stdout
    assert "stricthostkeychecking true" in options and f"userknownhostsfile {known}" in options


def test_a_restarted_vm_keeps_its_pin_at_its_new_address(lab_state, fake_gcp, keys):
    kind, value, printed = keys["ed25519"]
    tracker = fake_gcp.add("lab-dev-tracker", external_ip="203.0.113.5", labels=LABELS, host_keys={kind: value})
    remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    tracker.external_ip, tracker.host_keys = "203.0.113.99", {}  # stopped and started: new address
    lab = remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    assert printed in lookup(lab.access.known_hosts, "203.0.113.99").stdout
    assert lookup(lab.access.known_hosts, "203.0.113.5").returncode == 1, "the released address is forgotten"
    reads = [p for m, p in fake_gcp.requests if "lab-dev-tracker/getGuestAttributes" in p]
    assert len(reads) == 1, "the same VM (same id) is not asked again"


def test_a_recreated_vm_is_pinned_anew_never_from_the_old_one(lab_state, fake_gcp, keys):
    kind, value, printed = keys["ed25519"]
    _, new_value, new_print = keys["other"]
    fake_gcp.add("lab-dev-tracker", external_ip="203.0.113.5", labels=LABELS, host_keys={kind: value})
    remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    fake_gcp.add("lab-dev-tracker", external_ip="203.0.113.5", labels=LABELS, host_keys={kind: new_value})  # new id
    lab = remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    found = lookup(lab.access.known_hosts, "203.0.113.5").stdout
    assert new_print in found and printed not in found


def test_a_recreated_vm_without_published_keys_is_trusted_for_nothing(lab_state, fake_gcp, keys, monkeypatch):
    kind, value, _ = keys["ed25519"]
    fake_gcp.add("lab-dev-tracker", external_ip="203.0.113.5", labels=LABELS, host_keys={kind: value})
    remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    fake_gcp.add("lab-dev-tracker", external_ip="203.0.113.5", labels=LABELS)  # new id, keys not yet written
    lab = remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    assert lookup(lab.access.known_hosts, "203.0.113.5").returncode == 1
    monkeypatch.setattr(remote_lab, "HOST_KEY_WAIT_S", 0)
    with pytest.raises(remote_lab.LabError) as caught:
        remote_lab.forget_changed_host_keys(lab)  # what `lab up` runs before it first connects
    assert "GCE published no SSH host keys for tracker" in caught.value.one_line()
    assert "enable-guest-attributes=TRUE" in caught.value.one_line()


def test_up_waits_for_the_keys_of_a_new_vm(lab_state, fake_gcp, keys, monkeypatch):
    kind, value, printed = keys["ed25519"]
    tracker = fake_gcp.add("lab-dev-tracker", external_ip="203.0.113.5", labels=LABELS)
    lab = remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    sleeps: list[float] = []

    def agent_writes_them(seconds: float) -> None:  # the guest agent publishes while lab waits
        sleeps.append(seconds)
        tracker.host_keys = {kind: value}

    monkeypatch.setattr(remote_lab.time, "sleep", agent_writes_them)
    remote_lab.forget_changed_host_keys(lab)
    assert sleeps and printed in lookup(lab.access.known_hosts, "203.0.113.5").stdout


def test_keys_trusted_before_pinning_existed_are_kept(lab_state, fake_gcp, keys, isolated):
    kind, value, printed = keys["ed25519"]
    known = isolated / ".lab" / "stacks" / "dev" / "known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text(f"203.0.113.5 {kind} {value}\n198.51.100.77 {kind} {value}\n")
    fake_gcp.add("lab-dev-tracker", external_ip="203.0.113.5", labels=LABELS)  # an old VM: publishes nothing
    lab = remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    assert printed in lookup(lab.access.known_hosts, "203.0.113.5").stdout
    assert lookup(lab.access.known_hosts, "198.51.100.77").returncode == 1, "addresses no longer the lab's go"


def test_down_forgets_keys_and_pins(lab_state, fake_gcp, keys):
    kind, value, _ = keys["ed25519"]
    fake_gcp.add("lab-dev-tracker", external_ip="203.0.113.5", labels=LABELS, host_keys={kind: value})
    lab = remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    assert (lab.root / "hostkeys.json").exists()
    remote_lab.forget_all_host_keys(lab.root)
    assert not (lab.root / "hostkeys.json").exists() and not lab.access.known_hosts.exists()


def test_the_ssh_target_stays_trust_on_first_use(tmp_path):
    access = remote.Access("me", tmp_path / "key", tmp_path / "known_hosts")
    options = subprocess.run(
        ["ssh", "-G", *access.options(), "me@192.0.2.7"], capture_output=True, text=True, check=True
    ).stdout
    assert "stricthostkeychecking accept-new" in options


# What ssh prints (OpenSSH sshconnect.c), as quoted in public threads: a changed key under strict checking, and a
# host with no key under strict checking.
CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Offending ECDSA key in /home/jacky/.ssh/known_hosts:18
Host key for 172.17.0.2 has changed and you have requested strict checking.
Host key verification failed.
"""
UNKNOWN = """No ED25519 host key is known for 203.0.113.5 and you have requested strict checking.
Host key verification failed.
"""


def test_a_refused_host_key_is_one_line_that_says_so(tmp_path):
    host = remote.Host("tracker", "203.0.113.5", remote.TRACKER)
    pinned = remote.Access("lab", tmp_path / "key", tmp_path / "known_hosts", strict=True)
    changed = remote.failure(pinned, host, CHANGED, "no answer")
    assert isinstance(changed, remote.HostKeyRefused)
    line = changed.one_line()
    assert "its host key is not the one known for it" in line and "\n" not in line
    unknown = remote.failure(pinned, host, UNKNOWN, "no answer")
    assert isinstance(unknown, remote.HostKeyRefused) and "no host key is pinned for it" in unknown.one_line()
    plain = remote.failure(pinned, host, "ssh: connect to host 203.0.113.5 port 22: Connection refused\n", "x")
    assert not isinstance(plain, remote.HostKeyRefused) and "Connection refused" in plain.one_line()


def test_guest_attributes_are_switched_on_for_every_vm(tmp_path, isolated):
    from infra import stack_config

    ssh_dir = isolated / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / "id_ed25519")], check=True)
    metadata = stack_config.ssh_metadata(gcp_settings())
    assert metadata["enable-guest-attributes"] == "TRUE"
    assert metadata["block-project-ssh-keys"] == "TRUE" and metadata["enable-oslogin"] == "FALSE"
