"""A gcp lab that is up: the outputs of its last `lab up` (names, zones, addresses as the program exports them,
infra/__main__.py) and its VMs' label, for the tests of live hosts and host keys."""

from __future__ import annotations

OUTPUTS = {
    "project": "my-gcp-project",
    "zone": "us-central1-a",
    "worker_zone": "us-central1-b",
    "tracker_name": "lab-dev-tracker",
    "worker_names": ["lab-dev-worker-0", "lab-dev-worker-1"],
    "tracker_external_ip": "198.51.100.10",
    "worker_external_ips": ["198.51.100.11", "198.51.100.12"],
    "bucket_name": "my-gcp-project-lab-dev",
}
RESOURCES = [
    ("gcp:compute/instance:Instance", "tracker"),
    ("gcp:compute/instance:Instance", "worker-0"),
    ("gcp:compute/instance:Instance", "worker-1"),
]
LABELS = {"lab": "dev", "managed-by": "lab"}
