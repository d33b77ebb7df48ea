"""optuna-dashboard as a tracker host runs it (lab-optuna-dashboard.service): over the Optuna proxy
(lab-optuna.service: `toolkit.tracker.agent optuna-proxy`), never opening optuna.db itself; it rides out a restart
of the proxy. Real processes on free ports; the unit's own checks run on VM-like hosts (tests/labs/ssh)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from toolkit.errors import LabError
from toolkit.tracker import dashboard

optuna = pytest.importorskip("optuna")
pytest.importorskip("optuna_dashboard")

READY_TIMEOUT_S = 60


def studies(url: str) -> list[str] | None:
    """The study names the dashboard serves, or None while it cannot answer with them."""
    try:
        with urllib.request.urlopen(f"{url}{dashboard.HEALTH_PATH}", timeout=10) as answer:
            return [s["study_name"] for s in json.load(answer)["study_summaries"]]
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_for(check, timeout: float = READY_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError("timed out")


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Tracker:
    """The tracker's data folder, its Optuna proxy and the dashboard over it."""

    def __init__(self, root: Path) -> None:
        self.data = root / "srv-lab"
        self.logs = root
        self.proxy_port, self.dashboard_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        self.proxy: subprocess.Popen[bytes] | None = None
        self.dashboard: subprocess.Popen[bytes] | None = None

    def start_proxy(self) -> None:
        argv = [sys.executable, "-m", "toolkit.tracker.agent", "optuna-proxy", "--data", str(self.data)]
        self.proxy = start([*argv, "--host", "127.0.0.1", "--port", str(self.proxy_port)], self.logs / "proxy.log")

    def start_dashboard(self) -> None:
        storage = dashboard.storage_url_of_proxy("127.0.0.1", self.proxy_port)
        argv = dashboard.argv(storage, "127.0.0.1", self.dashboard_port)
        self.dashboard = start(argv, self.logs / "dashboard.log")

    def client(self) -> object:
        storage = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=self.proxy_port)
        storage.wait_server_ready(timeout=READY_TIMEOUT_S)
        return storage

    def stop_all(self) -> None:
        for process in (self.dashboard, self.proxy):
            if process is not None and process.poll() is None:
                stop(process)


# Optuna marks its gRPC proxy experimental (since 4.2); the tracker runs it all the same.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    made = Tracker(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def test_the_dashboard_reads_the_studies_through_the_proxy_and_never_opens_the_db(tracker):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracker.start_proxy()
    tracker.start_dashboard()
    study = optuna.create_study(study_name="on-the-tracker", storage=tracker.client())
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=4)
    assert wait_for(lambda: studies(tracker.url)) == ["on-the-tracker"]
    db = tracker.data / "tracker" / "optuna.db"
    assert db.exists()
    opened = {str(fd.resolve()) for fd in Path(f"/proc/{tracker.dashboard.pid}/fd").iterdir()}
    assert not {p for p in opened if p.startswith(str(db))}, "the dashboard opened the tracker's DB itself"
    with urllib.request.urlopen(f"{tracker.url}/api/studies/1", timeout=10) as answer:
        shown = json.load(answer)
    assert shown["name"] == "on-the-tracker" and len(shown["trials"]) == 4

    # The proxy restarts (Restart=on-failure, an upgrade): the dashboard stays up and answers again after.
    stop(tracker.proxy)
    assert studies(tracker.url) is None and tracker.dashboard.poll() is None
    tracker.start_proxy()
    study = optuna.load_study(study_name="on-the-tracker", storage=tracker.client())
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=1)
    assert wait_for(lambda: studies(tracker.url)) == ["on-the-tracker"]

    def trials_shown() -> int:
        with urllib.request.urlopen(f"{tracker.url}/api/studies/1", timeout=10) as answer:
            return len(json.load(answer)["trials"])

    # the dashboard reads a study's new trials on its own schedule: the fifth shows within seconds
    assert wait_for(lambda: trials_shown() == 5, timeout=30)


def test_the_dashboard_listens_on_the_address_it_is_given_only(tracker):
    tracker.start_proxy()
    tracker.start_dashboard()
    assert wait_for(lambda: studies(tracker.url) is not None)
    psutil = pytest.importorskip("psutil")
    listens = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(tracker.dashboard.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listens == {("127.0.0.1", tracker.dashboard_port)}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://db/optuna",
            "the storage 'postgresql://db/optuna' is neither sqlite:///PATH nor grpc://HOST:PORT",
        ),
        ("grpc://127.0.0.1", "the storage 'grpc://127.0.0.1' is not grpc://HOST:PORT"),
        ("grpc://:5001", "the storage 'grpc://:5001' is not grpc://HOST:PORT"),
    ],
)
def test_a_storage_it_cannot_read_is_one_line_and_exit_1(url, message, capsys):
    with pytest.raises(LabError) as refused:
        dashboard.open_storage(url)
    assert refused.value.one_line() == message
    assert dashboard.main(["--storage", url, "--port", str(free_port())]) == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"


def request(port: int, method: str, path: str, host: str, origin: str | None = None) -> int:
    """The status of one request to 127.0.0.1:`port` with the Host (and Origin) given, as a browser sends them."""
    headers = {"Host": host, "Content-Type": "application/json"}
    if origin is not None:
        headers["Origin"] = origin
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_only_requests_to_the_labs_own_names_are_served(tmp_path):
    """A page that rebinds its name to 127.0.0.1 sends `Host: evil.example`: refused (403) and the study is still
    there; `Host: 127.0.0.1:PORT`, `localhost`, `[::1]` (and through `lab tunnel`, 127.0.0.1 on another port) work.
    The local lab's launcher, over its sqlite storage; the tracker's unit runs the same one over the proxy."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    for name in ("kept", "deleted"):
        optuna.create_study(study_name=name, storage=storage_url).optimize(lambda t: t.suggest_float("x", 0, 1), 1)
    port = free_port()
    served = start(dashboard.argv(storage_url, "127.0.0.1", port), tmp_path / "dashboard.log")
    try:
        assert wait_for(lambda: studies(f"http://127.0.0.1:{port}")) == ["kept", "deleted"]
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", ""):
            assert request(port, "DELETE", "/api/studies/1", host) == 403, host
            assert request(port, "POST", "/api/trials/1/tell", host) == 403, host
            assert request(port, "GET", dashboard.HEALTH_PATH, host) == 403, host
        rebound = f"http://evil.example:{port}"
        assert request(port, "DELETE", "/api/studies/1", f"127.0.0.1:{port}", origin=rebound) == 403
        assert studies(f"http://127.0.0.1:{port}") == ["kept", "deleted"]

        for host in (f"localhost:{port}", "[::1]:9999", "127.0.0.1:18080"):
            assert request(port, "GET", dashboard.HEALTH_PATH, host) == 200, host
        assert request(port, "DELETE", "/api/studies/2", f"127.0.0.1:{port}", origin=f"http://127.0.0.1:{port}") == 204
        assert studies(f"http://127.0.0.1:{port}") == ["kept"]
    finally:
        stop(served)


def test_mlflows_own_host_check_stays_on_whatever_the_callers_shell_says(monkeypatch):
    """MLflow (>= 3.5, the tracker pins 3.17.2) refuses a Host that is not localhost or a private address
    (mlflow/server/security_utils.py); lab never sets MLFLOW_SERVER_ALLOWED_HOSTS and drops a caller's
    switch that would turn the check off before it starts the local lab's MLflow."""
    security = pytest.importorskip("mlflow.server.security")
    from toolkit.tracker import db

    monkeypatch.setenv("MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE", "true")
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", "*")
    env = db.server_env()
    assert not set(db.HOST_CHECK_OFF) & set(env)
    for name in db.HOST_CHECK_OFF:
        monkeypatch.delenv(name)
    allowed = security.get_allowed_hosts()
    assert not security.is_allowed_host_header(allowed, "evil.example:5000")
    assert all(
        security.is_allowed_host_header(allowed, h) for h in ("127.0.0.1:5000", "localhost:5000", "10.0.0.2:5000")
    )
