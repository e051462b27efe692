"""``streamgate schema check``: compatibility and policy gaps of a schema before a producer ships it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from stream.commands.common import settings as _settings

__all__ = ["register"]


def check_schema(path: Path, *, subject: str | None, compatibility: str, url: str | None) -> tuple[list[str], list[str]]:
    """(problems, notes) of the candidate schema at ``path`` against the subject's latest version."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from stream.errors import SchemaPolicyError
    from stream.registry import (
        RegistryUnavailableError,
        SchemaResolver,
        compatibility_problems,
        json_schema_from_avro,
        lineage_subject,
        policy_gaps,
        policy_weakenings,
    )
    from stream.schema import EventSchema, load_schema

    s = _settings()
    kind, candidate = _read_candidate(path)
    problems = [f"policy: property {n!r} has no x-privacy (its events would be dead-lettered as policy_missing)"
                for n in policy_gaps(candidate)]
    notes: list[str] = []
    base = load_schema(s.schema_name)
    if not problems:
        try:
            checked = EventSchema(s.schema_name, candidate)
        except SchemaPolicyError as exc:
            problems.append(f"schema: {exc}")
        else:
            problems += [f"policy: property {n!r} weakens {s.schema_name}: {why} (the gateway refuses this version: "
                         f"unsupported_schema, rule {rule})" for n, rule, why in policy_weakenings(base, checked)]
    resolver = SchemaResolver.from_url(url or s.schema_registry_url or "mock://streamgate-check", base)
    subject = subject or lineage_subject(s.schema_name) + ("-avro" if kind == "AVRO" else "")
    try:
        latest = resolver.client.get_latest_version(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:
            raise RegistryUnavailableError(f"schema registry: HTTP {exc.http_status_code}") from None
        notes.append(f"subject {subject!r} has no version yet: nothing to be compatible with")
        return problems, notes
    except Exception as exc:
        raise RegistryUnavailableError(f"schema registry unreachable: {type(exc).__name__}") from None
    old = json.loads(latest.schema.schema_str)
    if (latest.schema.schema_type or "AVRO") == "AVRO":
        old = json_schema_from_avro(old)
    notes.append(f"against {subject!r} version {latest.version} (id {latest.schema_id}), {compatibility.upper()}")
    problems += compatibility_problems(old, candidate, compatibility)
    added = sorted(set(candidate.get("properties", {})) - set(old.get("properties", {})))
    if added:
        notes.append("adds " + ", ".join(f"{n} ({_policy(candidate['properties'][n])})" for n in added))
    return problems, notes


def _read_candidate(path: Path) -> tuple[str, dict]:
    """("JSON" | "AVRO", the JSON Schema document) of the file at ``path``; :class:`SchemaPolicyError`
    naming the file and what is wrong when it is no schema document."""
    from stream.errors import SchemaPolicyError
    from stream.registry import json_schema_from_avro

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SchemaPolicyError(f"{path}: not UTF-8 text (an invalid byte at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SchemaPolicyError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise SchemaPolicyError(f"{path}: not a schema: the document is a JSON {_json_type(doc)}, not an object")
    kind = "AVRO" if path.suffix == ".avsc" or doc.get("type") == "record" else "JSON"
    if kind == "AVRO":
        try:
            doc = json_schema_from_avro(doc)
        except SchemaPolicyError as exc:
            raise SchemaPolicyError(f"{path}: {exc}") from None
        except (KeyError, TypeError, AttributeError) as exc:  # a field without name or type, fields not a list, ...
            raise SchemaPolicyError(f"{path}: not a valid Avro record schema ({type(exc).__name__} {exc})") from None
    props = doc.get("properties", {})
    if not isinstance(props, dict):
        raise SchemaPolicyError(f"{path}: not a schema: its properties are a JSON {_json_type(props)}, not an object")
    for name, spec in props.items():
        if not isinstance(spec, dict):
            raise SchemaPolicyError(f"{path}: property {name!r} is a JSON {_json_type(spec)}, not an object "
                                    "(every property needs its x-privacy policy)")
    return kind, doc


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _policy(spec: dict) -> str:
    raw = spec.get("x-privacy")
    if raw is None:
        return "no x-privacy"
    return raw if isinstance(raw, str) else str(raw.get("policy"))


def register(cli: click.Group) -> None:
    """Add this area's commands to the ``streamgate`` group."""

    @cli.group()
    def schema() -> None:
        """Input schemas as producers register them (Schema Registry)."""

    @schema.command("check")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--subject", default=None, help="Registry subject (default: the schema lineage, e.g. clickstream-event).")
    @click.option("--compatibility", default="BACKWARD", show_default=True,
                  type=click.Choice(["BACKWARD", "FORWARD", "FULL", "NONE"], case_sensitive=False))
    @click.option("--registry-url", default=None, help="Default: STREAMGATE_SCHEMA_REGISTRY_URL.")
    def schema_check(path: Path, subject: str | None, compatibility: str, registry_url: str | None) -> None:
        """Report compatibility with the subject's latest version and x-privacy gaps (exit 1 on any)."""
        problems, notes = check_schema(path, subject=subject, compatibility=compatibility, url=registry_url)
        for n in notes:
            click.echo(n)
        for p in problems:
            click.echo(f"problem: {p}")
        click.echo("ok: compatible, every property has a policy" if not problems else f"{len(problems)} problem(s)")
        if problems:
            sys.exit(1)
