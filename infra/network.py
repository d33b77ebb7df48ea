"""The lab's own network: SSH from the allowed ranges, MLflow from workers to the tracker, SSH from the tracker
to the workers (detached sweeps), nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

SUBNET_CIDR = "10.42.0.0/24"
TRACKER_TAG = "lab-tracker"
WORKER_TAG = "lab-worker"


@dataclass(frozen=True)
class LabNetworkArgs:
    prefix: str
    region: str
    allowed_ssh_cidrs: Sequence[str]
    tracker_ports: Sequence[int]
    tracker_service_account: pulumi.Input[str]
    worker_service_account: pulumi.Input[str]


class LabNetwork(pulumi.ComponentResource):
    """A dedicated VPC (not the default network, whose rules open SSH and RDP to the world), one subnet,
    and three ingress rules. GCP's implied rules deny every other inbound packet."""

    def __init__(self, name: str, args: LabNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lab:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.network = gcp.compute.Network(
            name,
            name=f"{args.prefix}-net",
            auto_create_subnetworks=False,
            description="lab: dedicated network",
            opts=child,
        )
        self.subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            name=f"{args.prefix}-subnet",
            region=args.region,
            network=self.network.id,
            ip_cidr_range=SUBNET_CIDR,
            private_ip_google_access=True,
            opts=child,
        )
        self.ssh_rule = gcp.compute.Firewall(
            f"{name}-ssh",
            name=f"{args.prefix}-allow-ssh",
            network=self.network.self_link,
            direction="INGRESS",
            source_ranges=list(args.allowed_ssh_cidrs),
            target_tags=[TRACKER_TAG, WORKER_TAG],
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=["22"])],
            description="SSH to lab VMs from lab:allowedSshCidrs only",
            opts=child,
        )
        self.tracker_rule = gcp.compute.Firewall(
            f"{name}-tracker",
            name=f"{args.prefix}-allow-tracker",
            network=self.network.self_link,
            direction="INGRESS",
            source_tags=[WORKER_TAG],
            target_tags=[TRACKER_TAG],
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(port) for port in args.tracker_ports])],
            description="the tracker's services (MLflow) from lab workers only",
            opts=child,
        )
        # Detached sweeps run on the tracker and reach the workers over SSH. The rule names the VMs by their service
        # accounts, not tags: a tag is set by anyone who may edit an instance, a VM's service account only by who
        # may also act as that account. GCP allows no mix of tags and accounts in one rule.
        self.sweeps_rule = gcp.compute.Firewall(
            f"{name}-sweeps",
            name=f"{args.prefix}-allow-sweeps",
            network=self.network.self_link,
            direction="INGRESS",
            source_service_accounts=[args.tracker_service_account],
            target_service_accounts=[args.worker_service_account],
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=["22"])],
            description="SSH from the tracker (detached sweeps) to lab workers only",
            opts=child,
        )
        self.register_outputs({"network": self.network.id, "subnet": self.subnet.id})
