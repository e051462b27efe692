"""A seedable synthetic clickstream generator with exact ground truth.

Produces raw events for ``clicks.raw`` that validate against
``schemas/clickstream-event.v1.json``, together with the exact truth that the
LDP frequency estimators and the online purchase-propensity learners measure
their error against.

Shape of the simulation
-----------------------
* **Users** (``n_users``) have stable attributes drawn once from a per-user RNG:
  a preferred device, a country from a skewed distribution (a few percent are
  outside the schema's LDP country domain and count as ``"other"``), a
  currency (mostly the country's), an email ``first.last{n}@example.com``,
  a phone, an IPv4 or IPv6 address, a user agent per device class, a shipping
  address, a favourite category and a hidden purchase-propensity effect. Some
  personal fields are ``null`` and some are absent for some users. Users differ
  in activity (log-normal weights).
* **Sessions** are interleaved: ``concurrent_sessions`` sessions of distinct
  users are open at any time and each event comes from a random one of them.
  A session is planned when it opens: a landing ``page_view`` (often with an
  external ``referrer``), then browsing (``search``, category pages, product
  pages with ``page_view`` + ``product_view``, ``add_to_cart``), and if the
  cart is not empty the cart page (sometimes a ``remove_from_cart``),
  ``checkout`` and finally one ``purchase`` event per cart line. A session
  that purchases ends with its purchase events.
* **Catalogue**: categories are Zipf distributed over all schema categories
  (in schema order, the first is the most popular), products are Zipf within
  their category (``P-<category>-<nnnn>``, rank = number), each product has a
  fixed log-normal price around its category's median, in [0.01, 100000],
  rounded to cents. Prices are catalogue prices; currencies are not converted.
* **Purchase propensity** is a logistic model: every funnel step (add to cart,
  checkout, purchase) has probability ``sigmoid(bias_stage + w_stage * x)``
  with ``x = purchase_logit(device, country, category, price) + user_effect``.
  ``purchase_logit`` and its tables (:data:`DEVICE_EFFECT`,
  :data:`COUNTRY_EFFECT`, :data:`CATEGORY_EFFECT`, :data:`PRICE_EFFECT`) are
  public, the hidden per-user effect (sd :data:`USER_EFFECT_SD`) keeps the
  task from being trivial. :meth:`ClickstreamGenerator.session_label` gives the
  clean label (the session ended in a purchase).
* **Time**: ``ts`` starts at ``start`` (default 2024-01-01T00:00:00Z) and
  advances by exponential gaps at ``events_per_second`` (simulated time, not
  wall time), formatted RFC 3339 with microseconds and ``Z``; it never
  decreases.

Ground truth
------------
:attr:`ClickstreamGenerator.truth` covers exactly the events yielded so far
(updated before each event is handed out). Counters hold raw values as they
appear in the events (``country`` may hold out-of-domain codes);
:meth:`GroundTruth.frequencies` and :meth:`GroundTruth.domain_counts` map them
onto the schema domain (out-of-domain countries -> ``"other"``). Prices are
accumulated exactly in integer cents (``price_cents``).

Determinism: the same seed and parameters give identical events (including
``event_id``: uuid4 built from the seeded RNG); different seeds differ. A
generator is a continuous stream: successive ``events(n)`` calls continue it.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "CATEGORIES",
    "CATEGORY_EFFECT",
    "COUNTRIES",
    "COUNTRY_DOMAIN",
    "COUNTRY_EFFECT",
    "COUNTRY_OTHER",
    "DEFAULT_START",
    "DEVICES",
    "DEVICE_EFFECT",
    "EVENT_TYPES",
    "EXTRA_COUNTRIES",
    "PRICE_EFFECT",
    "SCHEMA",
    "SCHEMA_NAME",
    "USER_EFFECT_SD",
    "ClickstreamGenerator",
    "GroundTruth",
    "generate",
    "purchase_logit",
]

SCHEMA_NAME = "clickstream-event.v1.json"


def _load_schema() -> dict[str, Any]:
    try:
        from importlib.resources import files

        text = (files("stream.schemas") / SCHEMA_NAME).read_text(encoding="utf-8")
    except (ImportError, OSError, TypeError, AttributeError):
        text = (Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_NAME).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


SCHEMA: dict[str, Any] = _load_schema()
_PROPS: dict[str, Any] = SCHEMA["properties"]

EVENT_TYPES: tuple[str, ...] = tuple(_PROPS["event_type"]["enum"])
#: the listed catalog of ``category`` (an open domain: the schema accepts other values, LDP counts them as _other)
CATEGORIES: tuple[str, ...] = tuple(_PROPS["category"]["x-privacy"]["domain"])
DEVICES: tuple[str, ...] = tuple(_PROPS["device"]["enum"])
_COUNTRY_POLICY: dict[str, Any] = _PROPS["country"]["x-privacy"]
COUNTRY_OTHER: str = _COUNTRY_POLICY.get("out_of_domain", "other")
COUNTRIES: tuple[str, ...] = tuple(c for c in _COUNTRY_POLICY["domain"] if c != COUNTRY_OTHER)
#: the LDP domain of ``country``, in schema order (includes the out-of-domain bucket)
COUNTRY_DOMAIN: tuple[str, ...] = tuple(_COUNTRY_POLICY["domain"])

_FUNNEL = ("page_view", "product_view", "search", "add_to_cart", "remove_from_cart", "checkout", "purchase")
_missing = [t for t in _FUNNEL if t not in EVENT_TYPES]
if _missing:  # pragma: no cover - a schema change the generator must follow
    raise RuntimeError(f"{SCHEMA_NAME} lacks event types the generator emits: {_missing}")

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------------------------------------
# Tables. Values for domain members missing here fall back to neutral defaults, so a schema
# that adds a category/country/device keeps working (tests check the tables match the schema).

#: real ISO codes outside the LDP country domain (a few percent of users; they count as "other")
EXTRA_COUNTRIES: tuple[str, ...] = ("LU", "GR", "CZ", "IL", "TH", "AE")
_EXTRA_COUNTRY_SHARE = 0.03

_COUNTRY_WEIGHT = {
    "US": 30.0, "GB": 9.0, "DE": 8.0, "FR": 6.0, "IN": 6.0, "CA": 4.0, "JP": 4.0, "BR": 4.0,
    "ES": 3.0, "IT": 3.0, "MX": 3.0, "NL": 2.5, "AU": 2.5, "PL": 2.0, "SE": 1.5, "KR": 1.5,
    "CN": 1.5, "TR": 1.2, "CH": 1.0, "BE": 1.0, "AT": 0.9, "IE": 0.8, "DK": 0.7, "NO": 0.7,
    "FI": 0.6, "PT": 0.6, "AR": 0.8, "ZA": 0.7, "SG": 0.6, "NZ": 0.5, "NG": 0.5, "EG": 0.4,
}  # fmt: skip

_CURRENCY = {
    "US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "ES": "EUR", "IT": "EUR", "NL": "EUR",
    "SE": "SEK", "PL": "PLN", "CA": "CAD", "MX": "MXN", "BR": "BRL", "AR": "ARS", "IN": "INR",
    "JP": "JPY", "KR": "KRW", "CN": "CNY", "AU": "AUD", "NZ": "NZD", "ZA": "ZAR", "NG": "NGN",
    "EG": "EGP", "TR": "TRY", "IE": "EUR", "BE": "EUR", "CH": "CHF", "AT": "EUR", "PT": "EUR",
    "DK": "DKK", "NO": "NOK", "FI": "EUR", "SG": "SGD", "LU": "EUR", "GR": "EUR", "CZ": "CZK",
    "IL": "ILS", "TH": "THB", "AE": "AED",
}  # fmt: skip
_LOCAL_CURRENCY_SHARE = 0.92  # the rest shop in USD or EUR

_CALLING_CODE = {
    "US": "1", "CA": "1", "GB": "44", "DE": "49", "FR": "33", "ES": "34", "IT": "39", "NL": "31",
    "SE": "46", "PL": "48", "MX": "52", "BR": "55", "AR": "54", "IN": "91", "JP": "81", "KR": "82",
    "CN": "86", "AU": "61", "NZ": "64", "ZA": "27", "NG": "234", "EG": "20", "TR": "90", "IE": "353",
    "BE": "32", "CH": "41", "AT": "43", "PT": "351", "DK": "45", "NO": "47", "FI": "358", "SG": "65",
    "LU": "352", "GR": "30", "CZ": "420", "IL": "972", "TH": "66", "AE": "971",
}  # fmt: skip

_CITIES = {
    "US": ("Springfield", "Portland", "Austin", "Columbus"), "GB": ("Leeds", "Bristol", "London"),
    "DE": ("Berlin", "Hamburg", "Köln"), "FR": ("Lyon", "Paris", "Nantes"), "ES": ("Madrid", "Valencia"),
    "IT": ("Milano", "Torino"), "NL": ("Utrecht", "Rotterdam"), "SE": ("Malmö", "Uppsala"),
    "PL": ("Kraków", "Gdańsk"), "CA": ("Toronto", "Calgary"), "MX": ("Puebla", "Monterrey"),
    "BR": ("Curitiba", "Recife"), "AR": ("Córdoba", "Rosario"), "IN": ("Pune", "Chennai"),
    "JP": ("Osaka", "Sapporo"), "KR": ("Busan", "Incheon"), "CN": ("Chengdu", "Hangzhou"),
    "AU": ("Perth", "Adelaide"), "NZ": ("Wellington", "Dunedin"), "ZA": ("Durban", "Pretoria"),
    "NG": ("Ibadan", "Abuja"), "EG": ("Giza", "Alexandria"), "TR": ("Izmir", "Bursa"),
    "IE": ("Galway", "Cork"), "BE": ("Gent", "Liège"), "CH": ("Basel", "Bern"), "AT": ("Graz", "Linz"),
    "PT": ("Porto", "Braga"), "DK": ("Aarhus", "Odense"), "NO": ("Bergen", "Trondheim"),
    "FI": ("Tampere", "Espoo"), "SG": ("Singapore",),
}  # fmt: skip

_DEVICE_WEIGHT = {"desktop": 0.42, "mobile": 0.48, "tablet": 0.08, "other": 0.02}
_SAME_DEVICE_SHARE = 0.85  # sessions on the user's preferred device

_USER_AGENTS = {
    "desktop": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    ),
    "mobile": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    ),
    "tablet": (
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Safari/537.36",
    ),
    "other": (
        "Mozilla/5.0 (SMART-TV; Linux; Tizen 7.0) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/5.0 Chrome/94.0.4606.31 TV Safari/537.36",
        "Mozilla/5.0 (PlayStation; PlayStation 5/8.20) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    ),
}

_FIRST = (
    "anna", "ben", "carla", "david", "emma", "felix", "grace", "hugo", "ines", "jonas", "kira",
    "liam", "maria", "noah", "olga", "pablo", "quinn", "rosa", "sam", "tara", "umar", "vera",
    "wei", "ximena", "yusuf", "zoe", "aiko", "chidi", "priya", "lars",
)  # fmt: skip
_LAST = (
    "smith", "mueller", "garcia", "rossi", "dubois", "jansen", "nowak", "silva", "kumar", "tanaka",
    "kim", "wang", "brown", "okafor", "yilmaz", "murphy", "peeters", "berg", "virtanen", "lee",
    "novak", "santos", "hansen", "martin", "lopez", "schmidt", "cohen", "walker", "ahmed", "ito",
)  # fmt: skip
_STREETS = ("Main St", "Oak Avenue", "High Street", "Station Road", "Park Lane", "Mill Road",
            "Church Street", "Lake View", "Market Square", "Elm Drive")  # fmt: skip
_EMAIL_DOMAINS = ("example.com",)

_SEARCH_TERMS = ("headphones", "running+shoes", "usb+c+cable", "coffee+maker", "lego", "gift+ideas",
                 "laptop", "dog+food", "yoga+mat", "phone+case")  # fmt: skip
_EXTERNAL_REFERRERS = tuple(
    [
        "https://www.google.com/",
        "https://www.bing.com/",
        "https://duckduckgo.com/",
        "https://www.facebook.com/",
        "https://www.instagram.com/",
        "https://t.co/x7Qe9Lm2",
        "https://news.example.org/deals-of-the-week",
        "https://mail.example.com/newsletter?utm_source=newsletter&utm_medium=email",
        "https://www.reddit.com/r/deals/",
    ]
    + [f"https://www.google.com/search?q={t}" for t in _SEARCH_TERMS]
)
_SITE = "https://shop.example.com"
_IPV4_FIRST_OCTETS = tuple(o for o in range(1, 224) if o not in (10, 127))  # unicast, not private/loopback

# Category price medians (catalogue units) and log-sd.
_PRICE_MEDIAN = {
    "electronics": 120.0, "computers": 750.0, "phones": 450.0, "audio": 80.0, "cameras": 420.0,
    "video_games": 45.0, "books": 14.0, "music": 12.0, "movies": 15.0, "fashion_women": 45.0,
    "fashion_men": 40.0, "shoes": 75.0, "jewelry": 160.0, "beauty": 20.0, "health": 18.0,
    "home": 35.0, "kitchen": 30.0, "furniture": 260.0, "garden": 40.0, "tools": 45.0, "toys": 22.0,
    "baby": 25.0, "sports": 40.0, "outdoors": 60.0, "automotive": 35.0, "pet_supplies": 22.0,
    "grocery": 8.0, "office": 15.0, "arts_crafts": 15.0, "travel": 90.0,
}  # fmt: skip
_PRICE_SIGMA = 0.75
_PRICE_MAX_CENTS = 100_000 * 100

_CATEGORY_ZIPF_S = 1.1
_PRODUCTS_PER_CATEGORY = 200
_PRODUCT_ZIPF_S = 1.0

# ---------------------------------------------------------------------------------------------
# Purchase propensity (fixed across seeds, so learners can be compared between seeds).

#: logit contribution of the session's device
DEVICE_EFFECT: dict[str, float] = {"desktop": 0.35, "mobile": -0.25, "tablet": 0.1, "other": -0.6}
#: logit contribution of the user's country (out-of-domain countries: ``COUNTRY_EFFECT[COUNTRY_OTHER]``)
COUNTRY_EFFECT: dict[str, float] = {
    "US": 0.2, "GB": 0.3, "DE": 0.35, "FR": 0.1, "ES": -0.05, "IT": -0.1, "NL": 0.3, "SE": 0.25,
    "PL": 0.0, "CA": 0.2, "MX": -0.3, "BR": -0.35, "AR": -0.45, "IN": -0.5, "JP": 0.4, "KR": 0.3,
    "CN": -0.2, "AU": 0.25, "NZ": 0.15, "ZA": -0.3, "NG": -0.6, "EG": -0.55, "TR": -0.25, "IE": 0.2,
    "BE": 0.1, "CH": 0.45, "AT": 0.2, "PT": -0.1, "DK": 0.3, "NO": 0.35, "FI": 0.2, "SG": 0.3,
    "other": -0.2,
}  # fmt: skip
#: logit contribution of the product's category
CATEGORY_EFFECT: dict[str, float] = {
    "grocery": 0.6, "books": 0.45, "pet_supplies": 0.4, "beauty": 0.35, "health": 0.3, "baby": 0.3,
    "office": 0.25, "music": 0.2, "movies": 0.15, "video_games": 0.1, "toys": 0.1, "kitchen": 0.05,
    "home": 0.0, "arts_crafts": 0.05, "fashion_women": -0.05, "fashion_men": -0.1, "shoes": -0.1,
    "sports": 0.0, "outdoors": -0.05, "garden": -0.05, "tools": 0.05, "automotive": -0.1,
    "audio": -0.15, "electronics": -0.25, "phones": -0.35, "cameras": -0.4, "computers": -0.45,
    "jewelry": -0.5, "furniture": -0.55, "travel": -0.6,
}  # fmt: skip
#: logit per unit of ln(price / category median price): pricier-than-usual products convert less
PRICE_EFFECT: float = -0.6
#: sd of the hidden per-user logit effect (not observable from the events: the noise floor)
USER_EFFECT_SD: float = 0.6

# stage: (bias, weight on x). Add to cart is per product view (~18% of views); with ~2.3 product
# views per session about 38% of product-viewing sessions add to cart, ~44% of carts check out and
# ~70% of checkouts purchase (measured over 20k events).
_STAGE_CART = (-1.65, 1.0)
_STAGE_CHECKOUT = (-0.2, 0.8)
_STAGE_PURCHASE = (0.6, 0.7)


def _country_effect(country: str) -> float:
    if country in COUNTRY_EFFECT:
        return COUNTRY_EFFECT[country]
    return 0.0 if country in COUNTRIES else COUNTRY_EFFECT[COUNTRY_OTHER]


def purchase_logit(device: str, country: str, category: str, price: float) -> float:
    """The observable part ``x`` of the purchase-propensity logit (without the hidden user effect).

    Each funnel stage converts with probability ``sigmoid(bias + weight * (x + user_effect))``.
    Unknown values contribute 0 (out-of-domain countries contribute ``COUNTRY_EFFECT["other"]``).
    """
    rel = math.log(max(price, 0.01) / _PRICE_MEDIAN.get(category, 40.0))
    return (
        DEVICE_EFFECT.get(device, 0.0)
        + _country_effect(country)
        + CATEGORY_EFFECT.get(category, 0.0)
        + PRICE_EFFECT * rel
    )


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _cum(weights: list[float]) -> list[float]:
    """Normalized cumulative weights for ``bisect_right(cum, rng.random())``; the last entry is
    +inf so that no float rounding can index past the end."""
    acc = list(itertools.accumulate(weights))
    total = acc[-1]
    cum = [a / total for a in acc]
    cum[-1] = math.inf
    return cum


def _pick(rng: random.Random, values: tuple[Any, ...] | list[Any], cum: list[float]) -> Any:
    return values[bisect.bisect_right(cum, rng.random())]


# ---------------------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """Exact statistics of the events yielded so far.

    Counters hold the raw values of the events (``category`` over the events that carry one);
    ``price_*`` cover the events that carry a price, ``price_cents`` is the exact integer sum.
    ``sessions`` counts sessions with at least one yielded event, ``purchasing_sessions`` those
    with at least one yielded ``purchase`` event.
    """

    n_events: int = 0
    event_type: collections.Counter[str] = field(default_factory=collections.Counter)
    category: collections.Counter[str] = field(default_factory=collections.Counter)
    device: collections.Counter[str] = field(default_factory=collections.Counter)
    country: collections.Counter[str] = field(default_factory=collections.Counter)
    price_sum: float = 0.0
    price_count: int = 0
    price_cents: int = 0
    sessions: int = 0
    purchasing_sessions: int = 0

    ATTRIBUTES = ("event_type", "category", "device", "country")

    @property
    def price_mean(self) -> float:
        """Mean price over the events that carry one (NaN before any)."""
        return self.price_cents / 100 / self.price_count if self.price_count else math.nan

    @staticmethod
    def domain(attribute: str) -> tuple[str, ...]:
        """The schema domain of an LDP attribute (``country`` includes the out-of-domain bucket)."""
        try:
            return {
                "event_type": EVENT_TYPES,
                "category": CATEGORIES,
                "device": DEVICES,
                "country": COUNTRY_DOMAIN,
            }[attribute]
        except KeyError:
            raise ValueError(
                f"unknown attribute {attribute!r}; expected one of {GroundTruth.ATTRIBUTES}"
            ) from None

    def domain_counts(self, attribute: str) -> dict[str, int]:
        """Counts over the schema domain, in domain order (0 for unseen values; out-of-domain
        countries are folded into ``"other"``)."""
        dom = self.domain(attribute)
        counter: collections.Counter[str] = getattr(self, attribute)
        out = dict.fromkeys(dom, 0)
        for value, n in counter.items():
            if value in out:
                out[value] += n
            elif attribute == "country":
                out[COUNTRY_OTHER] += n
            else:  # cannot happen for generated events (they validate against the schema)
                raise ValueError(f"{attribute} value {value!r} outside the schema domain")
        return out

    def frequencies(self, attribute: str) -> dict[str, float]:
        """Normalized frequencies over the schema domain (0.0 for unseen values; all 0.0 when
        nothing was counted). Sums to 1 otherwise."""
        counts = self.domain_counts(attribute)
        total = sum(counts.values())
        if not total:
            return dict.fromkeys(counts, 0.0)
        return {k: v / total for k, v in counts.items()}

    def snapshot(self) -> GroundTruth:
        """An independent copy (the generator keeps updating its own instance)."""
        return GroundTruth(
            n_events=self.n_events,
            event_type=collections.Counter(self.event_type),
            category=collections.Counter(self.category),
            device=collections.Counter(self.device),
            country=collections.Counter(self.country),
            price_sum=self.price_sum,
            price_count=self.price_count,
            price_cents=self.price_cents,
            sessions=self.sessions,
            purchasing_sessions=self.purchasing_sessions,
        )


class _User:
    __slots__ = ("base", "checkout_fields", "country", "currency", "device", "effect", "fav_cat", "ua")

    def __init__(self) -> None:
        self.base: dict[str, Any] = {}
        self.checkout_fields: dict[str, Any] = {}
        self.country = ""
        self.currency = ""
        self.device = ""
        self.effect = 0.0
        self.fav_cat = 0
        self.ua: dict[str, str | None] | None = None  # None: the user sends no user_agent at all


# A planned step: (event_type, page, extra fields or None, category or None, price in cents or None)
_Step = tuple[str, str, dict[str, Any] | None, str | None, int | None]


class _Session:
    __slots__ = ("common", "country", "device", "purchased", "sid", "started", "steps", "uid", "user_idx")

    def __init__(self, user_idx: int, uid: str, sid: str, device: str, country: str, common: dict[str, Any],
                 steps: list[_Step]) -> None:  # fmt: skip
        self.user_idx = user_idx
        self.uid = uid
        self.sid = sid
        self.device = device
        self.country = country
        self.common = common
        self.steps = steps  # reversed: pop() yields the next step
        self.started = False
        self.purchased = False


class ClickstreamGenerator:
    """A deterministic (per seed) stream of schema-valid clickstream events with exact truth.

    ``events(n)`` yields exactly ``n`` events and may be called repeatedly: the stream (clock,
    open sessions, truth) continues. ``truth`` always covers exactly the events yielded so far.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        n_users: int = 10_000,
        start: datetime | None = None,
        events_per_second: float = 50.0,
        concurrent_sessions: int = 64,
    ) -> None:
        if n_users < 1:
            raise ValueError("n_users must be >= 1")
        if not events_per_second > 0 or not math.isfinite(events_per_second):
            raise ValueError("events_per_second must be a positive finite number")
        if concurrent_sessions < 1:
            raise ValueError("concurrent_sessions must be >= 1")
        start = DEFAULT_START if start is None else start
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        self.seed = seed
        self.n_users = n_users
        self.events_per_second = float(events_per_second)
        self.start = start.astimezone(UTC)
        self.truth = GroundTruth()

        self._rng = random.Random(f"streamgate-synth/{seed}/stream")
        self._t_us = (
            self.start - datetime(1970, 1, 1, tzinfo=UTC)
        ) // _ONE_US  # integer microseconds since the epoch
        self._mean_gap_us = 1e6 / self.events_per_second
        self._ts_sec = -1
        self._ts_prefix = ""
        self._labels: dict[str, bool] = {}
        self._users: dict[int, _User] = {}
        self._active_users: set[int] = set()

        pop = random.Random(f"streamgate-synth/{seed}/population")
        self._user_cum = _cum([pop.lognormvariate(0.0, 1.0) for _ in range(n_users)])
        self._build_catalogue(random.Random(f"streamgate-synth/{seed}/catalogue"))

        countries = list(COUNTRIES) + list(EXTRA_COUNTRIES)
        in_dom = [_COUNTRY_WEIGHT.get(c, 0.5) for c in COUNTRIES]
        scale = sum(in_dom) * _EXTRA_COUNTRY_SHARE / (1 - _EXTRA_COUNTRY_SHARE) / len(EXTRA_COUNTRIES)
        self._countries = tuple(countries)
        self._country_cum = _cum(in_dom + [scale] * len(EXTRA_COUNTRIES))
        self._devices = DEVICES
        self._device_cum = _cum([_DEVICE_WEIGHT.get(d, 0.02) for d in DEVICES])

        k = min(concurrent_sessions, n_users)
        self._pool: list[_Session] = [self._new_session() for _ in range(k)]

    # -- catalogue ------------------------------------------------------------------------------

    def _build_catalogue(self, rng: random.Random) -> None:
        ncat = len(CATEGORIES)
        self._cat_cum = _cum([1.0 / (r + 1) ** _CATEGORY_ZIPF_S for r in range(ncat)])
        self._prod_cum = _cum([1.0 / (r + 1) ** _PRODUCT_ZIPF_S for r in range(_PRODUCTS_PER_CATEGORY)])
        # per category: list of (product_id, page, price, price_cents, logit part of product)
        self._products: list[list[tuple[str, str, float, int, float]]] = []
        for cat in CATEGORIES:
            median = _PRICE_MEDIAN.get(cat, 40.0)
            mu = math.log(median)
            items = []
            for i in range(_PRODUCTS_PER_CATEGORY):
                cents = min(max(round(rng.lognormvariate(mu, _PRICE_SIGMA) * 100), 1), _PRICE_MAX_CENTS)
                price = cents / 100
                pid = f"P-{cat}-{i:04d}"
                part = CATEGORY_EFFECT.get(cat, 0.0) + PRICE_EFFECT * math.log(price / median)
                items.append((pid, f"/p/{pid}", price, cents, part))
            self._products.append(items)

    def _zipf_category(self) -> int:
        return bisect.bisect_right(self._cat_cum, self._rng.random())

    # -- users ----------------------------------------------------------------------------------

    def _user(self, idx: int) -> _User:
        user = self._users.get(idx)
        if user is not None:
            return user
        r = random.Random(f"streamgate-synth/{self.seed}/user/{idx}")
        user = _User()
        uid = f"usr_{r.getrandbits(64):016x}"
        country = _pick(r, self._countries, self._country_cum)
        user.country = country
        local = _CURRENCY.get(country, "USD")
        user.currency = local if r.random() < _LOCAL_CURRENCY_SHARE else r.choice(("USD", "EUR"))
        user.device = _pick(r, self._devices, self._device_cum)
        user.fav_cat = bisect.bisect_right(self._cat_cum, r.random())
        user.effect = r.gauss(0.0, USER_EFFECT_SD)

        first, last = r.choice(_FIRST), r.choice(_LAST)
        base: dict[str, Any] = {}
        checkout: dict[str, Any] = {}
        # email: 70% known, 15% null, 15% absent; known emails of logged-in users go on every event,
        # guests type theirs at checkout
        u = r.random()
        if u < 0.70:
            email = f"{first}.{last}{r.randrange(1, 1000)}@{r.choice(_EMAIL_DOMAINS)}"
            (base if r.random() < 0.55 else checkout)["email"] = email
        elif u < 0.85:
            base["email"] = None
        # ip: 68% IPv4, 28% IPv6, 4% null
        u = r.random()
        if u < 0.68:
            first_octet = r.choice(_IPV4_FIRST_OCTETS)
            base["ip"] = f"{first_octet}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"
        elif u < 0.96:
            groups = ":".join(f"{r.getrandbits(16):x}" for _ in range(6))
            base["ip"] = f"2001:db8:{groups}"
        else:
            base["ip"] = None
        # user agent: 95% send one (chosen per device class), 3% null, 2% absent
        u = r.random()
        if u < 0.95:
            user.ua = {d: r.choice(_USER_AGENTS.get(d, _USER_AGENTS["other"])) for d in DEVICES}
        elif u < 0.98:
            user.ua = dict.fromkeys(DEVICES)
        # phone (asked at checkout): 60% given, 20% null, 20% absent
        u = r.random()
        if u < 0.60:
            cc = _CALLING_CODE.get(country, "1")
            checkout["phone"] = (
                f"+{cc} {r.randrange(100, 1000)} {r.randrange(1000, 10000)} {r.randrange(100, 1000)}"
            )
        elif u < 0.80:
            checkout["phone"] = None
        # shipping address (at checkout): 92% given, 8% null
        if r.random() < 0.92:
            city = r.choice(_CITIES.get(country, ("Capital City",)))
            checkout["shipping_address"] = (
                f"{r.randrange(1, 300)} {r.choice(_STREETS)}, {r.randrange(10000, 99999)} {city}, {country}"
            )
        else:
            checkout["shipping_address"] = None
        base["country"] = country
        user.base = {"user_id": uid, **base}
        user.checkout_fields = checkout
        self._users[idx] = user
        return user

    # -- sessions -------------------------------------------------------------------------------

    def _new_session(self) -> _Session:
        rng = self._rng
        rand = rng.random
        active = self._active_users
        cum = self._user_cum
        for _ in range(64):
            idx = bisect.bisect_right(cum, rand())
            if idx not in active:
                break
        else:  # nearly every user is in an open session: pick uniformly among the idle ones
            idle = [i for i in range(self.n_users) if i not in active]
            idx = idle[int(rand() * len(idle))]
        active.add(idx)
        user = self._user(idx)
        sid = f"{rng.getrandbits(96):024x}"

        device = user.device if rand() < _SAME_DEVICE_SHARE else _pick(rng, self._devices, self._device_cum)
        common = dict(user.base)
        common["device"] = device
        if user.ua is not None:
            common["user_agent"] = user.ua[device]
        session_x = DEVICE_EFFECT.get(device, 0.0) + _country_effect(user.country) + user.effect
        currency = user.currency
        products = self._products
        prod_cum = self._prod_cum
        cat_idx = user.fav_cat if rand() < 0.4 else self._zipf_category()

        steps: list[_Step] = []
        prev_page: str | None = None

        def view(et: str, page: str, extra: dict[str, Any] | None = None, cat: str | None = None,
                 cents: int | None = None) -> None:  # fmt: skip
            steps.append((et, page, extra, cat, cents))

        def page_view(page: str, cat: str | None = None) -> None:
            nonlocal prev_page
            extra: dict[str, Any] | None = None
            if cat is not None:
                extra = {"category": cat}
            if prev_page is None:
                if rand() < 0.6:
                    extra = extra or {}
                    extra["referrer"] = _EXTERNAL_REFERRERS[int(rand() * len(_EXTERNAL_REFERRERS))]
            elif rand() < 0.25:
                extra = extra or {}
                extra["referrer"] = _SITE + prev_page
            steps.append(("page_view", page, extra, cat, None))
            prev_page = page

        def product_fields(
            p: tuple[str, str, float, int, float], cat: str, qty: int | None
        ) -> dict[str, Any]:
            d = {"product_id": p[0], "category": cat, "price": p[2], "currency": currency}
            if qty is not None:
                d["quantity"] = qty
            return d

        # landing
        u = rand()
        deep_link = False
        if u < 0.35:
            page_view("/")
        elif u < 0.65:
            page_view(f"/c/{CATEGORIES[cat_idx]}", CATEGORIES[cat_idx])
        elif u < 0.75:
            page_view("/deals")
        else:
            deep_link = True

        cart: list[tuple[tuple[str, str, float, int, float], str, int, float]] = []
        for _ in range(30):
            u = 0.9 if deep_link else rand()
            deep_link = False
            if u < 0.12:
                page_view("/search")
                view("search", "/search")
                if rand() < 0.5:
                    cat_idx = self._zipf_category()
            elif u < 0.24:
                if rand() < 0.5:
                    cat_idx = self._zipf_category()
                cat = CATEGORIES[cat_idx]
                page_view(f"/c/{cat}", cat)
            elif u < 0.27:
                page_view(("/account", "/help", "/deals", "/wishlist")[int(rand() * 4)])
            else:
                pcat = cat_idx if rand() < 0.75 else self._zipf_category()
                cat = CATEGORIES[pcat]
                p = products[pcat][bisect.bisect_right(prod_cum, rand())]
                page_view(p[1])
                view("product_view", p[1], product_fields(p, cat, None), cat, p[3])
                x = session_x + p[4]
                if rand() < _sigmoid(_STAGE_CART[0] + _STAGE_CART[1] * x):
                    qty = _pick(rng, (1, 2, 3, 4, 5), _QTY_CUM)
                    view("add_to_cart", p[1], product_fields(p, cat, qty), cat, p[3])
                    cart.append((p, cat, qty, x))
                    if rand() < 0.8:
                        break  # straight to the cart
            if rand() < 0.25:
                break

        label = False
        if cart:
            page_view("/cart")
            if rand() < 0.15:
                p, cat, qty, _x = cart.pop(int(rand() * len(cart)))
                view("remove_from_cart", "/cart", product_fields(p, cat, qty), cat, p[3])
            if cart:
                x = sum(line[3] for line in cart) / len(cart)
                if rand() < _sigmoid(_STAGE_CHECKOUT[0] + _STAGE_CHECKOUT[1] * x):
                    page_view("/checkout")
                    view("checkout", "/checkout", dict(user.checkout_fields))
                    if rand() < _sigmoid(_STAGE_PURCHASE[0] + _STAGE_PURCHASE[1] * x):
                        label = True
                        for p, cat, qty, _x in cart:
                            extra = product_fields(p, cat, qty)
                            extra.update(user.checkout_fields)
                            view("purchase", "/checkout/complete", extra, cat, p[3])
        if not steps:  # cannot happen (every branch emits), kept for safety
            page_view("/")
        steps.reverse()
        self._labels[sid] = label
        return _Session(idx, user.base["user_id"], sid, device, user.country, common, steps)

    # -- public API -----------------------------------------------------------------------------

    def session_label(self, session_id: str) -> bool:
        """True if the session ends in a purchase (its clean label; decided when the session opens,
        so for a session still open it is the outcome its remaining events will show).

        Raises KeyError for a session id this generator never produced."""
        return self._labels[session_id]

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """Yield exactly ``n`` schema-valid events (fresh dicts), continuing the stream."""
        if n < 0:
            raise ValueError("n must be >= 0")
        rng = self._rng
        rand = rng.random
        getrandbits = rng.getrandbits
        log = math.log
        gmtime = time.gmtime
        strftime = time.strftime
        pool = self._pool
        k = len(pool)
        truth = self.truth
        c_type, c_cat, c_dev, c_country = truth.event_type, truth.category, truth.device, truth.country
        gap = self._mean_gap_us
        for _ in range(n):
            slot = int(rand() * k)
            s = pool[slot]
            et, page, extra, cat, cents = s.steps.pop()
            if not s.steps:
                self._active_users.discard(s.user_idx)
                pool[slot] = self._new_session()

            t_us = self._t_us + int(-log(1.0 - rand()) * gap)
            self._t_us = t_us
            sec, us = divmod(t_us, 1_000_000)
            if sec != self._ts_sec:
                self._ts_sec = sec
                self._ts_prefix = strftime("%Y-%m-%dT%H:%M:%S", gmtime(sec))

            b = getrandbits(128) & _UUID_MASK | _UUID_V4
            h = f"{b:032x}"
            ev = {
                "event_id": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
                "event_type": et,
                "ts": f"{self._ts_prefix}.{us:06d}Z",
                "session_id": s.sid,
                "page": page,
            }
            ev.update(s.common)
            if extra is not None:
                ev.update(extra)

            truth.n_events += 1
            c_type[et] += 1
            c_dev[s.device] += 1
            c_country[s.country] += 1
            if cat is not None:
                c_cat[cat] += 1
            if cents is not None:
                truth.price_count += 1
                truth.price_cents += cents
                truth.price_sum = truth.price_cents / 100
            if not s.started:
                s.started = True
                truth.sessions += 1
            if et == "purchase" and not s.purchased:
                s.purchased = True
                truth.purchasing_sessions += 1
            yield ev


_ONE_US = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
_QTY_CUM = _cum([0.70, 0.17, 0.07, 0.04, 0.02])
# uuid4: version nibble 4, RFC 4122 variant (identical to str(uuid.UUID(int=bits, version=4)))
_UUID_MASK = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_V4 = (0x4000 << 64) | (0x8000 << 48)


def generate(n: int, seed: int = 0, **kw: Any) -> tuple[list[dict[str, Any]], GroundTruth]:
    """``n`` events and their exact ground truth (keyword arguments go to :class:`ClickstreamGenerator`)."""
    gen = ClickstreamGenerator(seed, **kw)
    return list(gen.events(n)), gen.truth
