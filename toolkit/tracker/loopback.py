"""A WSGI guard: answer only requests addressed to this machine's loopback names, 403 to the rest.

A service on 127.0.0.1 without authentication (optuna-dashboard) is still reachable from a web page in the user's
browser: the page's own name is rebound to 127.0.0.1 (DNS rebinding), and the browser then sends the page's
requests, same-origin as far as it knows, with `Host: evil.example:PORT`. The guard serves a request only when
its Host is `127.0.0.1`, `localhost` or `[::1]` (any port: `lab tunnel`'s local end is 127.0.0.1 on a port of
its own), and, when the browser sends an Origin (every cross-origin request and every POST, PUT and DELETE), only
when that origin is `http://` one of those names too. The names a rebinding page can make the browser send are
its own, never these.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?$")
REFUSED = (
    b"403 Forbidden: this service answers only to 127.0.0.1, localhost and [::1];"
    b" reach it on this machine or through `lab tunnel`\n"
)

StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def loopback_host(value: str | None) -> bool:
    """Whether a Host header (`name[:port]`) names this machine's loopback."""
    matched = _HOST.match((value or "").strip().lower())
    return bool(matched) and matched.group(1) in NAMES  # type: ignore[union-attr]


def loopback_origin(value: str) -> bool:
    """Whether an Origin header (`scheme://name[:port]`) is a page served from this machine's loopback."""
    scheme, separator, host = value.strip().lower().partition("://")
    return bool(separator) and scheme == "http" and loopback_host(host)


def guard(app: App) -> App:
    """`app`, answering 403 to a request whose Host (or Origin) is not a loopback name."""

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        origin = environ.get("HTTP_ORIGIN")
        if loopback_host(environ.get("HTTP_HOST")) and (origin is None or loopback_origin(origin)):
            return app(environ, start_response)
        start_response(
            "403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(REFUSED)))]
        )
        return [REFUSED]

    return guarded
