"""The one user-facing error type, and the handler that turns any outcome into an exit code.

Commands raise `LabError` with a one-line reason and, where there is one, the fix. `handle` maps:
LabError -> 1, usage errors -> 2, Ctrl-C -> 130, anything unexpected -> 3 with the traceback kept in
a log file (shown on stderr with --debug or LAB_DEBUG=1).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNEXPECTED = 3
EXIT_BACKUP_FAILED = 4  # `lab down`: the tracker's backup failed or did not verify, so nothing was destroyed
EXIT_LOCKED = 5  # another `lab up`/`lab down` holds the stack's lock
EXIT_LEFTOVERS = 6  # `lab down` finished, but something labelled with the lab is still there (it says what)
EXIT_UNVERIFIED = 7  # `lab down` destroyed what Pulumi knew, but GCP could not be asked what is left: check by hand
EXIT_INTERRUPTED = 130


class LabError(Exception):
    """A problem the user can act on. Its message is one line: what is wrong and how to fix it."""

    def __init__(self, message: str, *, hint: str | None = None, code: int = EXIT_ERROR) -> None:
        self.message = message
        self.hint = hint
        self.code = code
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.message}; {self.hint}" if self.hint else self.message
        return " ".join(text.split())


def debug_enabled(argv: list[str]) -> bool:
    """--debug anywhere before a `--`, or LAB_DEBUG set to a true value."""
    if os.environ.get("LAB_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in head


def _crash_log() -> Path | None:
    """Where an unexpected traceback is kept; None when LAB_HOME cannot take it."""
    from toolkit.paths import lab_home

    try:
        home = lab_home()
        home.mkdir(parents=True, exist_ok=True)
        return home / "crash.log"
    except (OSError, LabError):
        return None


def handle(run: Callable[[], int | None], argv: list[str]) -> int:
    """Run the CLI and turn every way it can end into an exit code, never a stray traceback."""
    import typer
    from typer.exceptions import TyperException

    debug = debug_enabled(argv)
    try:
        code = run()
        code = EXIT_OK if code is None else int(code)
    except LabError as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.code
    except typer.Exit as exc:
        code = exc.exit_code
    except TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # `lab ... | head`: the reader went away; nothing to report.
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
            return EXIT_UNEXPECTED
        log = _crash_log()
        where = ""
        if log is not None:
            log.write_text(traceback.format_exc())
            where = f"; the traceback is in {log}"
        print(
            f"unexpected error: {type(exc).__name__}: {exc}{where} (rerun with --debug to see it)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
    if code == EXIT_INTERRUPTED:
        print("interrupted", file=sys.stderr)
    return code
