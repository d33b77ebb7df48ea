"""The GPU workers: spot (or standard) VMs with the lab's GPUs, image and SSH key."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
from network import WORKER_TAG

from toolkit.config.machines import GpuShape, boot_disk_type

# Workers read the bucket's datasets and never write it (their account's grant says the same).
WORKER_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_only"]


@dataclass(frozen=True)
class WorkerPoolArgs:
    prefix: str
    count: int
    machine_type: str
    gpus: GpuShape | None
    spot: bool
    image: str
    disk_gb: int
    zone: str
    subnet: pulumi.Input[str]
    service_account: pulumi.Input[str]
    metadata: dict[str, str]
    labels: dict[str, str]


def scheduling(spot: bool) -> gcp.compute.InstanceSchedulingArgs:
    """GPU VMs cannot live-migrate: they terminate on host maintenance. Spot VMs are stopped, not
    deleted, when reclaimed, and stay stopped until `lab up` starts them again."""
    if spot:
        return gcp.compute.InstanceSchedulingArgs(
            provisioning_model="SPOT",
            preemptible=True,
            automatic_restart=False,
            on_host_maintenance="TERMINATE",
            instance_termination_action="STOP",
        )
    return gcp.compute.InstanceSchedulingArgs(
        provisioning_model="STANDARD",
        preemptible=False,
        automatic_restart=True,
        on_host_maintenance="TERMINATE",
    )


def instance_name(prefix: str, index: int) -> str:
    """A worker VM's name: <prefix>-worker-<index> (the tracker's IAM condition names them too)."""
    return f"{prefix}-worker-{index}"


class WorkerPool(pulumi.ComponentResource):
    """`count` identical workers, named <prefix>-worker-<i>."""

    def __init__(self, name: str, args: WorkerPoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lab:infra:WorkerPool", name, None, opts)
        accelerators = None
        if args.gpus is not None and args.gpus.attached:
            accelerators = [gcp.compute.InstanceGuestAcceleratorArgs(type=args.gpus.gpu, count=args.gpus.count)]
        self.instances: list[gcp.compute.Instance] = []
        for index in range(args.count):
            self.instances.append(
                gcp.compute.Instance(
                    f"{name}-{index}",
                    name=instance_name(args.prefix, index),
                    machine_type=args.machine_type,
                    zone=args.zone,
                    tags=[WORKER_TAG],
                    labels={**args.labels, "role": "worker"},
                    boot_disk=gcp.compute.InstanceBootDiskArgs(
                        auto_delete=True,
                        initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                            image=args.image, size=args.disk_gb, type=boot_disk_type(args.machine_type)
                        ),
                    ),
                    guest_accelerators=accelerators,
                    network_interfaces=[
                        gcp.compute.InstanceNetworkInterfaceArgs(
                            subnetwork=args.subnet,
                            access_configs=[gcp.compute.InstanceNetworkInterfaceAccessConfigArgs()],
                        )
                    ],
                    scheduling=scheduling(args.spot),
                    service_account=gcp.compute.InstanceServiceAccountArgs(
                        email=args.service_account, scopes=WORKER_SCOPES
                    ),
                    # Deep Learning VM images install the NVIDIA driver on first boot when asked to.
                    metadata={**args.metadata, "install-nvidia-driver": "True"},
                    allow_stopping_for_update=True,
                    # A preempted (stopped) worker is started again by the next `lab up`.
                    desired_status="RUNNING",
                    # Names are fixed, so a replacement must delete the old VM first.
                    opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
                )
            )
        self.names = [vm.name for vm in self.instances]
        self.statuses = [vm.current_status for vm in self.instances]
        self.internal_ips = [vm.network_interfaces.apply(lambda nics: nics[0].network_ip) for vm in self.instances]
        self.external_ips = [
            vm.network_interfaces.apply(
                lambda nics: nics[0].access_configs[0].nat_ip if nics[0].access_configs else None
            )
            for vm in self.instances
        ]
        self.register_outputs({"names": self.names})
