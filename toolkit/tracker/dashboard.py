"""optuna-dashboard over the lab's Optuna storage: a live web view of the sweeps, next to MLflow, on 127.0.0.1.

Run as `python -m toolkit.tracker.dashboard --storage URL --host 127.0.0.1 --port P`, where URL is
- `sqlite:///ABS/optuna.db`: the local lab's storage (the file the dispatcher writes); its tables are created
  when the file is new, so the dashboard answers before the first sweep, and SQLite waits for a writer's lock
  as the tracker's proxy does instead of failing at once;
- `grpc://HOST:PORT`: a tracker host's Optuna storage proxy (lab-optuna.service), the one process that opens
  optuna.db there. optuna-dashboard's own CLI takes only storage URLs (an RDB URL, a journal file or redis),
  not the proxy, hence this small launcher around optuna-dashboard's WSGI app.

optuna-dashboard has no authentication and would obey any Host (a page that rebinds its name to 127.0.0.1 could
delete studies or `tell` trials): the launcher serves it behind toolkit.tracker.loopback, so only requests to
127.0.0.1, localhost or [::1] (any port: `lab tunnel`'s local end) are answered; others get 403. The local lab and
the tracker's unit (lab-optuna-dashboard.service) both run this launcher.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from toolkit.errors import LabError

DEFAULT_PORT = 8080  # optuna-dashboard's own default
HOST = "127.0.0.1"
SQLITE = "sqlite:///"
GRPC = "grpc://"
SQLITE_LOCK_TIMEOUT_S = 60  # as the tracker's Optuna proxy waits for a writer's lock
HEALTH_PATH = "/api/studies"  # answers 200 only when the storage can be read
STACK_SIGNAL = signal.SIGUSR1  # writes every thread's stack to the log (services.wait_healthy, when it never answers)


def storage_url_of_proxy(host: str, port: int) -> str:
    return f"{GRPC}{host}:{port}"


def argv(storage_url: str, host: str, port: int, python: str = sys.executable) -> list[str]:
    """The command line of the dashboard over `storage_url`, listening on host:port."""
    return [python, "-m", "toolkit.tracker.dashboard", "--storage", storage_url, "--host", host, "--port", str(port)]


def open_storage(url: str) -> Any:
    """The Optuna storage behind a `sqlite:///` or `grpc://HOST:PORT` URL."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith(SQLITE):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}})
    if url.startswith(GRPC):
        host, _, port = url.removeprefix(GRPC).rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise LabError(f"the storage {url!r} is not grpc://HOST:PORT")
        return optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    raise LabError(f"the storage {url!r} is neither sqlite:///PATH nor grpc://HOST:PORT")


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.tracker.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="sqlite:///ABS/optuna.db or grpc://HOST:PORT")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    options = parser.parse_args(args)
    with contextlib.suppress(io.UnsupportedOperation, ValueError):  # a stderr that is no file (tests) gets none
        faulthandler.register(STACK_SIGNAL, all_threads=True)
    started = time.monotonic()
    try:
        storage = open_storage(options.storage)
    except LabError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1
    opened = time.monotonic()
    import optuna_dashboard

    print(
        f"optuna-dashboard over {options.storage} on http://{options.host}:{options.port}"
        f" (storage opened in {opened - started:.1f} s, dashboard loaded in {time.monotonic() - opened:.1f} s)",
        flush=True,
    )
    import bottle

    from toolkit.tracker import loopback

    # as optuna_dashboard.run_server serves it (bottle's wsgiref server), behind the Host check
    bottle.run(loopback.guard(optuna_dashboard.wsgi(storage)), host=options.host, port=options.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
