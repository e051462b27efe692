"""``streamgate`` usage: every command's --help, bad input, and the missing-master-key error.

No broker or Redis needed: --help and option parsing never reach them, and the
missing-key error must come before any connection is attempted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stream.cli import cli

#: Every command path the CLI is documented to have. A command missing here (renamed or
#: dropped) fails test_every_documented_command_exists; a new one is still covered by
#: test_every_command_of_the_tree_has_help, which walks the click tree.
DOCUMENTED = [
    (),
    ("dev",),
    ("dev", "up"),
    ("dev", "down"),
    ("dev", "status"),
    ("keys",),
    ("keys", "generate"),
    ("gateway",),
    ("produce",),
    ("decrypt",),
    ("dlq",),
    ("dlq", "inspect"),
    ("dlq", "replay"),
    ("schema",),
    ("schema", "check"),
    ("demo",),
    ("console",),
    ("bench",),
    ("bench", "gateway"),
    ("bench", "ldp"),
    ("bench", "learn"),
    ("privatizer",),
    ("estimates",),
    ("shredder",),
    ("erase",),
    ("audit",),
    ("topics",),
    ("topics", "apply"),
    ("ops",),
    ("ops", "watch"),
    ("learner",),
    ("model",),
    ("model", "show"),
    ("model", "predict"),
]


def _walk(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            out += _walk(sub, (*path, name))
    return out


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """os.environ without any STREAMGATE_* variable, plus ``extra`` (and a private state dir)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE_")}
    env["STREAMGATE_STATE_DIR"] = str(tmp_path)
    env.update(extra)
    return env


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args, prog_name="streamgate")


def test_every_documented_command_exists() -> None:
    tree = set(_walk(cli))
    missing = [" ".join(p) for p in DOCUMENTED if p not in tree]
    assert not missing, f"commands missing from the CLI: {missing}"


@pytest.mark.parametrize("path", DOCUMENTED, ids=lambda p: " ".join(p) or "streamgate")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_of_documented_command(path: tuple[str, ...], flag: str) -> None:
    result = _invoke([*path, flag])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("Usage: " + " ".join(("streamgate", *path)) + " "), first
    assert result.exception is None


def test_every_command_of_the_tree_has_help() -> None:
    for path in _walk(cli):
        result = _invoke([*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith("Usage: " + " ".join(("streamgate", *path))), (path, result.output)
        # the help text is not empty: the command has a description line
        assert len(result.output.strip().splitlines()) >= 3, (path, result.output)


def test_console_script_help_in_a_real_process(tmp_path: Path) -> None:
    """The installed entry point and ``python -m stream.cli`` both work outside CliRunner."""
    argvs = [[sys.executable, "-m", "stream.cli", "--help"]]
    script = Path(sys.executable).parent / "streamgate"
    if script.exists():
        argvs.append([str(script), "--help"])
    for argv in argvs:
        proc = subprocess.run(argv, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("Usage: streamgate "), proc.stdout
        for name in ("dev", "keys", "gateway", "produce", "decrypt", "dlq", "demo", "bench"):
            assert f"  {name} " in proc.stdout, (name, proc.stdout)


def test_version() -> None:
    from stream import __version__

    result = _invoke(["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"streamgate, version {__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gateway", "--bogus"], "No such option: --bogus"),
        (["keys", "generate", "--nope"], "No such option: --nope"),
        (["dlq", "inspect", "--max", "many"], "Invalid value for '--max'"),
        (["produce", "--generate", "abc"], "Invalid value for '--generate'"),
        (["gateway", "--loglevel", "loud"], "Invalid value for '--loglevel'"),
        (["decrypt", "--on-shredded", "explode"], "Invalid value for '--on-shredded'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_bad_usage_exits_nonzero_with_a_clear_message(args: list[str], message: str) -> None:
    result = _invoke(args)
    assert result.exit_code == 2, result.output  # click's usage-error code
    assert message in result.output
    assert "Usage: streamgate" in result.output
    assert "Traceback" not in result.output


def test_decrypt_without_master_key_is_one_clear_line(tmp_path: Path) -> None:
    """No KEK configured: exit 1, one line on stderr naming STREAMGATE_MASTER_KEY, no traceback,
    and nothing on stdout. Kafka/Redis are pointed at closed ports: the key check comes first."""
    env = _clean_env(
        tmp_path,
        STREAMGATE_KAFKA_BOOTSTRAP="127.0.0.1:9",
        STREAMGATE_REDIS_URL="redis://127.0.0.1:9/0",
    )
    assert not any(k.startswith("STREAMGATE_MASTER_KEY") for k in env)
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "decrypt", "--idle-timeout", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "STREAMGATE_MASTER_KEY" in lines[0]
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_decrypt_with_malformed_master_key_names_the_shape_not_the_value(tmp_path: Path) -> None:
    bad = "definitely-not-base64-of-32-bytes!!"
    env = _clean_env(tmp_path, STREAMGATE_MASTER_KEY=bad,
                     STREAMGATE_KAFKA_BOOTSTRAP="127.0.0.1:9", STREAMGATE_REDIS_URL="redis://127.0.0.1:9/0")
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "decrypt", "--idle-timeout", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "master key" in proc.stderr
    assert bad not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_gateway_without_master_key_fails_fast(tmp_path: Path) -> None:
    """The worker refuses to start without a KEK (fail closed), before touching Kafka or Redis."""
    env = _clean_env(tmp_path, STREAMGATE_KAFKA_BOOTSTRAP="127.0.0.1:9", STREAMGATE_REDIS_URL="redis://127.0.0.1:9/0",
                     STREAMGATE_WEB_PORT="0")
    proc = subprocess.run([sys.executable, "-m", "stream.cli", "gateway"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "STREAMGATE_MASTER_KEY" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
