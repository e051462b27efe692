"""The README and docs/: links resolve, the settings page is current, the README fits a screen."""

from __future__ import annotations

import re
from pathlib import Path

from stream.config import settings_markdown

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in DOCS:
        for target in _LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_settings_page_is_generated_and_current() -> None:
    assert (REPO / "docs" / "settings.md").read_text() == settings_markdown(), (
        "docs/settings.md is stale: regenerate it with the command at its top")


def test_readme_fits_a_screen_or_two_and_links_the_docs() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 80
    assert "streamgate demo" in text and "pytest" in text
    for doc in (REPO / "docs").glob("*.md"):
        assert f"docs/{doc.name}" in text, f"README does not link docs/{doc.name}"
