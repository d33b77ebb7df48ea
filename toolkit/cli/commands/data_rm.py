"""`lab data rm NAME[@VERSION]`: remove a dataset, or one version of it, from the lab's store (asks first)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from toolkit.cli import options
from toolkit.console import out


def rm(
    ref: Annotated[str, typer.Argument(metavar="DATASET", help="NAME, or NAME@VERSION for one version.")],
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    yes: options.Yes = False,
    as_json: options.Json = False,
) -> None:
    """Remove a dataset (every version) or one version of it from the lab's store, after asking (--yes answers).
    A version's files that another version also holds stay."""
    from toolkit.cli.commands.data_ls import size_text
    from toolkit.console import Ui
    from toolkit.data import manifest as manifests
    from toolkit.data import store as stores
    from toolkit.errors import LabError

    name, version = manifests.parse_ref(ref)
    store = stores.open_store(stack_name, local=local, target=options.target_name(target))
    if version is None:
        versions = store.versions(name)
        if not versions:
            raise stores.unknown(name, None, store.where)
        total = sum(m.bytes for m in versions)
        question = f"Delete dataset {name} ({len(versions)} version{'s' * (len(versions) != 1)}, {size_text(total)})"
    else:
        chosen = store.manifest(name, version)
        question = f"Delete {chosen.ref} ({len(chosen.files):,} files, {size_text(chosen.bytes)})"
    if not Ui(json=as_json, yes=yes).confirm(f"{question} from {store.where}?"):
        raise LabError("nothing was deleted: not confirmed")
    removed = stores.remove(store, name, version)
    if as_json:
        document = {"store": store.where, "name": name, "versions": removed.versions}
        out().print_json(json.dumps(document))
        return
    what = f"{name}@{version}" if version else f"{name} ({', '.join(removed.versions)})"
    out().print(f"deleted {what} from {store.where}")
