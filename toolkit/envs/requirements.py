"""What a sweep's requirements.txt may say: packages and where to fetch them over HTTPS, nothing else.

The file travels with the sweep to every host that installs it (a worker, the tracker for a detached sweep), and
uv installs what it names there as the login user, so each line is checked before any install:

- a requirement by name, with extras, version specifiers, markers and `--hash=` (`torch==2.4.0`, `x[y]>=1; ...`);
- a requirement at a URL, `name @ https://...` or `name @ git+https://...`, or the bare URL;
- `-i`/`--index-url`, `--extra-index-url`, `-f`/`--find-links` at an `https://` URL; `--no-index`, `--pre`,
  `--prefer-binary`, `--only-binary`, `--no-binary`, `--require-hashes`.

Refused, each naming its line: a file on this machine (`-r`, `-c`, `-e`, a path, `file:`, `git+file:`), which a
worker does not have and a sweep must not read; plain `http://` (anyone on the way can change the code);
`git+ssh://`, `ssh://`, `git://` (fetched with the host's own SSH keys, or unauthenticated); any other scheme;
a URL holding a user or password (the spec travels on command lines and into records); `--trusted-host` (turns off
TLS checks); any other option.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from toolkit.errors import LabError

INDEX_OPTIONS = frozenset({"-i", "--index-url", "--extra-index-url", "-f", "--find-links"})
FLAGS = frozenset({"--no-index", "--pre", "--prefer-binary", "--require-hashes"})
VALUED = frozenset({"--only-binary", "--no-binary"})
LOCAL_OPTIONS = frozenset({"-r", "--requirement", "-c", "--constraint", "-e", "--editable"})
_COMMENT = re.compile(r"(^|\s)#.*$")
_OPTION = re.compile(r"^(--?[A-Za-z][A-Za-z-]*)(?:[=\s]\s*(.*))?$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_NAMED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*(.*)$")
_ARCHIVE = re.compile(r"\.(whl|tar\.gz|tgz|zip|tar\.bz2)$", re.IGNORECASE)
FILE_HINT = "name a package from an index (name==version), or publish it to one and name it"


class Refused(Exception):
    """One line's reason (what it is, why not) and what to do instead."""

    def __init__(self, why: str, hint: str) -> None:
        super().__init__(why)
        self.why, self.hint = why, hint


def check(text: str, source: str) -> None:
    """Raise LabError naming the first line of `text` (a requirements.txt read from `source`) lab refuses."""
    for number, line in _lines(text):
        try:
            _check_line(line)
        except Refused as refused:
            raise LabError(f"{source}:{number}: {line!r} {refused.why}", hint=refused.hint) from None


def _lines(text: str) -> list[tuple[int, str]]:
    """The file's logical lines (a trailing backslash continues one), without comments, with their first number."""
    found: list[tuple[int, str]] = []
    pending, first = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            first = number
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = _COMMENT.sub("", pending + raw).strip()
        pending = ""
        if line:
            found.append((first, line))
    if pending.strip():
        found.append((first, _COMMENT.sub("", pending).strip()))
    return found


def _check_line(line: str) -> None:
    if line.startswith("-"):
        _check_option(line)
        return
    requirement, *options = re.split(r"\s+(?=--)", line)
    for option in options:
        if not option.startswith("--hash"):
            raise Refused(f"passes {option.split('=')[0].split()[0]} to a requirement", "keep only --hash=... there")
    if _SCHEME.match(requirement):
        _check_url(requirement.split(";")[0].strip(), vcs=True)
        return
    named = _NAMED.match(requirement)
    if requirement.startswith((".", "/", "~")) or "/" in requirement.split("@")[0] or not named:
        raise Refused("names a file on this machine, which a worker does not have", FILE_HINT)
    rest = named.group(2)
    if rest.startswith("@"):
        _check_url(rest[1:].split(";")[0].strip(), vcs=True)
    elif _ARCHIVE.search(requirement.split(";")[0].strip()):
        raise Refused("names a file on this machine, which a worker does not have", FILE_HINT)


def _check_option(line: str) -> None:
    matched = _OPTION.match(line)
    name, value = (matched.group(1), (matched.group(2) or "").strip()) if matched else (line.split()[0], "")
    if name in LOCAL_OPTIONS:
        raise Refused("names a file on this machine, which a worker does not have", FILE_HINT)
    if name in INDEX_OPTIONS:
        if not value:
            raise Refused(f"gives {name} no URL", f"give {name} an https:// URL")
        _check_url(value, vcs=False)
        return
    if name == "--trusted-host":
        raise Refused("turns off TLS checks for a host", "remove it: indexes are fetched over https:// only")
    if (name in FLAGS and not value) or (name in VALUED and value):
        return
    raise Refused(f"is an option lab does not pass to uv ({name})", "name packages, index URLs and binary options only")


def _check_url(url: str, *, vcs: bool) -> None:
    scheme = url.split(":", 1)[0].lower() if _SCHEME.match(url) else ""
    allowed = ("https", "git+https") if vcs else ("https",)
    if scheme in ("file", "git+file") or not scheme:
        raise Refused("names a file on this machine, which a worker does not have", FILE_HINT)
    if scheme in ("http", "git+http"):
        raise Refused("fetches code over plain http, which anyone on the way can change", "use its https:// URL")
    if scheme in ("ssh", "git+ssh", "git", "git+git"):
        raise Refused(
            "fetches code with the host's own SSH keys (or unauthenticated git://)",
            "use git+https:// to the repository, or publish the package to an index" if vcs else "use an https:// URL",
        )
    if scheme not in allowed:
        raise Refused(
            f"fetches from a {scheme}: URL, which lab does not fetch from",
            f"use {' or '.join(f'{s}://' for s in allowed)}",
        )
    parts = urlsplit(url.removeprefix("git+"))
    if parts.username or parts.password:
        raise Refused(
            "holds a user or password, which would travel on command lines and into the sweep's records",
            "drop it from the URL and give uv the credential on the host (a keyring: UV_KEYRING_PROVIDER, or ~/.netrc)",
        )
