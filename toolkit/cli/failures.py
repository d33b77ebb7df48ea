"""How the command line ends: every outcome becomes an exit code, never a stray traceback.

`handle` maps: LabError -> its code (1 unless it says otherwise), usage errors -> 2, Ctrl-C -> 130,
anything unexpected -> 3 with the traceback kept in a log file (shown on stderr with --debug or
LAB_DEBUG=1).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from toolkit.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNEXPECTED, LabError


def debug_enabled(argv: list[str]) -> bool:
    """--debug anywhere before a `--`, or LAB_DEBUG set to a true value."""
    if os.environ.get("LAB_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in head


def _crash_log() -> Path | None:
    """Where an unexpected traceback is kept; None when LAB_HOME cannot take it."""
    from toolkit.config.paths import lab_home

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
