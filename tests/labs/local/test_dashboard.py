"""optuna-dashboard next to MLflow on the local lab, loaded in a real browser (headless Chromium): `lab up` starts it
on 127.0.0.1 over the lab's optuna.db, `lab status` shows its URL, and `lab down` stops it. The screenshot of the
study's page is kept in the test's tmp folder."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from toolkit.tracker import dashboard

optuna = pytest.importorskip("optuna")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`
pytest.importorskip("optuna_dashboard")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_TIMEOUT_S = 90
# The dashboard is a JavaScript app: the browser is given this much (virtual) time to fetch the studies and render.
RENDER_BUDGET_MS = 15000


@contextlib.contextmanager
def listening(port: int) -> Iterator[bool]:
    """A socket listening on 127.0.0.1:`port` for the block; False when another process holds the port already."""
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", port))
        except OSError:
            yield False
            return
        held.listen()
        yield True


def browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a profile of its own (root needs --no-sandbox)."""
    assert CHROMIUM, "chromium is not installed"
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--virtual-time-budget={RENDER_BUDGET_MS}",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)


def make_study(storage: Path, name: str) -> None:
    """A finished little sweep, written where `lab dispatch` writes the local lab's studies."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{storage}")
    study.optimize(lambda t: (t.suggest_float("lr", 1e-4, 1e-1, log=True) - 0.01) ** 2, n_trials=6)


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs it: apt-get install chromium)"
)
def test_the_dashboard_shows_the_labs_sweeps_in_a_browser(lab, ports, state, tmp_path):
    taken = free_port()
    with listening(taken), listening(dashboard.DEFAULT_PORT) as holding_default:
        # A port given and taken is an error naming the option, before anything starts.
        ran = lab("up", "--local", "--no-jupyter", "--port", ports["mlflow"], "--dashboard-port", str(taken))
        assert ran.code == 1
        assert f"error: port {taken} (for optuna-dashboard) is in use by" in ran.err
        assert "choose another port with --dashboard-port" in ran.err
        # MLflow's port taken: the dashboard, started beside it, is stopped again.
        ran = lab("up", "--local", "--no-jupyter", "--port", str(taken), "--dashboard-port", str(free_port()))
        assert ran.code == 1 and f"error: port {taken} (for mlflow) is in use by" in ran.err
        states = {n: c["state"] for n, c in json.loads(lab("status", "--local", "--json").out)["components"].items()}
        assert set(states.values()) == {"stopped"}, states
        # The default port taken: the dashboard gives way to a free one and says so.
        ran = lab("up", "--local", "--no-jupyter", "--port", ports["mlflow"], timeout=180)
        assert ran.code == 0, ran.err
    if holding_default:
        assert f"port {dashboard.DEFAULT_PORT} is in use by" in ran.err
    (line,) = [line for line in ran.out.splitlines() if line.startswith("Optuna ")]
    url = line.split()[1]
    assert url.startswith("http://127.0.0.1:")
    if holding_default:
        assert url != f"http://127.0.0.1:{dashboard.DEFAULT_PORT}"

    status = json.loads(lab("status", "--local", "--json").out)
    shown = status["components"]["optuna-dashboard"]
    assert shown["state"] == "running" and shown["url"] == url
    assert ran.out.count(url) == 1 and url in lab("status", "--local").out
    # 127.0.0.1 only: the process (its server runs in it) listens nowhere else.
    listens = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(shown["pid"]).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listens == {("127.0.0.1", shown["port"])}
    assert url == f"http://127.0.0.1:{shown['port']}"

    name = f"browser-check-{uuid.uuid4().hex[:8]}"
    make_study(state / "tracker" / "optuna.db", name)
    with urllib.request.urlopen(f"{url}/dashboard", timeout=10) as page:
        assert name not in page.read().decode(), "the page should be rendered by the browser, not by the server"

    rendered = browser(tmp_path, "--dump-dom", f"{url}/dashboard")
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert name in rendered.stdout, rendered.stdout[-2000:]

    screenshot = tmp_path / "optuna-dashboard.png"
    shot = browser(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,900", f"{url}/dashboard/studies/1")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    print(f"optuna-dashboard screenshot: {screenshot}")

    pid = shown["pid"]
    down = lab("down", "--local", "--json")
    assert down.code == 0, down.err
    assert "optuna-dashboard" in json.loads(down.out)["stopped"]
    assert not Path(f"/proc/{pid}").exists(), "the dashboard outlived `lab down`"
    assert json.loads(lab("status", "--local", "--json").out)["components"]["optuna-dashboard"]["state"] == "stopped"
