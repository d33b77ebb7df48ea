"""The tracker VM: standard provisioning, a static internal address, and a data disk of its own."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
from network import TRACKER_TAG

TRACKER_IMAGE = "debian-cloud/debian-12"
TRACKER_BOOT_DISK_GB = 20
DATA_DEVICE = "lab-data"  # appears as /dev/disk/by-id/google-lab-data on the VM
# OAuth scopes cap what a VM's token may do, on top of its account's IAM grants.
# The compute scope lets its token reach the Compute API, where its IAM grant allows only the worker VMs
# (infra/identity.py): a detached sweep starts preempted workers again.
TRACKER_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write", "https://www.googleapis.com/auth/compute"]


@dataclass(frozen=True)
class TrackerArgs:
    prefix: str
    machine_type: str
    zone: str
    region: str
    disk_gb: int
    subnet: pulumi.Input[str]
    service_account: pulumi.Input[str]
    metadata: dict[str, str]
    labels: dict[str, str]


class Tracker(pulumi.ComponentResource):
    """The small persistent VM that holds MLflow and the Optuna studies. Never preemptible: it is the
    lab's memory. Its SQLite lives on a separate disk, so replacing the VM keeps the data."""

    def __init__(self, name: str, args: TrackerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lab:infra:Tracker", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = {**args.labels, "role": "tracker"}
        self.address = gcp.compute.Address(
            f"{name}-internal",
            name=f"{args.prefix}-tracker-internal",
            address_type="INTERNAL",
            subnetwork=args.subnet,
            region=args.region,
            labels=labels,
            opts=child,
        )
        self.data_disk = gcp.compute.Disk(
            f"{name}-data",
            name=f"{args.prefix}-tracker-data",
            zone=args.zone,
            size=args.disk_gb,
            type="pd-balanced",
            labels=labels,
            opts=child,
        )
        self.instance = gcp.compute.Instance(
            name,
            name=f"{args.prefix}-tracker",
            machine_type=args.machine_type,
            zone=args.zone,
            tags=[TRACKER_TAG],
            labels=labels,
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=TRACKER_IMAGE, size=TRACKER_BOOT_DISK_GB, type="pd-balanced"
                ),
            ),
            attached_disks=[gcp.compute.InstanceAttachedDiskArgs(source=self.data_disk.id, device_name=DATA_DEVICE)],
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    subnetwork=args.subnet,
                    network_ip=self.address.address,
                    access_configs=[gcp.compute.InstanceNetworkInterfaceAccessConfigArgs()],
                )
            ],
            scheduling=gcp.compute.InstanceSchedulingArgs(
                provisioning_model="STANDARD",
                preemptible=False,
                automatic_restart=True,
                on_host_maintenance="MIGRATE",
            ),
            service_account=gcp.compute.InstanceServiceAccountArgs(email=args.service_account, scopes=TRACKER_SCOPES),
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True
            ),
            metadata=args.metadata,
            allow_stopping_for_update=True,
            # Kept running: a tracker stopped (a no-SSH `lab down` whose backup failed, a maintenance stop) is started
            # again by the next `lab up`. The provider reconciles status only when this is set (its Read copies the
            # live status into desired_status only then: terraform-provider-google resource_compute_instance.go), and
            # `lab up` refreshes first, so a TERMINATED tracker is a diff that Update answers with instances.start.
            desired_status="RUNNING",
            opts=child,
        )
        self.name = self.instance.name
        self.status = self.instance.current_status
        self.internal_ip = self.address.address
        self.external_ip = self.instance.network_interfaces.apply(
            lambda nics: nics[0].access_configs[0].nat_ip if nics and nics[0].access_configs else None
        )
        self.register_outputs({"name": self.name, "internal_ip": self.internal_ip})
