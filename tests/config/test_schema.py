"""The configuration rules, on raw values as a stack file and as Pulumi's runtime give them."""

from __future__ import annotations

import pytest

from toolkit.config import schema

GOOD = {
    "gcp:project": "my-gcp-project",
    "gcp:region": "us-central1",
    "gcp:zone": "us-central1-a",
    "lab:allowedSshCidrs": ["203.0.113.0/24"],
}


def problems(**changes) -> list[str]:
    raw = {**GOOD, **{k if ":" in k else f"lab:{k}": v for k, v in changes.items()}}
    raw = {k: v for k, v in raw.items() if v is not None}
    return [str(p) for p in schema.resolve(raw, stack="dev").problems]


def test_good_stack_has_no_problems_and_defaults():
    resolution = schema.resolve(GOOD, stack="dev")
    assert resolution.problems == []
    settings = resolution.settings
    assert settings.workers == 1 and settings.spot is True and settings.runs_per_gpu == 1
    assert settings.zones == ("us-central1-a",)
    assert settings.worker_gpus.gpu == "nvidia-tesla-a100" and settings.worker_gpus.count == 1


def test_runtime_strings_are_read_like_yaml_values():
    raw = {**GOOD, "lab:workers": "3", "lab:spot": "false", "lab:allowedSshCidrs": '["198.51.100.0/24"]'}
    settings = schema.resolve(raw, stack="dev").settings
    assert settings.workers == 3 and settings.spot is False
    assert settings.allowed_ssh_cidrs == ("198.51.100.0/24",)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"wokers": 2}, "lab:wokers: unknown key; did you mean lab:workers?"),
        ({"gcp:regoin": "x"}, "gcp:regoin: unknown key; did you mean gcp:region?"),
        ({"lab:Spot": True}, "lab:Spot: unknown key; did you mean lab:spot?"),
        ({"workers": 1.5}, "lab:workers: expected a whole number, got 1.5"),
        ({"workers": True}, "lab:workers: expected a whole number, got true"),
        ({"allowedSshCidrs": "203.0.113.0/24"}, "lab:allowedSshCidrs: expected a list"),
        ({"target": "aws"}, "lab:target: 'aws' is not a target; choose one of gcp, ssh, local"),
        ({"gcp:project": None}, "gcp:project: required for the gcp target; set it in the stack file"),
        ({"gcp:project": "My_Project"}, "gcp:project: 'My_Project' is not a project id"),
        ({"zones": ["us-central1-b", "us-east1-b"]}, "lab:zones: zone us-east1-b is not in region us-central1"),
        ({"gcp:zone": "uscentral1a"}, "gcp:zone: 'uscentral1a' is not a zone name"),
        ({"workerMachineType": "e2-standard-8"}, "lab:workerMachineType: e2-standard-8 has no GPUs"),
        ({"workerMachineType": "g2-standard-8", "workerGpu": "nvidia-l4"}, "comes with its own GPUs"),
        (
            {"workerMachineType": "n1-standard-8", "workerGpu": "nvidia-l4"},
            "nvidia-l4 cannot be attached to n1-standard-8",
        ),
        (
            {"workerMachineType": "n1-standard-8", "workerGpu": "nvidia-tesla-t4", "workerGpuCount": 3},
            "lab:workerGpuCount 3 is not offered for nvidia-tesla-t4; choose 1, 2, 4",
        ),
        ({"allowedSshCidrs": ["::/0"]}, "::/0 opens SSH to the whole internet"),
        ({"allowedSshCidrs": ["2001:db8::/32"]}, "have IPv4 addresses only"),
        ({"allowedSshCidrs": ["203.0.113.5/24"]}, "203.0.113.5/24 has host bits set; did you mean 203.0.113.0/24?"),
        ({"allowedSshCidrs": ["example.com"]}, "'example.com' is not an address range"),
        ({"allowedSshCidrs": []}, "lab:allowedSshCidrs: required for the gcp target"),
        ({"bucketName": "Bad_Bucket!"}, "lab:bucketName: 'Bad_Bucket!' is not a valid bucket name"),
        ({"sshUser": "root"}, "lab:sshUser: 'root' is not a usable login name"),
        ({"idleMinutes": -5}, "lab:idleMinutes: must be at least 0, got -5"),
        ({"runsPerGpu": 0}, "lab:runsPerGpu: must be at least 1, got 0"),
        ({"workerDiskGb": 5}, "lab:workerDiskGb: must be at least 10, got 5"),
        ({"stateBackend": "s3://x"}, "lab:stateBackend: 's3://x' is not a state backend; use file://FOLDER or gs://"),
        ({"stateBackend": "gs://Bad_Bucket"}, "lab:stateBackend: 'Bad_Bucket' is not a valid bucket name"),
        ({"stateBackend": "file://relative/dir"}, "needs an absolute folder"),
        ({"secretsProvider": "awskms://k"}, "lab:secretsProvider: 'awskms://k' is neither passphrase nor a KMS key"),
        (
            {"replica": "/srv/replica"},
            "lab:replica: '/srv/replica' is not a replica URL; use one of gs, s3, file",
        ),
        ({"replica": "file://relative"}, "lab:replica: 'file://relative' needs an absolute folder"),
        ({"replica": "gs:///replica"}, "lab:replica: 'gs:///replica' names no bucket or host"),
        ({"replica": "s3://b/r?endpoin=http://h:9000"}, "unknown option 'endpoin'; an s3:// replica takes endpoint,"),
        ({"replica": "s3://b/r?forcePathStyle=yes"}, "forcePathStyle is true or false, got 'yes'"),
        ({"replica": "s3://b/r?endpoint=minio host"}, "endpoint 'minio host' is not http(s)://HOST[:PORT]"),
        ({"replica": "gs://b/r?endpoint=http://h"}, "a gs:// replica takes no options"),
        ({"replica": "s3://key:hunter2@nas/replica"}, "holds a password; the stack file is no place for one"),
        ({"replica": "sftp://lab@nas/srv/replica"}, "an sftp:// replica is not supported: Litestream signs in"),
        ({"replicaSyncInterval": "1x"}, "lab:replicaSyncInterval: '1x' is not a sync interval from 100ms to 10m;"),
        ({"replicaSyncInterval": "10ms"}, "lab:replicaSyncInterval: '10ms' is not a sync interval from 100ms to 10m;"),
        ({"replicaSyncInterval": "2h"}, "write e.g. 250ms, 1s or 10s"),
        ({"replicaSyncInterval": 5}, "lab:replicaSyncInterval: expected text"),
    ],
)
def test_each_rule_names_the_key(changes, expected):
    found = problems(**changes)
    assert any(expected in p for p in found), found


def test_state_backends_and_kms_keys_that_are_accepted():
    kms = "gcpkms://projects/p/locations/global/keyRings/lab/cryptoKeys/state"
    for backend in ("gs://my-lab-state", "file:///srv/pulumi", "file://~/.lab/pulumi"):
        assert problems(stateBackend=backend, secretsProvider=kms) == []
    settings = schema.resolve(GOOD, stack="dev").settings
    assert settings.state_backend is None and settings.secrets_provider == "passphrase"


def test_replica_urls_that_are_accepted():
    for url in (
        "gs://my-lab/replica/dev",
        "file:///srv/replica",
        "s3://lab-replica/dev",
        # S3-compatible stores: the options Litestream's S3 client reads from the query string
        "s3://lab-replica/dev?endpoint=http://127.0.0.1:9000&region=us-east-1&forcePathStyle=true",
        "s3://lab-replica/dev?endpoint=https://acct.r2.cloudflarestorage.com&region=auto",
    ):
        assert problems(replica=url) == [], url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///", "the root folder"),
        ("file:///etc", "a system folder"),
        ("file:///etc/lab", "a system folder"),
        ("file:///usr/local/replica", "a system folder"),
        ("file:///bin", "a system folder"),
        ("file:///sbin", "a system folder"),
        ("file:///lib64", "a system folder"),
        ("file:///boot/r", "a system folder"),
        ("file:///dev/shm/r", "a system folder"),
        ("file:///proc", "a system folder"),
        ("file:///sys/fs", "a system folder"),
        ("file:///run/lab", "a system folder"),
        ("file:///root/replica", "a system folder"),
        ("file:///var", "a system folder"),
        ("file:///var/lib/dpkg", "a system folder"),
        ("file:///var/tmp", "a system folder"),
        ("file:///home", "a system folder"),
        ("file:///srv", "a system folder"),
        ("file:///tmp", "a system folder"),
        ("file:///opt", "a system folder"),
        ("file:///home/alice", "a user's home folder"),
        ("file://~", "a user's home folder"),
        ("file:///home/alice/.ssh", "a user's SSH folder"),
        ("file://~/.ssh/replica", "a user's SSH folder"),
        ("file:///srv/lab", "the lab's own folder"),
        ("file:///srv/lab/tracker", "the lab's own folder"),
        ("file:///srv/lab/backups/r", "the lab's own folder"),
        ("file:///opt/lab/venv", "the lab's own folder"),
        ("file:///srv/r/../../etc", "'..'"),
        ("file://~root/r", "'~user'"),
    ],
)
def test_a_file_replica_in_a_system_or_lab_folder_is_refused(url, why):
    """The role makes a file:// replica's folder the tracker user's (chown): never a folder the system, a user or
    the lab itself needs (issue 26, finding 7)."""
    found = problems(replica=url)
    assert len(found) == 1 and found[0].startswith(f"lab:replica: {url!r} is ") and why in found[0], found
    assert "\n" not in found[0] and "choose a folder of its own" in found[0]


def test_a_file_replica_in_a_folder_of_its_own_is_accepted():
    for url in (
        "file:///srv/replica",
        "file:///srv/lab/replica",
        "file:///var/tmp/lab-replica",
        "file:///data/replica",
        "file:///home/alice/lab-replica",
        "file://~/.lab/stacks/dev/replica",
        "file:///tmp/pytest-of-me/r",
        "file:///mnt/nas/replica",
        "file:///replica",
    ):
        assert problems(replica=url) == [], url


def test_every_problem_is_reported_not_just_the_first():
    found = problems(workers=-1, spot="maybe", workerz=2, allowedSshCidrs=["0.0.0.0/0"])
    assert len(found) == 4, found


def test_secrets_are_accepted_without_being_read():
    resolution = schema.resolve(
        {**GOOD, "gcp:credentials": {"secure": "v1:abc"}, "lab:sshUser": {"secure": "v1:xyz"}}, stack="dev"
    )
    assert resolution.problems == []
    assert str(resolution.values["lab:sshUser"]) == "[secret]"


def test_single_host_ip_is_a_32():
    assert problems(allowedSshCidrs=["198.51.100.7"]) == []


@pytest.mark.parametrize(
    "cidrs",
    [
        ["0.0.0.0/1", "128.0.0.0/1"],  # the whole internet in two halves, neither of them a /0
        ["10.0.0.0/7"],  # one range wider than a /8
        ["11.0.0.0/8", "12.0.0.0/8"],  # two /8s: each allowed, together too wide
        [f"{n}.0.0.0/9" for n in range(20, 23)],  # three half-/8s
    ],
)
def test_ssh_ranges_wider_than_a_slash_8_are_refused_alone_or_together(cidrs):
    found = problems(allowedSshCidrs=cidrs)
    assert found and all(p.startswith("lab:allowedSshCidrs: ") for p in found), found
    assert any("addresses" in p and "/8" in p for p in found), found


def test_a_slash_8_is_allowed_with_a_warning_and_a_slash_24_without():
    resolution = schema.resolve({**GOOD, "lab:allowedSshCidrs": ["10.0.0.0/8"]}, stack="dev")
    assert resolution.problems == []
    assert [str(w) for w in resolution.warnings] == [
        "lab:allowedSshCidrs: 10.0.0.0/8 lets 16,777,216 addresses try SSH (wider than a /24); is it only yours?"
    ]
    resolution = schema.resolve({**GOOD, "lab:allowedSshCidrs": ["198.51.100.0/22", "203.0.113.0/24"]}, stack="dev")
    assert resolution.problems == [] and [w.message.split()[0] for w in resolution.warnings] == ["198.51.100.0/22"]
    assert schema.resolve(GOOD, stack="dev").warnings == []


@pytest.mark.parametrize(
    ("machine_type", "gpu", "count"),
    [
        ("a2-highgpu-1g", "nvidia-tesla-a100", 1),
        ("a2-highgpu-4g", "nvidia-tesla-a100", 4),
        ("a2-ultragpu-2g", "nvidia-a100-80gb", 2),
        ("g2-standard-8", "nvidia-l4", 1),
        ("g2-standard-48", "nvidia-l4", 4),
        ("a3-highgpu-8g", "nvidia-h100-80gb", 8),
    ],
)
def test_gpus_built_into_machine_types(machine_type, gpu, count):
    settings = schema.resolve({**GOOD, "lab:workerMachineType": machine_type}, stack="dev").settings
    assert (settings.worker_gpus.gpu, settings.worker_gpus.count, settings.worker_gpus.attached) == (gpu, count, False)


def test_derived_names_fit_gcp_limits():
    settings = schema.resolve(GOOD, stack="A_Very.Long-Stack-Name-That-Goes-On-And-On-Forever").settings
    assert 6 <= len(settings.tracker_account_id) <= 30 and 6 <= len(settings.worker_account_id) <= 30
    assert len(settings.name_prefix) <= 44
    assert settings.labels["lab"] == "a-very-long-stack-name-that-goes-on-and-on-forever"
    assert len(settings.bucket_name) <= 63


def test_pulumi_gcps_attribution_label_key_is_known_and_terraforms_is_not():
    """pulumi-gcp's switch for its goog-pulumi-provisioned label is gcp:addPulumiAttributionLabel (pulumi_gcp/config/
    vars.py; GCP 8.0 migration guide, "Default label"); Terraform's add_terraform_attribution_label has no pulumi-gcp
    key, so a stack that sets it sets nothing."""
    assert problems(**{"gcp:addPulumiAttributionLabel": False}) == []
    assert problems(**{"gcp:addTerraformAttributionLabel": False}) == [
        "gcp:addTerraformAttributionLabel: unknown key; did you mean gcp:addPulumiAttributionLabel?"
    ]
