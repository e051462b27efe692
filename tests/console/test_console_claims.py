"""Claims of docs/console.md checked as attacks (issue 27):

* "an HttpOnly, SameSite=Strict cookie": in a real Chromium, a page of another site (``localhost``
  against the console's ``127.0.0.1``) neither reads the console's API with a credentialed fetch nor
  gets it by a top-level navigation (what SameSite=Lax would allow), while the same browser on the
  console's own site is let in; ``document.cookie`` never shows the cookie.
* "State lives in memory only, bounded: the newest 240 windows per attribute, 360 points per series,
  the last 20 receipts and drift events": fed far more than that, the state keeps exactly that.
* "at most 32 names per kind ... 256 instances ... a snapshot costs work in its worker's instances
  only": 5,000 distinct names keep the state at the size 100 names give it, and the work per record
  (counted, not timed) does not grow with the names seen.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from stream.config import Settings
from stream.console.server import COOKIE, ConsoleHTTPServer, cookie_value
from stream.console.state import RECEIPT_KINDS, ConsoleState
from stream.dev.stack import free_port
from stream.ldp.aggregate import estimate_record
from stream.ldp.policy import LdpPolicy
from stream.ops.metrics import WorkerMetrics
from stream.ops.worker import snapshot_record
from stream.retention.receipts import erasure_receipt
from stream.schema import load_schema
from tests.console.test_console_browser import driver

__all__ = ["driver"]

TOKEN = "claims-test-token"
T0 = 1_800_000_000.0


@pytest.fixture
def console(caplog: pytest.LogCaptureFixture):
    """A console on 127.0.0.1 with a token; ``served`` counts the state handed out (authorized reads)."""
    served: list[int] = []

    def state_json() -> tuple[int, bytes]:
        served.append(1)
        return 1, b'{"secret": "console-state"}'

    stop = threading.Event()
    server = ConsoleHTTPServer(("127.0.0.1", free_port()), state_json=state_json, token=TOKEN, stop=stop)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    caplog.set_level(logging.DEBUG, logger="streamgate.console")
    try:
        yield server, served
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        t.join(10)


def attacker_site(console_port: int) -> tuple[ThreadingHTTPServer, int]:
    """Another site's page: a credentialed fetch of the console's API, then a link to it."""
    page = f"""<!doctype html><html><body><a id="go" href="http://127.0.0.1:{console_port}/api/state">x</a>
<pre id="out">pending</pre><script>
fetch("http://127.0.0.1:{console_port}/api/state", {{credentials: "include", mode: "no-cors"}})
  .then(() => {{ document.getElementById("out").textContent = "fetched"; }})
  .catch(e => {{ document.getElementById("out").textContent = "error " + e; }});
</script></body></html>""".encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), Page)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, port


def _api_statuses(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().rsplit('"', 1)[1].split()[0] for r in caplog.records
            if r.name == "streamgate.console" and '"GET /api/state HTTP' in r.getMessage()]


@pytest.mark.integration
def test_the_samesite_strict_cookie_never_reaches_the_console_from_another_site(driver, console, caplog) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, served = console
    port = server.server_address[1]
    base = f"http://127.0.0.1:{port}"
    driver.delete_all_cookies()
    # the login (on the API, not the page, so nothing but this test reads the state): cookie set,
    # redirected without the token to where the same browser, on the console's own site, is let in
    driver.get(f"{base}/api/state?token={TOKEN}")
    assert TOKEN not in driver.current_url
    (cookie,) = [c for c in driver.get_cookies() if c["name"] == COOKIE]
    expires = int(cookie["value"].partition(".")[0])  # the cookie holds its expiry and an HMAC of token and expiry
    assert cookie["sameSite"] == "Strict" and cookie["httpOnly"] and cookie["value"] == cookie_value(TOKEN, expires)
    assert COOKIE not in driver.execute_script("return document.cookie")  # HttpOnly: no script reads it
    assert "console-state" in driver.page_source and len(served) == 1
    assert _api_statuses(caplog) == ["200"]

    evil, evil_port = attacker_site(port)
    try:
        driver.get(f"http://localhost:{evil_port}/")  # localhost and 127.0.0.1 are different sites
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "out").text != "pending")
        WebDriverWait(driver, 15).until(lambda _: len(_api_statuses(caplog)) == 2)
        driver.find_element(By.ID, "go").click()  # a top-level navigation: Lax would send the cookie
        WebDriverWait(driver, 15).until(lambda d: d.current_url.startswith(f"{base}/api/state"))
        WebDriverWait(driver, 15).until(lambda _: len(_api_statuses(caplog)) == 3)
    finally:
        evil.shutdown()
        evil.server_close()
    assert _api_statuses(caplog) == ["200", "401", "401"]  # the fetch and the navigation: no cookie
    assert len(served) == 1 and "console-state" not in driver.page_source


# --------------------------------------------------------------------------- memory bounds
@pytest.fixture(scope="module")
def policy() -> LdpPolicy:
    s = Settings()
    return LdpPolicy.from_schema(load_schema(s.schema_name), s.ldp_epsilon)


def _snap(ts: float, worker: str = "gateway", pid: int = 1) -> dict[str, Any]:
    m = WorkerMetrics("gateway")
    m.events_in(int(ts - T0) + 1)
    snap = snapshot_record(m, "gateway")
    snap.update({"ts": ts, "pid": pid, "host": "h", "worker": worker, "ready": True, "reason": None})
    return snap


def _iso(ts: float) -> str:
    return (datetime.fromtimestamp(T0, UTC) + timedelta(seconds=ts - T0)).isoformat().replace("+00:00", "Z")


def test_the_documented_memory_bounds_hold_under_a_flood(policy: LdpPolicy) -> None:
    st = ConsoleState(policy)
    assert (st.windows_kept, st.history, st.receipts_kept) == (240, 360, 20)  # the documented numbers
    attr = policy.by_name["price"]
    for i in range(1000):
        start = int((T0 + 60 * i) * 1000)
        st.add_frequency(estimate_record(attr, n=10, support=None, total=5.0, start_ms=start, end_ms=start + 60_000, worker="w"))
        st.add_metrics(_snap(T0 + i))
        at = _iso(T0 + i)
        st.add_audit(erasure_receipt(subject="tk1_x", request_id=f"r{i}", at=T0 + i, worker="w", keys_shredded=1),
                     None)
        st.add_audit({"kind": "drift", "model": "m1", "metric": "log_loss", "examples_seen": i, "at": at,
                      "receipt_id": f"{i:064x}"}, None)
        st.add_snapshot({"name": "m1", "created_at": at, "examples_seen": i, "metrics": {}}, None)
    windows = st._windows["price"]
    assert len(windows) == 240 and min(windows) == int((T0 + 60 * 760) * 1000)  # the newest 240
    assert len(st._series["gateway"]) == 360 and st._series["gateway"][-1]["ts"] == T0 + 999
    assert len(st._models["m1"]) == 360
    assert len(st._receipts) == 20 and st._receipts[-1]["request_id"] == "r999"
    assert len(st._drifts) == 20 and st._drifts[-1]["examples_seen"] == 999
    assert len(st._window_views) <= 240


def _entries(st: ConsoleState) -> int:
    return (len(st._instances) + sum(len(s) for s in st._series.values()) + sum(len(m) for m in st._models.values())
            + len(st._audit) + sum(len(w) for w in st._windows.values()))


def test_state_stays_bounded_whatever_names_the_records_carry(policy: LdpPolicy) -> None:
    """The bound must not depend on the records being well behaved: the topics are written by
    workers, but a console is exactly what should survive a confused or hostile writer."""
    sizes = []
    for n in (100, 400):  # small: every metrics snapshot also scans every instance per worker name
        st = ConsoleState(policy)
        for i in range(n):
            st.add_metrics(_snap(T0 + i, worker=f"w{i}", pid=i))
            st.add_snapshot({"name": f"m{i}", "created_at": _iso(T0 + i), "examples_seen": i, "metrics": {}}, None)
            st.add_audit({"kind": f"k{i}", "reason": f"r{i}", "receipt_id": f"{i:064x}"}, None)
        sizes.append(_entries(st))
    assert sizes[1] <= sizes[0] * 1.1, f"state entries grew with the number of names: {sizes}"


def _flood(st: ConsoleState, names: range, *, worker: str | None = None) -> None:
    for i in names:
        st.add_metrics(_snap(T0 + i, worker=worker or f"w{i}", pid=i))
        st.add_snapshot({"name": f"m{i}", "created_at": _iso(T0 + i), "examples_seen": i, "metrics": {}}, None)
        st.add_audit({"kind": f"k{i}", "reason": f"r{i}", "receipt_id": f"{i:064x}"}, None)


def test_five_thousand_names_cost_the_same_per_record_and_keep_the_state_bounded(
        policy: LdpPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Work is counted as calls of the state's number reader, which every scan of an instance makes."""
    import stream.console.state as state_module

    calls = [0]
    real = state_module._num

    def counted(value: Any) -> float:
        calls[0] += 1
        return real(value)

    monkeypatch.setattr(state_module, "_num", counted)
    st = ConsoleState(policy)
    st.add_metrics(_snap(T0, worker="gateway", pid=99_999))  # a real worker before the flood
    st.add_audit(erasure_receipt(subject="tk1_x", request_id="r", at=T0, worker="w", keys_shredded=1), None)
    per_1000, entries = [], []
    for block in range(5):
        before = calls[0]
        _flood(st, range(1000 * block + 1, 1000 * block + 1001))
        per_1000.append(calls[0] - before)
        entries.append(_entries(st))
    assert max(per_1000) == min(per_1000), f"work per 1,000 names grew: {per_1000}"
    assert per_1000[0] < 20 * 1000  # a handful of reads per record, not a scan of every name
    kept = st.names_kept
    assert entries[0] == entries[-1] and len(st._instances) <= kept + 4 and len(st._series) <= kept + 4
    assert len(st._models) == kept and min(st._models) == f"m{5000 - kept + 1}"  # the most recent models
    assert [w for w in st._series if w.startswith("w")] == [f"w{i}" for i in range(5000 - kept + 1, 5001)]
    assert "gateway" in st._series  # the four workers are never crowded out by other names
    # audit counts beyond the cap are folded, not lost: the totals stay true
    assert len(st._audit) <= kept + len(RECEIPT_KINDS) + 2 and sum(st._audit.values()) == 5001
    late = erasure_receipt(subject="tk1_y", request_id="r2", at=T0 + 5000, worker="w", keys_shredded=1)
    st.add_audit(dict(late, kind="erasure_rejected", reason="not_a_token"), None)  # a receipt after the flood
    view = st.view(T0 + 5000)
    rows = {(r["kind"], r["reason"]): r["count"] for r in view["privacy"]["audit"]}
    assert rows[("other", "other")] == 5000 - (kept - 1) and rows[("erasure", "erasure")] == 1
    assert rows[("erasure_rejected", "other")] == 1  # its kind keeps a row of its own
    assert len(view["model"]["models"]) == kept


def test_a_flood_of_instances_of_one_worker_is_bounded(policy: LdpPolicy) -> None:
    st = ConsoleState(policy, live_seconds=10_000)  # every instance stays live: only the cap bounds them
    _flood(st, range(1000), worker="gateway")
    assert len(st._instances) == st.instances_kept and len(st._series) == 1
    assert min(pid for (_w, _h, pid) in st._instances) == 1000 - st.instances_kept  # the most recent ones
    rows = st.view(T0 + 1000)["pipeline"]["workers"]
    assert len(rows) == st.instances_kept and {r["worker"] for r in rows} == {"gateway"}
