"""The console's HTTP side: the page, its static files, ``/api/state`` (JSON) and ``/api/events``
(server-sent events: the state again whenever it changed), on the standard library's
:class:`~http.server.ThreadingHTTPServer`.

Access: with a token, every request must carry it - ``?token=`` once (answered with a cookie
holding its expiry and an HMAC of the token and that expiry, and a redirect to the same page
without it), then the cookie until it expires (:data:`COOKIE_SECONDS`), or ``Authorization:
Bearer``; compared with :func:`hmac.compare_digest`. Bound to a loopback
address, only loopback ``Host`` headers are served (a page elsewhere cannot read the console
through DNS rebinding). Every answer forbids framing, sniffing and any script, style or
connection outside the console itself (Content-Security-Policy).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

__all__ = ["COOKIE", "COOKIE_SECONDS", "ConsoleHTTPServer", "authorize", "cookie_value", "host_allowed", "static_file"]

log = logging.getLogger("streamgate.console")

COOKIE = "streamgate_console"
COOKIE_SECONDS = 12 * 3600  # a login lasts this long; then ?token= again
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8",
           "index.html": "text/html; charset=utf-8"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def cookie_value(token: str, expires: int) -> str:
    """What the cookie holds: its expiry (unix seconds) and an HMAC of the token and that expiry
    (the token itself never sits in the cookie jar, and a stolen cookie dies with its expiry)."""
    mac = hmac.new(token.encode(), b"streamgate-console-cookie|%d" % expires, hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _cookie_ok(token: str, value: str, now: float) -> bool:
    expires, dot, _mac = value.partition(".")
    if not dot or not expires.isdigit() or len(expires) > 12:
        return False
    return now < int(expires) and _same(value, cookie_value(token, int(expires)))


def authorize(token: str | None, *, query_token: str | None = None, cookie_header: str | None = None,
              authorization: str | None = None, now: float | None = None) -> Literal["ok", "login", "denied"]:
    """``ok``: no token is needed, or the cookie (not expired at ``now``) or bearer header carries
    it; ``login``: the query carries it (set the cookie, then redirect without it); ``denied``:
    anything else."""
    if not token:
        return "ok"
    if query_token is not None and _same(query_token, token):
        return "login"
    if cookie_header:
        try:
            jar = SimpleCookie(cookie_header)
        except CookieError:
            jar = SimpleCookie()
        morsel = jar.get(COOKIE)
        if morsel is not None and _cookie_ok(token, morsel.value, time.time() if now is None else now):
            return "ok"
    if authorization and authorization.startswith("Bearer ") and _same(authorization[7:].strip(), token):
        return "ok"
    return "denied"


def host_allowed(host_header: str | None, bound_host: str) -> bool:
    """Bound to loopback: only a loopback ``Host`` (any port). Bound elsewhere: any."""
    if bound_host not in _LOOPBACK:
        return True
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in _LOOPBACK


def static_file(name: str) -> tuple[bytes, str] | None:
    """(content, content type) of a packaged static file, None for anything else."""
    if name not in _STATIC:
        return None
    return (resources.files("stream.console").joinpath("static", name).read_bytes(), _STATIC[name])


class ConsoleHTTPServer(ThreadingHTTPServer):
    """Serves one console. ``state_json(since_version)`` gives ``(version, JSON bytes)``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], *, state_json: Callable[[], tuple[int, bytes]],
                 token: str | None, stop: threading.Event, sse_interval: float = 1.0) -> None:
        self.state_json = state_json
        self.token = token or None
        self.stopping = stop
        self.sse_interval = sse_interval
        self.bound_host = address[0]
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ConsoleHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "streamgate-console"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("console request: %s", format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {**_SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _plain(self, status: HTTPStatus, text: str) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not host_allowed(self.headers.get("Host"), self.server.bound_host):
            self._plain(HTTPStatus.MISDIRECTED_REQUEST, "this console answers to 127.0.0.1 / localhost only")
            return
        query = parse_qs(url.query)
        verdict = authorize(self.server.token, query_token=next(iter(query.get("token", [])), None),
                            cookie_header=self.headers.get("Cookie"), authorization=self.headers.get("Authorization"))
        if verdict == "denied":
            self._plain(HTTPStatus.UNAUTHORIZED, "streamgate console: open the URL with ?token=... "
                        "(STREAMGATE_CONSOLE_TOKEN) once")
            return
        if verdict == "login":
            assert self.server.token is not None
            expires = int(time.time()) + COOKIE_SECONDS
            cookie = (f"{COOKIE}={cookie_value(self.server.token, expires)}; Path=/; Max-Age={COOKIE_SECONDS}; "
                      "HttpOnly; SameSite=Strict")
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": url.path or "/", "Set-Cookie": cookie})
            return
        path = url.path
        if path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            return
        if path in ("/", "/index.html"):
            found = static_file("index.html")
        elif path.startswith("/static/"):
            found = static_file(path[len("/static/"):])
        elif path == "/api/state":
            _version, body = self.server.state_json()
            self._send(HTTPStatus.OK, body, "application/json")
            return
        elif path == "/api/events":
            self._events()
            return
        else:
            found = None
        if found is None:
            self._plain(HTTPStatus.NOT_FOUND, "not found")
            return
        self._send(HTTPStatus.OK, found[0], found[1])

    def _events(self) -> None:
        """Server-sent events: the state whenever its version changed, a comment every 15 s."""
        self.send_response(HTTPStatus.OK)
        for k, v in _SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        last, quiet = -1, 0.0
        stop = self.server.stopping
        try:
            while not stop.is_set():
                version, body = self.server.state_json()
                if version != last:
                    self.wfile.write(b"data: " + body + b"\n\n")
                    self.wfile.flush()
                    last, quiet = version, 0.0
                elif quiet >= 15.0:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    quiet = 0.0
                stop.wait(self.server.sse_interval)
                quiet += self.server.sse_interval
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return
