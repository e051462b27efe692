"""The console in a real headless browser (Chromium via Selenium), on the demo's own run.

One demo run (the four workers as processes, on the test's broker, Redis and topics) is held open
after its summary; the page is opened with its token and every view is checked against what the
topics carry - counts, an estimate with its interval and the truth, a receipt with its
signature - and photographed to ``$STREAMGATE_ARTIFACTS`` (default ``artifacts/console/``).
Without Chromium, chromedriver or Selenium the tests are skipped, naming what is missing.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from stream.config import Settings, TopicNames
from stream.console import console_topics
from stream.crypto.keyring import Keyring
from stream.crypto.signing import verify_key
from stream.demo import DEMO_EPSILON, DEMO_PERSON_MEMOS, run_demo
from stream.dev.stack import free_port
from stream.faults import make_invalid
from stream.ldp.aggregate import merge_records
from stream.ldp.policy import LdpPolicy
from stream.ldp.privatizer import reports_per_person
from stream.learn.snapshot import ModelSnapshot
from stream.retention.receipts import verify_receipt
from stream.schema import load_schema
from stream.synth import ClickstreamGenerator
from tests.support.fixtures import delete_prefixed_keys
from tests.support.kafka import read_topic
from tests.support.workers import ROLE_USERS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EVENTS = 2000
INVALID_RATE = 0.02
TOKEN = "browser-test-token"
VIEWS = ("pipeline", "estimates", "privacy", "model")


def _find(env: str, names: tuple[str, ...], paths: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if os.access(os.environ[env], os.X_OK) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in paths if os.access(p, os.X_OK)), None)


def artifacts_dir() -> Path:
    d = Path(os.environ.get("STREAMGATE_ARTIFACTS") or REPO / "artifacts" / "console")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """A headless Chromium; the test is skipped (naming what is missing) when there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install '.[test]')")
    chromium = _find("STREAMGATE_CHROMIUM", ("chromium", "chromium-browser", "google-chrome"), ("/usr/bin/chromium",))
    if chromium is None:
        pytest.skip("no Chromium browser found: install Debian's chromium (or set STREAMGATE_CHROMIUM)")
    chromedriver = _find("STREAMGATE_CHROMEDRIVER", ("chromedriver",), ("/usr/bin/chromedriver",))
    if chromedriver is None:
        pytest.skip("no chromedriver found: install Debian's chromium-driver (or set STREAMGATE_CHROMEDRIVER)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    try:
        yield d
    finally:
        d.quit()


@dataclass
class Run:
    settings: Settings
    url: str
    valid: list[dict[str, Any]]


def _valid_events() -> list[dict[str, Any]]:
    """The demo's valid events, drawn exactly as it draws them (seed 0)."""
    rng = random.Random(1)
    valid = []
    for ev in ClickstreamGenerator(seed=0).events(EVENTS):
        if rng.random() < INVALID_RATE:
            make_invalid(ev, rng)
        else:
            valid.append(ev)
    return valid


@pytest.fixture(scope="module")
def demo(driver: Any, kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The demo on the session's broker and Redis with topics, key prefix and groups of its own, held
    open after its summary while the tests look at its console."""
    uid = uuid.uuid4().hex[:8]
    base = TopicNames()
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, redis_key_prefix=f"sgtest-{uid}",
        topics=TopicNames(**{n: f"{getattr(base, n)}.t{uid}" for n in TopicNames.model_fields}),
        state_dir=tmp_path_factory.mktemp("console-demo"), session_timeout_ms=6000,
        master_key=base64.b64encode(os.urandom(32)).decode(),
        group_prefix=f"sgtest-{uid}", redis_password_file=ROLE_USERS.get(redis_url),  # workers log in as roles
    )
    port = free_port()
    held, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        held.set()
        release.wait(900)

    def run() -> None:
        try:
            run_demo(settings, events=EVENTS, invalid_rate=INVALID_RATE, console_port=port, console_token=TOKEN,
                     hold=hold)
        except BaseException as exc:  # reported by the fixture
            errors.append(exc)
            held.set()

    thread = threading.Thread(target=run, name="demo", daemon=True)
    thread.start()
    try:
        assert held.wait(480), "the demo did not reach its summary within 480 s"
        assert not errors, f"the demo failed: {errors[0]!r}"
        yield Run(settings, f"http://127.0.0.1:{port}/", _valid_events())
    finally:
        release.set()
        thread.join(180)
        client = redis.Redis.from_url(redis_url)
        try:
            delete_prefixed_keys(client, settings.redis_key_prefix)
        finally:
            client.close()
    assert not thread.is_alive(), "the demo did not end after its hold"
    assert not errors, f"the demo failed: {errors[0]!r}"


def _wait(driver: Any, predicate: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda _d: predicate(), message=f"waiting for {what}")


def _text(driver: Any, css: str) -> str:
    return _read(driver, css, lambda e: str(e.text).strip(), "")


def _attr(driver: Any, css: str, name: str) -> str | None:
    return _read(driver, css, lambda e: e.get_attribute(name), None)


def _read(driver: Any, css: str, read: Callable[[Any], Any], missing: Any) -> Any:
    """``read`` of the element now matching ``css`` (``missing`` if none): each refresh re-renders the
    tables and bars, so an element found can be replaced before it is read: then the new one is read."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    for _ in range(10):
        try:
            return read(driver.find_element("css selector", css))
        except NoSuchElementException:
            return missing
        except StaleElementReferenceException:
            continue
    return missing


def _show(driver: Any, view: str) -> None:
    driver.find_element("css selector", f'#tabs button[data-view="{view}"]').click()
    _wait(driver, lambda: driver.find_element("css selector", f"section#{view}").is_displayed(), f"the {view} view")


def _shoot(driver: Any, view: str) -> Path:
    path = artifacts_dir() / f"{view}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def _latest(records: list[Any], worker: str) -> dict[str, Any]:
    snaps = [orjson.loads(r.value) for r in records]
    return max((s for s in snaps if s.get("worker") == worker), key=lambda s: s["ts"])


def _first_events(valid: list[dict[str, Any]], c: int) -> list[dict[str, Any]]:
    """Each person's first c valid events, in event order (the estimand's population)."""
    seen: dict[str, int] = {}
    out = []
    for e in valid:
        who = str(e["user_id"])
        if seen.get(who, 0) < c:
            out.append(e)
        seen[who] = seen.get(who, 0) + 1
    return out


@pytest.fixture(scope="module")
def page(driver: Any, demo: Run) -> Any:
    """The console opened with its token (which it trades for a cookie, leaving the URL)."""
    driver.get(demo.url + "?token=" + TOKEN)
    _wait(driver, lambda: bool(driver.execute_script("return document.body.dataset.version")), "the first state")
    assert "token=" not in driver.current_url
    return driver


def test_pipeline_counts_match_the_gateway_snapshot(page: Any, demo: Run) -> None:
    t = demo.settings.topics
    _show(page, "pipeline")
    gw = _latest(read_topic(demo.settings.kafka_bootstrap, t.metrics, idle=2.0), "gateway")
    assert gw["events_in"] == EVENTS  # every event of the run went through the gateway
    want = {"events_in": gw["events_in"], "protected": gw["events_out"]["protected"],
            "dead_lettered": gw["events_out"]["dlq"]}
    for key, n in want.items():
        _wait(page, lambda key=key, n=n: _text(page, f'[data-k="{key}"]') == f"{n:,}", f"{key} = {n:,}")
    assert want["protected"] + want["dead_lettered"] == EVENTS
    for reason, n in gw["dlq"].items():
        assert _text(page, f'#dlq-reasons [data-reason="{reason}"] .val') == f"{n:,}"
    for worker in ("gateway", "privatizer", "learner", "shredder"):  # (the demo stopped the privatizer and learner)
        assert _text(page, f'#workers tr[data-worker="{worker}"]').startswith(worker)
    gateway_row = _text(page, '#workers tr[data-worker="gateway"]')
    assert " ready " in f" {gateway_row} " and "not ready" not in gateway_row, gateway_row
    _wait(page, lambda: bool(page.find_elements("css selector", "#rates-chart svg polyline")), "the rates chart")
    _shoot(page, "pipeline")


def test_an_estimate_its_interval_and_the_truth(page: Any, demo: Run) -> None:
    s = demo.settings
    policy = LdpPolicy.from_schema(load_schema(s.schema_name), DEMO_EPSILON)  # what the demo ran at
    records = [orjson.loads(r.value) for r in read_topic(s.kafka_bootstrap, s.topics.frequencies, idle=2.0)]
    merged = {r["attribute"]: r for r in merge_records(policy, records)}
    page_view = next(v for v in merged["event_type"]["values"] if v["value"] == "page_view")
    # the estimand the record names: each person's first c events of the epoch (the demo runs in one)
    (c,) = {int(m.group(1)) for r in records
            if (m := re.search(r"each person's first (\d+) events", str(r.get("estimand", ""))))}
    # derived from the policy and the demo's cap: a joint-nb example is prepaid once per person-epoch,
    # a per-event example's label with every report
    joint = s.learn_examples and s.learn_model == "joint-nb"
    assert c == reports_per_person(policy, DEMO_PERSON_MEMOS * DEMO_EPSILON - (DEMO_EPSILON if joint else 0.0),
                                   DEMO_EPSILON if s.learn_examples and not joint else None)
    within = _first_events(demo.valid, c)
    assert 0 < len(within) < len(demo.valid)  # the cap binds in the demo: the estimand is not every event
    truth = sum(1 for e in within if e["event_type"] == "page_view") / len(within)
    _show(page, "estimates")
    row = '#freq [data-value="page_view"]'
    _wait(page, lambda: _text(page, f"{row} .num-proj") == f"{page_view['projected']:.3f}", "the merged page_view estimate")
    lo, hi = page_view["ci95"]
    assert _text(page, f"{row} .num-est") == f"{page_view['estimate']:.3f}"
    assert _text(page, f"{row} .num-ci") == f"[{lo:.3f}, {hi:.3f}]"
    assert _text(page, f"{row} .num-truth") == f"{truth:.3f}"
    assert f"n = {merged['event_type']['n']:,} reports" in _text(page, "#window-info")
    price = merged["price"]
    assert _text(page, '#mean-merged .num-mean[data-attr="price"]') == f"{price['mean']:.2f}"
    assert _text(page, "#mean-merged .num-ci") == f"[{price['ci95'][0]:.2f}, {price['ci95'][1]:.2f}]"
    true_mean = sum(policy.by_name["price"].clamp(e.get("price")) for e in within) / len(within)
    assert _text(page, "#mean-merged .num-truth") == f"{true_mean:.2f}"
    assert page.find_elements("css selector", "#mean-chart svg circle")
    _shoot(page, "estimates")


def test_privacy_budget_and_a_verified_erasure_receipt(page: Any, demo: Run) -> None:
    s = demo.settings
    t = s.topics
    audit = [orjson.loads(r.value) for r in read_topic(s.kafka_bootstrap, t.audit, idle=2.0)]
    (receipt,) = [r for r in audit if r.get("kind") == "erasure"]
    assert verify_receipt(receipt, verify_key(Keyring.from_settings(s), "receipt"))  # as `streamgate audit` checks it
    metrics = read_topic(s.kafka_bootstrap, t.metrics, idle=2.0)
    pv, sh = _latest(metrics, "privatizer"), _latest(metrics, "shredder")
    _show(page, "privacy")
    row = f'#receipts tr[data-request="{receipt["request_id"]}"]'
    _wait(page, lambda: _text(page, f"{row} .status") == "completed", "the erasure receipt")
    assert _text(page, f"{row} .keys") == f"{receipt['keys_shredded']:,}" and receipt["keys_shredded"] >= 1
    assert _attr(page, f"{row} .sig span", "data-verified") == "true"
    assert "✓ verified" in _text(page, f"{row} .sig")
    assert receipt["receipt_id"][:16] in _text(page, row)
    assert receipt["subject"] not in page.page_source  # the person's token is not shown
    over = pv["ldp_over_budget"]  # events past the person cap: not reported
    assert over > 0  # the demo's people have more events than their cap pays for
    _wait(page, lambda: _text(page, '[data-k="over_budget"]') == f"{over:,}", "the events not released")
    assert _text(page, '[data-k="keys_shredded"]') == f"{sum(sh['keys_shredded'].values()):,}"
    hist = pv.get("ldp_person_epsilon")  # published only for a finished epoch

    def histogram_shown() -> bool:  # read afresh: every refresh re-renders the histogram (stale elements)
        from selenium.common.exceptions import StaleElementReferenceException

        try:
            bars = [int(e.text) for e in page.find_elements("css selector", "#hist g[data-bin] text.count")]
        except StaleElementReferenceException:
            return False
        if hist is None:
            return bars == [] and _text(page, "#hist-empty") == "no finished epoch yet"
        return bars == hist["counts"]

    _wait(page, histogram_shown, "the ε histogram (or why there is none)")
    if hist is None:
        assert "finished epoch" in _text(page, "#hist-note")
    else:
        assert sum(hist["counts"]) == hist["people"] > 0
    _shoot(page, "privacy")


def test_model_snapshots_with_their_signatures(page: Any, demo: Run) -> None:
    s = demo.settings
    snaps = [ModelSnapshot.read_header(r.value) for r in read_topic(s.kafka_bootstrap, s.topics.snapshots, idle=2.0)]
    newest = max(snaps, key=lambda h: h["created_at"])
    _show(page, "model")
    row = f'#snapshots tr[data-model="{newest["name"]}"]'
    _wait(page, lambda: _text(page, f"{row} .examples") == f"{newest['examples_seen']:,}", "the newest snapshot")
    assert _text(page, f"{row} .auc") == f"{newest['metrics']['roc_auc']:.3f}"
    assert _text(page, f"{row} .loss") == f"{newest['metrics']['log_loss']:.3f}"
    assert _attr(page, f"{row} .sig span", "data-verified") == "true"
    assert page.find_elements("css selector", "#auc-chart svg circle")
    _shoot(page, "model")


def test_reads_only_the_derived_topics_and_wants_the_token(page: Any, demo: Run) -> None:
    topics = sorted(console_topics(demo.settings.topics))
    assert _text(page, "#reading") == ", ".join(topics)
    t = demo.settings.topics
    assert t.raw not in page.page_source and t.protected not in page.page_source
    severe = [e for e in page.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe  # no script error, nothing blocked by the content security policy
    page.delete_all_cookies()
    page.get(demo.url)
    assert "token" in _text(page, "body") and not page.find_elements("css selector", "#tabs")
    page.get(demo.url + "?token=" + TOKEN + "#privacy")
    _wait(page, lambda: bool(page.execute_script("return document.body.dataset.version")), "the state after login")


def test_a_quiet_demo_after_its_run(page: Any, demo: Run) -> None:
    """After the run: the privatizer and learner the demo stopped show as stopped (their last snapshot
    says so), a minute without events takes every rate to 0, the counts add up from the privatizer
    to the learner, and no audit record of the clean run is UNVERIFIED."""
    import time

    t = demo.settings.topics
    metrics = read_topic(demo.settings.kafka_bootstrap, t.metrics, idle=2.0)
    snaps = [orjson.loads(r.value) for r in metrics]
    done_at = min(s["ts"] for s in snaps if s.get("worker") == "gateway" and s["events_in"] == EVENTS)
    pv, ln = _latest(metrics, "privatizer"), _latest(metrics, "learner")
    assert pv["state"] == ln["state"] == "stopping" and not pv["ready"] and not ln["ready"]
    time.sleep(max(0.0, done_at + 60 - time.time()))  # an idle minute after the gateway counted the last event
    _show(page, "pipeline")
    for worker in ("privatizer", "learner"):
        row = f'#workers tr[data-worker="{worker}"]'
        _wait(page, lambda row=row: _attr(page, row, "data-status") == "stopped",
              f"the {worker} shown as stopped")
        assert _text(page, f'{row} [data-col="ready"]') == "stopped (graceful shutdown)"
        assert _text(page, f'{row} [data-col="rate_in"]') == _text(page, f'{row} [data-col="rate_out"]') == "0.0"
    gw = '#workers tr[data-worker="gateway"]'
    _wait(page, lambda: _text(page, f'{gw} [data-col="rate_in"]') == "0.0", "the gateway's rate at 0")
    assert _text(page, f'{gw} [data-col="ready"]') == "ready" and _text(page, f'{gw} [data-col="rate_out"]') == "0.0"
    for key in ("rate_in", "rate_protected", "rate_dlq"):
        assert _text(page, f'[data-k="{key}"]') == "0.0", key
    # what the learner read is what the privatizer wrote to the features topic: feature reports and examples
    examples = pv["ldp"]["session_purchase"]["reports"]
    reports = pv["events_out"]["features"] - examples
    assert ln["events_in"] == reports + examples and 0 < reports <= pv["events_in"] and examples > 0
    assert _text(page, '#workers tr[data-worker="learner"] [data-col="in"]').startswith(
        f"{ln['events_in']:,} records (feature reports and examples")
    written = _text(page, '#workers tr[data-worker="privatizer"] [data-col="out"]')
    assert f"{reports:,} feature reports" in written and f"{examples:,} examples" in written
    _shoot(page, "pipeline-idle")
    _show(page, "privacy")
    _wait(page, lambda: _text(page, "#audit-counts").startswith("audit records:"), "the audit counts")
    assert "UNVERIFIED" not in _text(page, "#audit-counts")
