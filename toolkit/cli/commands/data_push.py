"""`lab data push PATH --name NAME`: a folder or an archive into the lab's dataset store, sending only what is
not there yet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from toolkit.cli import options
from toolkit.console import out

if TYPE_CHECKING:
    from toolkit.data.store import PushProgress


def push(
    path: Annotated[Path, typer.Argument(help="The dataset: a folder, or one file such as an archive (kept as is).")],
    name: Annotated[str, typer.Option("--name", "-n", help="The dataset's name, e.g. cifar100.")],
    version: Annotated[
        Optional[str],  # noqa: UP045 -- typer reads the annotation at run time
        typer.Option("--version", help="The version's name (default: a hash of the content)."),
    ] = None,
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """Push a folder or an archive to the lab's dataset store as NAME (version: --version, else a hash of the
    content). Files already in the store are not sent again: pushing an unchanged folder sends nothing."""
    from toolkit.cli.commands.data_ls import size_text
    from toolkit.data import manifest as manifests
    from toolkit.data import store as stores

    manifests.check_name(name)
    if version is not None:
        manifests.check_version(version)
    source = path.expanduser()
    manifests.scan(source)  # a missing or empty PATH is an error before the lab is opened
    store = stores.open_store(stack_name, local=local, target=options.target_name(target))
    with bars(show=not as_json and out().is_terminal) as progress:
        result = stores.push(store, source, name, version, progress)
    if as_json:
        out().print_json(json.dumps({"store": store.where, **result.to_dict()}))
        return
    shown = result.manifest
    whole = f"{len(shown.files):,} file{'s' * (len(shown.files) != 1)}, {size_text(shown.bytes)}"
    if result.already_there:
        out().print(f"nothing to upload: {shown.ref} ({whole}) is already in {store.where}, pushed {shown.pushed_at}")
        return
    line = f"pushed {shown.ref} ({whole}) to {store.where}"
    if not result.sent_files:
        out().print(f"{line}: nothing to upload, every file was already there")
        return
    kept = len(shown.blobs) - result.sent_files
    also = f", {kept:,} already there" if kept else ""
    out().print(f"{line}: uploaded {result.sent_files:,} files ({size_text(result.sent_bytes)}){also}")


@contextmanager
def bars(show: bool) -> Iterator[PushProgress | None]:
    """Progress bars (hashing, then uploading) on a terminal; nothing under --json or without one."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from toolkit.data.store import PushProgress

    with Progress(
        TextColumn("{task.description:>9}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=out(),
        transient=True,
    ) as shown:
        tasks: dict[str, object] = {}

        def start(phase: str, total: int) -> None:
            tasks[phase] = shown.add_task(phase, total=total)

        def advance(phase: str, amount: int) -> None:
            shown.advance(tasks[phase], amount)  # type: ignore[arg-type]

        yield PushProgress(start=start, advance=advance)
