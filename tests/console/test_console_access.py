"""Who may read the console, and what the console may read (pure checks)."""

from __future__ import annotations

import pytest

from stream.config import TopicNames
from stream.console.reader import TopicNotAllowedError, check_topics, console_topics
from stream.console.server import COOKIE, authorize, cookie_value, host_allowed, static_file


def test_without_a_token_everything_is_open() -> None:
    assert authorize(None) == "ok" and authorize("") == "ok"


def test_the_token_once_in_the_query_then_the_cookie_or_a_bearer_header() -> None:
    token = "s3cret-token"
    assert authorize(token) == "denied"
    assert authorize(token, query_token=token) == "login"
    assert authorize(token, query_token="s3cret-tokeN") == "denied"
    exp = 2_000_000_000
    assert authorize(token, cookie_header=f"{COOKIE}={cookie_value(token, exp)}", now=exp - 1) == "ok"
    assert authorize(token, cookie_header=f"other=1; {COOKIE}={cookie_value(token, exp)}", now=exp - 1) == "ok"
    assert authorize(token, cookie_header=f"{COOKIE}={token}") == "denied"  # the cookie holds an HMAC, not the token
    assert authorize(token, cookie_header=f"{COOKIE}={cookie_value('other', exp)}", now=exp - 1) == "denied"
    assert authorize(token, cookie_header='bad"cookie;;==') == "denied"
    assert authorize(token, authorization=f"Bearer {token}") == "ok"
    assert authorize(token, authorization="Bearer nope") == "denied"
    assert authorize(token, authorization=token) == "denied"
    assert token not in cookie_value(token, exp)


def test_the_cookie_expires_and_its_expiry_cannot_be_moved() -> None:
    token, exp = "s3cret-token", 2_000_000_000
    good = cookie_value(token, exp)
    assert authorize(token, cookie_header=f"{COOKIE}={good}", now=exp - 1) == "ok"
    assert authorize(token, cookie_header=f"{COOKIE}={good}", now=exp) == "denied"  # expired
    moved = f"{exp + 3600}.{good.split('.', 1)[1]}"  # a later expiry on the old HMAC
    assert authorize(token, cookie_header=f"{COOKIE}={moved}", now=exp + 1) == "denied"
    for junk in ("", ".", "abc.def", f"{exp}", f"-{exp}.{good.split('.', 1)[1]}", "9" * 40 + ".x"):
        assert authorize(token, cookie_header=f"{COOKIE}={junk}", now=0) == "denied", junk


def test_a_fresh_token_by_default_and_none_only_on_loopback() -> None:
    from stream.config import Settings
    from stream.console.service import ConsoleAccessError, ConsoleService

    s = Settings(kafka_bootstrap="127.0.0.1:1")
    a, b = ConsoleService(s), ConsoleService(s)
    assert a.token and b.token and a.token != b.token and len(a.token) >= 24
    assert a.login_url.endswith(f"/?token={a.token}")
    assert ConsoleService(s, token="").token is None  # explicitly open, on loopback
    with pytest.raises(ConsoleAccessError, match="without a token"):
        ConsoleService(s, host="0.0.0.0", token="")
    assert ConsoleService(s, host="0.0.0.0").token  # beyond loopback: the generated token protects it


@pytest.mark.parametrize(("host", "bound", "ok"), [
    ("127.0.0.1:6070", "127.0.0.1", True),
    ("localhost:6070", "127.0.0.1", True),
    ("[::1]:6070", "127.0.0.1", True),
    ("LOCALHOST", "127.0.0.1", True),
    ("evil.example:6070", "127.0.0.1", False),  # DNS rebinding: a foreign name pointed at 127.0.0.1
    ("127.0.0.1.evil.example", "127.0.0.1", False),
    (None, "127.0.0.1", False),
    ("console.internal:6070", "0.0.0.0", True),  # bound elsewhere: the token protects it
])
def test_a_loopback_console_answers_only_to_loopback_names(host: str | None, bound: str, ok: bool) -> None:
    assert host_allowed(host, bound) is ok


def test_only_the_packaged_static_files_are_served() -> None:
    for name in ("index.html", "console.js", "console.css"):
        found = static_file(name)
        assert found is not None and found[0]
    for name in ("../__init__.py", "state.py", "", "/etc/passwd", "console.js/"):
        assert static_file(name) is None
    html = static_file("index.html")[0].decode()  # type: ignore[index]
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere (no CDN)
    assert "<script>" not in html and "style=" not in html  # no inline script or style (the CSP forbids both)


def test_the_console_reads_only_the_derived_topics() -> None:
    for names in (TopicNames(), TopicNames(metrics="m.x", audit="a.x", raw="r.x", protected="p.x")):
        topics = console_topics(names)
        assert topics == [names.metrics, names.frequencies, names.audit, names.snapshots]
        assert names.raw not in topics and names.protected not in topics
        check_topics(topics, names)
        for forbidden in (names.raw, names.protected, names.dlq, names.features, names.erasure, "anything"):
            with pytest.raises(TopicNotAllowedError, match=forbidden.replace(".", r"\.")):
                check_topics([*topics, forbidden], names)


def test_the_command_refuses_no_token_beyond_loopback() -> None:
    from click.testing import CliRunner

    from stream.cli import cli

    r = CliRunner().invoke(cli, ["console", "--host", "0.0.0.0", "--no-token"])
    assert r.exit_code == 2 and "loopback address only" in r.output
    r = CliRunner().invoke(cli, ["console", "--token", "t", "--no-token"])
    assert r.exit_code == 2 and "at most one of --token, --no-token" in r.output
