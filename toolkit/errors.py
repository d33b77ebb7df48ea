"""The one user-facing error type and the exit codes: the bottom of the toolkit, importing nothing of it.

Everything raises `LabError` with a one-line reason and, where there is one, the fix. The command line turns
every outcome into an exit code (toolkit.cli.failures).
"""

from __future__ import annotations

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
