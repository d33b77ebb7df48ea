"""The budget's arithmetic against `lab cost`'s on the same uptime periods, the decision (ok, warn at 80%, stop), what
`lab up` refuses and lets through, and the keys' validation. Real uptime files under LAB_HOME, the real `lab`."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from toolkit.budget import ledger
from toolkit.budget.spend import OK, STOP, WARN, Ledger, Limits, decide, month_start, spent
from toolkit.config import schema
from toolkit.cost import prices, uptime
from toolkit.errors import LabError

GPU = [prices.PriceLine("host", "gpu-box", 2, 3.0)]  # $6 an hour
CHEAP = [prices.PriceLine("host", "gpu-box", 1, 0.5)]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A project folder whose dev stack (local target) carries the budget keys given."""

    def write(**keys: object) -> Path:
        (tmp_path / "Pulumi.yaml").write_text("name: lab\nruntime: python\n")
        lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in {"lab:target": "local", **keys}.items())
        (tmp_path / "Pulumi.dev.yaml").write_text("config:\n" + lines)
        monkeypatch.setenv("LAB_PROJECT_DIR", str(tmp_path))
        return tmp_path

    return write


def settings(**keys: object) -> schema.Settings:
    resolved = schema.resolve({"lab:target": "local", **keys}, stack="dev")
    assert resolved.problems == [], resolved.problems
    assert resolved.settings is not None
    return resolved.settings


def test_all_periods_and_the_open_one_are_lab_costs_figures(lab, project):
    project()
    now = time.time()
    uptime.record_up("dev", CHEAP, now=now - 10 * 3600)
    uptime.record_down("dev", now=now - 7 * 3600)  # 3 h at $0.50
    uptime.record_up("dev", GPU, now=now - 2 * 3600)  # 2 h so far at $6
    found = uptime.periods("dev")
    before = time.time()
    ran = lab("cost", "--local", "--json")
    after = time.time()
    assert ran.code == 0, ran.err
    cost = json.loads(ran.out)  # at some moment between `before` and `after`: the spend grows by $6 an hour
    assert spent(found, 0.0, before) - 1e-6 <= cost["all_periods_usd"] <= spent(found, 0.0, after) + 1e-6
    current = found[-1].up
    assert spent(found, current, before) - 1e-6 <= cost["now"]["usd_so_far"] <= spent(found, current, after) + 1e-6
    assert spent(found, 0.0, now) == pytest.approx(1.5 + 12.0, rel=1e-6)


def test_a_period_is_counted_from_where_the_budget_period_starts():
    found = [uptime.Period(1000.0, 1000.0 + 4 * 3600, tuple(GPU)), uptime.Period(20000.0, None, tuple(CHEAP))]
    now = 20000.0 + 3600
    halfway = 1000.0 + 2 * 3600
    assert spent(found, halfway, now) == pytest.approx(2 * 6.0 + 0.5)
    assert spent(found, 0.0, now) == pytest.approx(spent(found, halfway, now) + 2 * 6.0), "the parts add up"
    assert spent(found, 30000.0, now) == 0.0, "nothing after now"
    assert spent(found, 16000.0, now) == pytest.approx(0.5), "a period that ended before is not counted"


def test_month_starts_on_the_first_in_utc():
    mid = dt.datetime(2026, 12, 17, 13, 5, tzinfo=dt.UTC).timestamp()
    assert month_start(mid) == dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    limits = Limits(10.0, "month", None)
    straddling = [uptime.Period(month_start(mid) - 3600, None, tuple(GPU))]  # up since an hour before the 1st
    found = decide(limits, Ledger(period_from=0.0), straddling, month_start(mid) + 3600)
    assert found.spend_usd == pytest.approx(6.0) and found.state == OK


def test_warn_at_80_percent_and_stop_at_the_budget_or_the_hours():
    up = [uptime.Period(0.0, None, tuple(GPU))]
    limits = Limits(10.0, "up", 5.0)
    ledger_ = Ledger(period_from=0.0, hours_from=0.0)
    assert decide(limits, ledger_, up, 3600).state == OK  # $6 of $10, 1 h of 5
    warned = decide(limits, ledger_, up, 1.4 * 3600)  # $8.40: 84%
    assert warned.state == WARN and "84%" in warned.reason and "warning" in warned.line()
    stopped = decide(limits, ledger_, up, 1.7 * 3600)
    assert stopped.state == STOP and "the budget of $10.00 is spent ($10.20)" in stopped.reason
    assert stopped.left_usd == 0.0
    by_hours = decide(Limits(None, "up", 0.5), Ledger(period_from=0.0, hours_from=0.0), up, 0.5 * 3600)
    assert by_hours.state == STOP and "lab:maxHours is 0.5 h" in by_hours.reason
    again = decide(Limits(None, "up", 0.5), Ledger(period_from=0.0, hours_from=1800.0), up, 0.5 * 3600)
    assert again.state == OK, "a new `lab up` starts the hour clock again"
    override = Ledger(period_from=0.0, hours_from=0.0, override_usd=20.0, override_for="up@0")
    assert decide(limits, override, up, 1.7 * 3600).state == OK, "--budget holds for its period"


def test_up_refuses_a_spent_budget_and_takes_the_override(project):
    project()
    limited = settings(**{"lab:budgetUsd": 5})
    now = time.time()
    uptime.record_up("dev", GPU, now=now - 3600)  # $6 spent in this period
    ledger.after_up(limited, Ledger(period_from=now - 3600, hours_from=now - 3600))
    with pytest.raises(LabError, match=r"the budget is spent: the budget of \$5\.00 is spent") as refused:
        ledger.before_up(limited, None, now=now)
    assert "lab up --budget USD" in (refused.value.hint or "")
    kept = ledger.before_up(limited, 20.0, now=now)
    assert kept.override_usd == 20.0 and kept.period_from == now
    ledger.after_up(limited, kept)
    assert ledger.verdict(limited, now=now + 60).budget_usd == 20.0


def test_the_guard_having_stopped_the_lab_refuses_a_plain_up(project):
    project()
    limited = settings(**{"lab:budgetUsd": 5})
    now = time.time()
    uptime.record_up("dev", GPU, now=now - 3600)
    uptime.record_down("dev", now=now - 60)
    path = ledger.path_of("dev")
    ledger.after_up(limited, Ledger(period_from=now - 3600, hours_from=now - 3600))
    found = decide(Limits.of(limited), ledger.read(path), uptime.periods("dev"), now)
    ledger.fired(path, ledger.read(path), found, ["stopped"])
    with pytest.raises(LabError, match="the budget is spent"):
        ledger.before_up(limited, None, now=now)
    assert ledger.before_up(settings(), None, now=now).fired is None, "without a budget nothing is refused"


def test_lab_cost_and_status_show_the_budget(lab, project):
    project(**{"lab:budgetUsd": 10, "lab:maxHours": 4})
    now = time.time()
    uptime.record_up("dev", GPU, now=now - 1.5 * 3600)  # $9: 90%
    ledger.write(ledger.path_of("dev"), Ledger(period_from=now - 1.5 * 3600, hours_from=now - 1.5 * 3600))
    ran = lab("cost", "--local", "--json")
    assert ran.code == 0, ran.err
    budget = json.loads(ran.out)["budget"]
    assert budget["state"] == "warn" and budget["budget_usd"] == 10.0
    assert budget["spend_usd"] == pytest.approx(9.0, abs=0.1) and budget["max_hours"] == 4.0
    shown = lab("cost", "--local")
    assert "budget warning: $9.0" in shown.out and "of $10.00 spent (90%) since" in shown.out, shown.out
    status = lab("status", "--local")
    assert status.code == 0, status.err
    assert "workers up 1.50 of 4 h" in status.out and "(90%)" in status.out, status.out


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"lab:budgetUsd": 0}, "lab:budgetUsd: must be more than 0"),
        ({"lab:budgetUsd": "lots"}, "lab:budgetUsd: expected a number"),
        ({"lab:maxHours": -1}, "lab:maxHours: must be more than 0"),
        ({"lab:budgetPeriod": "week"}, "lab:budgetPeriod: 'week' is not a budget period"),
    ],
)
def test_the_budget_keys_are_checked(keys, problem):
    found = [str(p) for p in schema.resolve({"lab:target": "local", **keys}, stack="dev").problems]
    assert any(p.startswith(problem) for p in found), found


def test_the_budget_keys_resolve():
    resolved = settings(**{"lab:budgetUsd": "12.5", "lab:budgetPeriod": "month", "lab:maxHours": 8})
    assert (resolved.budget_usd, resolved.budget_period, resolved.max_hours) == (12.5, "month", 8.0)
    plain = settings()
    assert (plain.budget_usd, plain.budget_period, plain.max_hours) == (None, "up", None)
