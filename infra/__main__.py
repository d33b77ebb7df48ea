"""The lab on GCP: network, identity, tracker and workers, and the outputs the toolkit reads. Everything here goes at
`lab down`; the artifact bucket, which must outlive it, is the persistent stack's (infra/persistent/), made first."""

import pulumi
import stack_config
from identity import LabIdentity, LabIdentityArgs
from network import LabNetwork, LabNetworkArgs
from tracker import Tracker, TrackerArgs
from workers import WorkerPool, WorkerPoolArgs, instance_name

settings = stack_config.load()
prefix = settings.name_prefix
metadata = stack_config.ssh_metadata(settings)
choices = stack_config.run_choices(settings)

identity = LabIdentity(
    "vms",
    LabIdentityArgs(
        tracker_account_id=settings.tracker_account_id,
        worker_account_id=settings.worker_account_id,
        bucket=settings.bucket_name,
        project=settings.project,
        prefix=prefix,
        worker_zone=choices.worker_zone,
        worker_instances=tuple(instance_name(prefix, index) for index in range(settings.workers)),
    ),
)
network = LabNetwork(
    "network",
    LabNetworkArgs(
        prefix=prefix,
        region=settings.region,
        allowed_ssh_cidrs=settings.allowed_ssh_cidrs,
        tracker_ports=[settings.mlflow_port],
        tracker_service_account=identity.tracker_email,
        worker_service_account=identity.worker_email,
    ),
)
tracker = Tracker(
    "tracker",
    TrackerArgs(
        prefix=prefix,
        machine_type=settings.tracker_machine_type,
        zone=settings.zone,
        region=settings.region,
        disk_gb=settings.tracker_disk_gb,
        subnet=network.subnet.id,
        service_account=identity.tracker_email,
        metadata=metadata,
        labels=settings.labels,
    ),
)
workers = WorkerPool(
    "worker",
    WorkerPoolArgs(
        prefix=prefix,
        count=settings.workers,
        machine_type=settings.worker_machine_type,
        gpus=settings.worker_gpus,
        spot=choices.spot,
        image=settings.worker_image,
        disk_gb=settings.worker_disk_gb,
        zone=choices.worker_zone,
        subnet=network.subnet.id,
        service_account=identity.worker_email,
        metadata=metadata,
        labels=settings.labels,
    ),
)

pulumi.export("project", settings.project)
pulumi.export("region", settings.region)
pulumi.export("zone", settings.zone)
pulumi.export("ssh_user", settings.ssh_user)
pulumi.export("bucket_name", settings.bucket_name)
pulumi.export("bucket_url", f"gs://{settings.bucket_name}")
pulumi.export("tracker_service_account", identity.tracker_email)
pulumi.export("worker_service_account", identity.worker_email)
pulumi.export("tracker_name", tracker.name)
pulumi.export("tracker_internal_ip", tracker.internal_ip)
pulumi.export("tracker_external_ip", tracker.external_ip)
pulumi.export("mlflow_internal_url", tracker.internal_ip.apply(lambda ip: f"http://{ip}:{settings.mlflow_port}"))
pulumi.export("tracker_status", tracker.status)
pulumi.export("worker_zone", choices.worker_zone)
pulumi.export("worker_spot", choices.spot)
pulumi.export("worker_names", workers.names)
pulumi.export("worker_statuses", workers.statuses)
pulumi.export("worker_internal_ips", workers.internal_ips)
pulumi.export("worker_external_ips", workers.external_ips)
