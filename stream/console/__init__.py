"""``streamgate console``: a live privacy console in the browser, fed by the derived topics only.

:mod:`~stream.console.state` folds records into what the page shows (pure),
:mod:`~stream.console.reader` is the one consumer (allow-listed topics, signatures checked),
:mod:`~stream.console.server` serves the page, ``/api/state`` and ``/api/events``, and
:mod:`~stream.console.service` ties them together. The page (``static/``) is plain HTML, CSS
and one vanilla JS file drawing inline SVG: nothing is fetched from elsewhere.
"""

from __future__ import annotations

from stream.console.reader import ALLOWED_TOPIC_FIELDS, TopicNotAllowedError, check_topics, console_topics
from stream.console.service import DEFAULT_PORT, ConsoleService
from stream.console.state import ConsoleState, Truth

__all__ = ["ALLOWED_TOPIC_FIELDS", "DEFAULT_PORT", "ConsoleService", "ConsoleState", "TopicNotAllowedError", "Truth",
           "check_topics", "console_topics"]
