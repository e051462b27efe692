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


# --------------------------------------------------------------------------- settings named in the docs
# "`STREAMGATE_X` (default 12)", "`STREAMGATE_X` (10 s)", "(`STREAMGATE_X`, 60 s)", "`STREAMGATE_X=text` (default)",
# "4 by default, `STREAMGATE_X`" (a value followed by an arrow is a change, not a default)
_DEFAULT_FORMS = [
    re.compile(r"`STREAMGATE_([A-Z0-9_]+)`\s*\((?:default:?\s+|unset[^:)]*:\s*)?([0-9][0-9,._]*|true|false)(?![0-9,._])(?!\s*→)"),
    re.compile(r"\(`STREAMGATE_([A-Z0-9_]+)`,\s*([0-9][0-9,._]*|true|false)"),
    re.compile(r"`STREAMGATE_([A-Z0-9_]+)=([^`]+)`\s*\(default\)"),
    re.compile(r"([0-9][0-9,._]*) by default,\s*`STREAMGATE_([A-Z0-9_]+)`"),
]
#: Unset means a value that depends on the mode: the values the docs may state for it.
_UNSET_MEANS = {"learn_publish_every": {10_000, 1000}, "learn_publish_interval_seconds": {60.0, 5.0}}
#: Environment variables the docs name that are not Settings (test and console tooling).
_NOT_SETTINGS = {"STREAMGATE_CONSOLE_TOKEN", "STREAMGATE_CHROMIUM", "STREAMGATE_CHROMEDRIVER", "STREAMGATE_ARTIFACTS"}


def _docs_text() -> dict[str, str]:
    out = {}
    for doc in DOCS:
        if doc.name == "settings.md":
            continue
        text = doc.read_text()
        if doc.name == "contract.md":  # its change log names what was, on purpose
            text = text.split("## Changes to this contract")[0]
        out[doc.name] = text
    return out


def stated_defaults() -> list[tuple[str, str, str]]:
    """(doc, setting name, stated default) for every default the docs state for a STREAMGATE_ setting."""
    found = []
    for name, text in _docs_text().items():
        flat = " ".join(text.split())
        for i, form in enumerate(_DEFAULT_FORMS):
            for m in form.finditer(flat):
                var, value = (m.group(2), m.group(1)) if i == 3 else (m.group(1), m.group(2))
                found.append((name, var.lower(), value.rstrip(",.")))
    return found


def test_every_default_a_doc_states_is_the_settings_default() -> None:
    from stream.config import Settings

    found = stated_defaults()
    assert len(found) >= 15, found  # the forms still match the docs
    fields = Settings.model_fields
    wrong = []
    for doc, name, value in found:
        assert name in fields, f"{doc} states a default of STREAMGATE_{name.upper()}, which is not a setting"
        default = fields[name].default
        if default is None:
            ok = float(value.replace(",", "")) in _UNSET_MEANS.get(name, set())
        elif isinstance(default, bool):
            ok = value == str(default).lower()
        elif isinstance(default, int | float):
            ok = float(value.replace(",", "").replace("_", "")) == float(default)
        else:
            ok = value == str(default)
        if not ok:
            wrong.append(f"{doc}: STREAMGATE_{name.upper()} default {value}, Settings says {default}")
    assert not wrong, wrong


def test_every_streamgate_variable_a_doc_names_exists() -> None:
    from stream.config import REMOVED_SETTINGS, Settings

    known = {f"STREAMGATE_{n.upper()}" for n in Settings.model_fields} | _NOT_SETTINGS
    removed = {f"STREAMGATE_{n.upper()}" for n in REMOVED_SETTINGS}
    unknown = []
    for doc, text in _docs_text().items():
        for line in text.splitlines():
            for var in re.findall(r"STREAMGATE_[A-Z0-9_]*[A-Z0-9](?:_\*)?", line):
                if var.endswith("_*") and any(k.startswith(var[:-1]) for k in known):
                    continue  # a family, e.g. STREAMGATE_RETRY_BACKOFF_*
                if var in known or (var in removed and "refuse" in line):
                    continue
                unknown.append(f"{doc}: {var}")
    assert not unknown, unknown
