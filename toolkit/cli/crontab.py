"""Scheduled teardown: a crontab entry that runs `lab down --yes` for a stack, and the lab's entries in it.

Lab's entries are marked by a comment line directly above them (`# lab schedule: down stack=dev`), so
listing and removing find exactly lab's entries (per stack) and never touch anyone else's lines.

The crontab is read with `crontab -l` and written with `crontab -`. With LAB_CRONTAB_FILE=/path the
same text is kept in that plain file instead (for tests, and for machines without cron).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import proc
from toolkit.config import paths, schema, stack
from toolkit.errors import EXIT_USAGE, LabError

CRONTAB_FILE_ENV = "LAB_CRONTAB_FILE"
PASSPHRASE_FILE_ENV = "PULUMI_CONFIG_PASSPHRASE_FILE"  # noqa: S105 -- the name of a variable
LOG_NAME = "schedule-down.log"
CRONTAB_TIMEOUT_S = 30
EXAMPLE = '"0 2 * * *" (02:00 every day)'

# The environment a scheduled `lab down` gets on top of cron's bare one (HOME, LOGNAME, SHELL, PATH=/usr/bin:/bin).
# Paths only: never a secret. LAB_HOME, LAB_PROJECT_DIR and PATH are always set; these only when set here.
PASSED_ON = (PASSPHRASE_FILE_ENV, "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG")

_MARKER = "# lab schedule: down stack={stack}"
_MARKER_LINE = re.compile(r"^# lab schedule: down stack=(?P<stack>\S+)\s*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

# Cron's schedule grammar (Debian's cron, cronie): 5 fields, or one of these shorthands. GitHub Actions
# takes only the 5 fields, so a shorthand is written out for it. @reboot is no schedule for a teardown.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = field(default_factory=dict)


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, {n: i for i, n in enumerate(_MONTHS, start=1)}),
    _Field("day-of-week", 0, 7, {n: i for i, n in enumerate(_DAYS)}),  # 0 and 7 are Sunday
)


def _number(text: str, spec: _Field) -> int | None:
    if text.isascii() and text.isdigit():
        value = int(text)
        return value if spec.low <= value <= spec.high else None
    return spec.names.get(text.lower())


def _field_ok(text: str, spec: _Field) -> bool:
    """One field: a list of `*`, N, N-M, each range (or `*`) optionally with /STEP."""
    for part in text.split(","):
        base, slash, step = part.partition("/")
        if slash and not (step.isascii() and step.isdigit() and int(step) >= 1):
            return False
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        first = _number(start, spec)
        if first is None:
            return False
        if dash:
            last = _number(end, spec)
            if last is None or last < first:
                return False
        elif slash:
            return False  # cron takes a step only after `*` or a range: "5/10" is an error there
    return True


def validate_when(expression: str) -> str:
    """The schedule, normalised (one space between fields), or a one-line LabError naming it.

    Checked here by hand, field by field, against the grammar cron itself takes: cron libraries such
    as croniter also accept extensions cron rejects (a seconds field, L, #, H), so a check with them
    would pass entries that `crontab` then refuses. A bad schedule is a usage error (exit 2).
    """
    when = " ".join(expression.split())
    hint = f"use 5 fields MINUTE HOUR DAY MONTH WEEKDAY, e.g. {EXAMPLE}, or @hourly, @daily, @weekly, @monthly"
    if when.startswith("@"):
        if when in MACROS:
            return when
        if when == "@reboot":
            raise LabError(
                f"{expression!r} is not a time of day: a teardown needs a schedule", hint=hint, code=EXIT_USAGE
            )
        raise LabError(f"{expression!r} is not a cron schedule", hint=hint, code=EXIT_USAGE)
    fields = when.split(" ") if when else []
    if len(fields) != len(_FIELDS):
        raise LabError(
            f"{expression!r} is not a cron schedule: it has {len(fields)} fields, not 5", hint=hint, code=EXIT_USAGE
        )
    for text, spec in zip(fields, _FIELDS, strict=True):
        if not _field_ok(text, spec):
            raise LabError(
                f"{expression!r} is not a cron schedule: its {spec.name} field {text!r} is not in "
                f"{spec.low}-{spec.high} (or a list, range or /step of such)",
                hint=hint,
                code=EXIT_USAGE,
            )
    return when


def github_cron(when: str) -> str:
    """The schedule as GitHub Actions takes it (5 fields; no @daily)."""
    return MACROS.get(when, when)


@dataclass(frozen=True)
class Entry:
    """One of lab's crontab entries: the stack it tears down, when, the command as the shell gets it."""

    stack: str
    when: str
    command: str
    log: str | None

    def lines(self) -> list[str]:
        # In a crontab line an unescaped % is a newline; \% is a plain %.
        command = self.command.replace("%", "\\%")
        return [_MARKER.format(stack=self.stack), f"{self.when} {command}"]

    @property
    def runs(self) -> str:
        """The program and its arguments, without the environment before it and the log redirection after."""
        try:
            words = shlex.split(self.command)
        except ValueError:
            return self.command
        while words and _ASSIGNMENT.match(words[0]):
            words.pop(0)
        if ">>" in words:
            words = words[: words.index(">>")]
        return shlex.join(words)

    def as_json(self) -> dict[str, str | None]:
        return {"stack": self.stack, "when": self.when, "runs": self.runs, "command": self.command, "log": self.log}


def _entry_of(stack_name: str, line: str) -> Entry | None:
    """The entry on the line under a marker, or None when that line is not a cron entry."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("@"):
        parts = text.split(None, 1)
        when, rest = parts[0], parts[1] if len(parts) > 1 else ""
    else:
        parts = text.split(None, 5)
        when, rest = " ".join(parts[:5]), parts[5] if len(parts) > 5 else ""
    try:
        when = validate_when(when)
    except LabError:
        return None
    if not rest:
        return None
    command = rest.replace("\\%", "%")
    return Entry(stack_name, when, command, _log_of(command))


def _log_of(command: str) -> str | None:
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i in range(len(words) - 1, 0, -1):
        if words[i - 1] == ">>":
            return words[i]
    return None


@dataclass(frozen=True)
class _Block:
    """Lab's lines in a crontab: a marker and its entry, or a marker whose entry is gone."""

    start: int
    end: int
    stack: str
    entry: Entry | None


def _blocks(lines: list[str]) -> Iterator[_Block]:
    i = 0
    while i < len(lines):
        marker = _MARKER_LINE.match(lines[i])
        if marker is None:
            i += 1
            continue
        name = marker.group("stack")
        entry = _entry_of(name, lines[i + 1]) if i + 1 < len(lines) else None
        end = i + 2 if entry is not None else i + 1
        yield _Block(i, end, name, entry)
        i = end


@dataclass(frozen=True)
class Crontab:
    """Where the schedule lives: a user's crontab, through `crontab`, or a plain file (LAB_CRONTAB_FILE).

    `user` (another user's crontab, `crontab -u`; root only) is for the tests' throwaway user.
    """

    file: Path | None = None
    user: str | None = None

    @classmethod
    def here(cls) -> Crontab:
        value = os.environ.get(CRONTAB_FILE_ENV, "").strip()
        return cls(file=Path(value).expanduser()) if value else cls()

    @property
    def name(self) -> str:
        if self.file is not None:
            return str(self.file)
        return f"the crontab of {self.user}" if self.user else "your crontab"

    def _argv(self, *args: str) -> list[str]:
        program = shutil.which("crontab")
        if program is None:
            raise LabError(
                "this machine has no `crontab` (cron is not installed)",
                hint="install cron (Debian/Ubuntu: apt-get install cron), "
                "or `lab schedule down --print` shows a CI workflow instead",
            )
        return [program, *(["-u", self.user] if self.user else []), *args]

    def read(self) -> str:
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8")
            except FileNotFoundError:
                return ""
            except OSError as exc:
                raise LabError(f"cannot read {self.file}: {exc.strerror}") from None
        result = proc.run(self._argv("-l"), check=False, timeout=CRONTAB_TIMEOUT_S)
        if result.returncode == 0:
            return result.stdout
        if "no crontab for" in result.stderr.lower():
            return ""
        raise proc.CommandFailed(result)

    def write(self, text: str) -> None:
        if text and not text.endswith("\n"):
            text += "\n"  # cron refuses a last line without one
        if self.file is None:
            proc.run(self._argv("-"), stdin=text, timeout=CRONTAB_TIMEOUT_S)
            return
        partial = self.file.with_name(f".{self.file.name}.lab-partial")
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(text, encoding="utf-8")
            if self.file.exists():
                shutil.copymode(self.file, partial)
            partial.replace(self.file)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise LabError(f"cannot write {self.file}: {exc.strerror}") from None


def entries(crontab: Crontab) -> list[Entry]:
    """Lab's entries, in the crontab's order."""
    return [b.entry for b in _blocks(crontab.read().splitlines()) if b.entry is not None]


def install(crontab: Crontab, entry: Entry) -> Entry | None:
    """Add the entry, or put it in place of the stack's entry; returns the entry it replaced."""
    lines = crontab.read().splitlines()
    mine = [b for b in _blocks(lines) if b.stack == entry.stack]
    replaced = next((b.entry for b in mine if b.entry is not None), None)
    if mine:
        first = mine[0]
        for block in reversed(mine[1:]):
            del lines[block.start : block.end]
        lines[first.start : first.end] = entry.lines()
    else:
        lines += entry.lines()
    crontab.write("\n".join(lines) + "\n")
    return replaced


def remove(crontab: Crontab, stack_name: str | None) -> list[Entry]:
    """Remove the stack's entry (every lab entry with None); returns what was removed. Others' lines stay."""
    lines = crontab.read().splitlines()
    mine = [b for b in _blocks(lines) if stack_name is None or b.stack == stack_name]
    if not mine:
        return []
    for block in reversed(mine):
        del lines[block.start : block.end]
    crontab.write("\n".join(lines) + "\n" if lines else "")
    return [b.entry for b in mine if b.entry is not None]


@dataclass(frozen=True)
class Plan:
    """What `lab schedule down` would install for a stack, and what the user should know about it."""

    entry: Entry
    settings: schema.Settings
    stack_arg: str
    passphrase_file: Path | None

    @property
    def needs_passphrase(self) -> bool:
        return self.settings.target == "gcp" and self.settings.secrets_provider == "passphrase"


def lab_argv() -> list[str]:
    """How to start this very `lab`: its console script, or this Python with `-m toolkit`."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name in ("lab", "lab.exe") and script.is_file():
        return [str(script.resolve())]
    beside = Path(sys.executable).absolute().with_name("lab")  # `python -m toolkit` in a venv with lab
    if beside.is_file():
        return [str(beside)]
    return [str(Path(sys.executable).absolute()), "-m", "toolkit"]


def _passphrase_file() -> Path | None:
    value = os.environ.get(PASSPHRASE_FILE_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise LabError(
            f"{PASSPHRASE_FILE_ENV}={value} is not a file",
            hint="point it at a file (mode 0600) that holds the stack's passphrase",
        )
    return path


def plan_down(stack_name: str, when: str) -> Plan:
    """The entry that runs `lab down --yes` for a stack, from valid settings; the schedule is checked first."""
    when = validate_when(when)
    stack_file, resolution = stack.load(stack_name)
    if resolution.problems or resolution.settings is None:
        first = resolution.problems[0] if resolution.problems else "its values cannot be read"
        raise LabError(
            f"{stack_file.path.name}: {first}",
            hint=f"`lab config validate --stack {stack_name}` lists every problem",
        )
    settings = resolution.settings
    name = stack_file.name
    env = {"LAB_HOME": str(paths.lab_home().resolve())}
    project = paths.project_dir().resolve()
    stack_arg = str(stack_file.path.resolve())
    if paths.is_lab_project(project):
        env["LAB_PROJECT_DIR"] = str(project)
        if stack_file.path.resolve() == project / f"Pulumi.{name}.yaml":
            stack_arg = name
    env["PATH"] = os.environ.get("PATH", "") or os.defpath  # pulumi, ssh, gcloud as found in this shell
    passphrase_file = _passphrase_file()
    for variable in PASSED_ON:
        value = os.environ.get(variable, "").strip()
        if value:
            env[variable] = str(Path(value).expanduser().resolve())
    log = (paths.stack_home(name) / LOG_NAME).resolve()
    assignments = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
    down = shlex.join([*lab_argv(), "down", "--stack", stack_arg, "--yes"])
    command = f"{assignments} {down} >> {shlex.quote(str(log))} 2>&1"
    if "\n" in command or "\r" in command:
        raise LabError(
            "a path in the scheduled command holds a line break, which a crontab line cannot",
            hint="use a LAB_HOME, project folder and lab install whose paths have none",
        )
    return Plan(Entry(name, when, command, str(log)), settings, stack_arg, passphrase_file)


def _home_path(path: str) -> str:
    """A path for a runner's shell: ~/x becomes "$HOME"/x, anything else is quoted."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _ci_identity_notes(settings: schema.Settings) -> list[str]:
    """The least the runner's service account needs (toolkit.gcp.ci_identity; docs/gcp.md), as gcloud commands to
    run once, with SA_EMAIL the account's email."""
    from toolkit.gcp import ci_identity

    backend = settings.state_backend or ""
    state_bucket = backend.removeprefix("gs://").split("/", 1)[0] if backend.startswith("gs://") else "STATE_BUCKET"
    commands = ci_identity.gcloud_commands(
        settings.project or "PROJECT", state_bucket, settings.bucket_name or "BUCKET", settings.stack, "SA_EMAIL"
    )
    lines = [
        "# The service account (secret GCP_SERVICE_ACCOUNT) needs only these grants: the state bucket's objects, the",
        "# stack's backups in the artifact bucket, that bucket's policy and one custom role on the project for what",
        '# `lab down` deletes (docs/gcp.md, "The CI runner\'s identity"). Once, with SA_EMAIL its email:',
    ]
    return lines + [f"#   {command}" for command in commands]


def workflow(plan: Plan) -> str:
    """A GitHub Actions workflow that runs the same `lab down --yes` on the same schedule, from CI."""
    settings = plan.settings
    name = plan.entry.stack
    cron = github_cron(plan.entry.when)
    notes = [
        f"# .github/workflows/lab-down-{name}.yml: `lab down` of stack {name} from GitHub Actions, in a",
        "# checkout of this project with Pulumi.yaml and the stack file committed.",
        f"# GitHub runs schedules in UTC ('{cron}' UTC); cron on this machine uses its local time.",
    ]
    if settings.target == "local":
        notes.append("# NOTE: the local target's lab runs on this machine: a runner cannot stop it; use the crontab.")
    if settings.target == "gcp" and not (settings.state_backend or "").startswith("gs://"):
        backend = settings.state_backend or "file://$LAB_HOME/pulumi"
        notes.append(
            f"# NOTE: lab:stateBackend is {backend}, on this machine: a runner cannot see that state;"
            " set it to gs://BUCKET (see docs/gcp.md)."
        )
    if settings.target == "gcp":
        notes.append("# The runner needs no SSH to the tracker: `lab down` destroys the workers, stops the tracker")
        notes.append("# through the Compute API, and verifies the backup the tracker takes of itself as it stops in")
        notes.append("# the bucket before destroying the rest; without one, the tracker stays (exit 4).")
        notes += _ci_identity_notes(settings)
    if settings.target == "ssh":
        notes.append("# The tracker's backup before the teardown goes over SSH: the runner needs the lab's key (secret")
        notes.append("# LAB_SSH_KEY) and an address the tracker lets in (e.g. a self-hosted runner); if the backup")
        notes.append("# fails, nothing is stopped (exit 4).")
    key = _home_path(settings.ssh_private_key_path)
    steps = [
        "      - uses: actions/checkout@v4",
        "      - uses: actions/setup-python@v5",
        "        with:",
        "          python-version: '3.12'",
        "      - run: pip install '.[gcp,remote]'",
    ]
    if settings.target == "gcp":
        steps += [
            "      - run: lab doctor --install-pulumi",
            "      - uses: google-github-actions/auth@v2",
            "        with:",
            "          workload_identity_provider: ${{ secrets.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
            "          service_account: ${{ secrets.GCP_SERVICE_ACCOUNT }}",
        ]
    if settings.target == "ssh":
        steps += [
            "      - name: The lab's SSH key",
            "        run: |",
            f'          install -d -m 700 "$(dirname {key})"',
            f"          printf '%s\\n' \"$LAB_SSH_KEY\" > {key} && chmod 600 {key}",
            "        env:",
            "          LAB_SSH_KEY: ${{ secrets.LAB_SSH_KEY }}",
        ]
    steps.append(f"      - run: lab down --stack {shlex.quote(name)} --yes")
    if plan.needs_passphrase:
        steps += [
            "        env:",
            "          PULUMI_CONFIG_PASSPHRASE: ${{ secrets.PULUMI_CONFIG_PASSPHRASE }}",
        ]
    body = [
        f"name: lab down ({name})",
        "on:",
        "  schedule:",
        f"    - cron: '{cron}'",
        "  workflow_dispatch: {}",
        "permissions:",
        "  contents: read",
        "  id-token: write  # google-github-actions/auth with Workload Identity Federation",
        "jobs:",
        "  down:",
        "    runs-on: ubuntu-latest",
        "    timeout-minutes: 60",
        "    steps:",
        *steps,
    ]
    return "\n".join([*notes, *body]) + "\n"
