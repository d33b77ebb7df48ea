"""`lab data ls`: the datasets in the lab's store, each version with its files, size and when it was pushed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from toolkit.cli import options
from toolkit.console import out

if TYPE_CHECKING:
    from toolkit.data.store import Store


def ls(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """List the datasets in the lab's store: name, versions (newest first), files, size, pushed when."""
    from toolkit.data import store as stores

    store = stores.open_store(stack_name, local=local, target=options.target_name(target))
    document = listing(store)
    if as_json:
        out().print_json(json.dumps(document))
        return
    if not document["datasets"]:
        out().print(f"no datasets in {store.where}; `lab data push PATH --name NAME` adds one")
        return
    from rich.table import Table

    table = Table(title=f"datasets in {store.where}", title_justify="left")
    for column in ("dataset", "version", "files", "size", "pushed"):
        table.add_column(column, justify="right" if column in ("files", "size") else "left")
    for dataset in document["datasets"]:
        for i, version in enumerate(dataset["versions"]):
            table.add_row(
                dataset["name"] if i == 0 else "",
                version["version"] + (" (newest)" if i == 0 and len(dataset["versions"]) > 1 else ""),
                f"{version['files']:,}",
                size_text(version["bytes"]),
                version["pushed_at"],
            )
    out().print(table)


def listing(store: Store) -> dict[str, Any]:
    """The store's datasets for --json: each with its versions, newest first."""
    datasets = []
    for name in store.names():
        versions = [
            {"version": m.version, "files": len(m.files), "bytes": m.bytes, "pushed_at": m.pushed_at}
            for m in reversed(store.versions(name))
        ]
        if versions:
            datasets.append({"name": name, "versions": versions})
    return {"store": store.where, "datasets": datasets}


def size_text(size: int) -> str:
    """Bytes as people read them: 950 B, 12.3 kB, 160.0 MB, 1.2 GB (powers of 1000)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"
