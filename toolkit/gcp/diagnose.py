"""Reading GCP's answers about the project's setup: an API that is off, and the organization policies that stop
the lab (`constraints/compute.requireOsLogin`, `constraints/compute.vmExternalIpAccess`). Each becomes one
line that says what is wrong and the command that fixes it; `lab doctor --target gcp` asks the same questions
up front (toolkit.labs.prerequisites). The texts these patterns match are real ones, kept with their sources in
tests/data/gcp_errors (SOURCES.md). Beside toolkit.gcp.capacity, which reads stockouts and quotas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from toolkit.errors import LabError

# The APIs a fresh project must have on before the first `lab up`, derived from what infra/ creates: each
# resource type of the program (its Pulumi type token, or the module part of it) and the API the GCP provider
# makes it through (pulumi-gcp wraps the Terraform provider google: google_project_iam_member reads and writes the
# project's IAM policy with Resource Manager's projects.getIamPolicy/setIamPolicy; custom roles and service
# accounts are IAM's projects.roles and projects.serviceAccounts; buckets and their IAM are the JSON API of
# storage; VMs, disks, addresses, networks and firewalls are Compute's). tests/infra/test_required_apis.py runs the
# program and fails when it creates a type this table does not name.
RESOURCE_SERVICES: dict[str, str] = {
    "gcp:compute/": "compute.googleapis.com",
    "gcp:storage/": "storage.googleapis.com",
    "gcp:serviceaccount/": "iam.googleapis.com",
    "gcp:projects/iAMCustomRole:IAMCustomRole": "iam.googleapis.com",
    "gcp:projects/iAMMember:IAMMember": "cloudresourcemanager.googleapis.com",
}
# What needs each API, as `lab doctor` says it when the API is off.
SERVICE_USES: dict[str, str] = {
    "compute.googleapis.com": "the VMs, disks, network and firewall (and `lab status`/`lab down` read VMs)",
    "iam.googleapis.com": "the tracker's and workers' service accounts and the worker-control custom role",
    "storage.googleapis.com": "the artifact bucket, its IAM grants and the Pulumi state bucket",
    "cloudresourcemanager.googleapis.com": "the tracker's conditioned IAM binding on the project "
    "(gcp.projects.IAMMember) and `lab doctor`'s organization-policy checks",
}
REQUIRED_SERVICES = tuple(SERVICE_USES)
# `lab doctor` reads the others through Service Usage (services.batchGet); it is on in new projects, and it is
# what `gcloud services enable` uses. The program itself creates nothing through it.
SERVICE_USAGE = "serviceusage.googleapis.com"
OS_LOGIN = "constraints/compute.requireOsLogin"
EXTERNAL_IP = "constraints/compute.vmExternalIpAccess"

_DISABLED = re.compile(r"API has not been used in project (?P<project>\S+) before or it is disabled")
_SERVICE = re.compile(r"apis/api/(?P<service>[a-z0-9.-]+\.googleapis\.com)|\"service\": \"(?P<meta>[a-z0-9.-]+)\"")
_CONSTRAINT = re.compile(
    r"Constraint (?P<constraint>constraints/[A-Za-z0-9_.]+) violated for project (?P<project>\S+?)\.?\s"
)
_INSTANCE = re.compile(r"Add instance (?P<instance>projects/\S+/instances/\S+) to the constraint")
_QUOTA_PROJECT = re.compile(r"requires a quota project, which is not set by default")


def enable_command(project: str, services: tuple[str, ...] = REQUIRED_SERVICES) -> str:
    return f"gcloud services enable {' '.join(services)} --project {project or 'PROJECT'}"


def service_of(resource_type: str) -> str | None:
    """The API a resource of the program is created through (RESOURCE_SERVICES), None for one it does not name.
    Component resources (`lab:infra:...`) and Pulumi's own (`pulumi:...`) need none."""
    if not resource_type.startswith("gcp:"):
        return None
    exact = RESOURCE_SERVICES.get(resource_type)
    if exact:
        return exact
    module = resource_type.split("/", 1)[0] + "/"
    return RESOURCE_SERVICES.get(module)


def os_login_command(project: str) -> str:
    """Turn the boolean constraint off for the project (needs an organization policy admin)
    (https://cloud.google.com/sdk/gcloud/reference/resource-manager/org-policies/disable-enforce)."""
    return (
        f"gcloud resource-manager org-policies disable-enforce compute.requireOsLogin --project={project or 'PROJECT'}"
    )


def external_ip_command(project: str, instance: str = "projects/PROJECT/zones/ZONE/instances/NAME") -> str:
    """Allow a VM's external IP under the list constraint (needs an organization policy admin)
    (https://cloud.google.com/sdk/gcloud/reference/resource-manager/org-policies/allow)."""
    where = project or "PROJECT"
    return f"gcloud resource-manager org-policies allow compute.vmExternalIpAccess {instance} --project={where}"


@dataclass(frozen=True)
class ApiDisabled:
    """An API the project has not enabled ("... API has not been used in project P before or it is disabled")."""

    service: str | None

    def error(self, project: str) -> LabError:
        which = self.service or "an API the lab needs"
        return LabError(
            f"{which} is not enabled in project {project or '(gcp:project)'}",
            hint=f"run `{enable_command(project)}`, wait a minute, then `lab up` again",
        )


@dataclass(frozen=True)
class OrgPolicy:
    """An organization policy constraint refused the request."""

    constraint: str
    instance: str | None = None

    def error(self, project: str) -> LabError:
        if self.constraint == EXTERNAL_IP:
            instance = self.instance or f"projects/{project or 'PROJECT'}/zones/ZONE/instances/NAME"
            return LabError(
                f"the organization policy {EXTERNAL_IP} forbids external IPs for VMs in project {project}, and the "
                "lab reaches its VMs over SSH at their external IP",
                hint="ask an organization policy admin to allow the lab's VMs: "
                f"`{external_ip_command(project, instance)}` (one value per VM), or use another project",
            )
        if self.constraint == OS_LOGIN:
            return LabError(
                f"the organization policy {OS_LOGIN} is enforced in project {project}: the VMs ignore the lab's "
                "ssh-keys metadata, so SSH is refused",
                hint=f"ask an organization policy admin to run `{os_login_command(project)}`, or use another project",
            )
        return LabError(
            f"the organization policy {self.constraint} refused the request in project {project}",
            hint="https://cloud.google.com/resource-manager/docs/organization-policy/org-policy-constraints says "
            "what it allows; ask an organization policy admin, or use another project",
        )


def classify(text: str) -> ApiDisabled | OrgPolicy | None:
    """What an engine (or API) failure says about the project's setup: an API that is off, an organization
    policy, or neither (None). A 403 for missing quota project is neither: its ErrorInfo also says
    SERVICE_DISABLED, but no API needs enabling."""
    if found := _CONSTRAINT.search(" ".join(text.split())):
        instance = _INSTANCE.search(" ".join(text.split()))
        return OrgPolicy(found.group("constraint"), instance.group("instance") if instance else None)
    if _DISABLED.search(text) and not _QUOTA_PROJECT.search(text):
        named = _SERVICE.search(text)
        return ApiDisabled((named.group("service") or named.group("meta")) if named else None)
    return None


def explain(text: str, project: str) -> LabError | None:
    """The one-line error for a setup problem in an engine failure's text, or None when it is not one."""
    found = classify(text)
    return found.error(project) if found else None


def quota_project_missing(text: str) -> bool:
    """User credentials (`gcloud auth application-default login`) without a quota project: some APIs
    (serviceusage, cloudresourcemanager) refuse them until one is set."""
    return bool(_QUOTA_PROJECT.search(text))
