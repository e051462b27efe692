"""A wrong ``STREAMGATE_KAFKA_BOOTSTRAP`` (a real closed port): every command that talks to Kafka
exits non-zero with one clear line naming the address and the setting, not hundreds of
librdkafka lines. (The subprocess timeout is only a bound against a hang.)"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.dev.stack import free_port

pytestmark = pytest.mark.slow

COMMANDS = [
    ("produce", "--generate", "1"),
    ("ops", "watch", "--once"),
    ("audit",),
    ("decrypt",),
    ("gateway",),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_wrong_broker_address_fails_with_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGATE_")}
    env.update({"STREAMGATE_KAFKA_BOOTSTRAP": address, "STREAMGATE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                "STREAMGATE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
                "STREAMGATE_STATE_DIR": str(tmp_path)})
    r = subprocess.run([sys.executable, "-m", "stream.cli", *args], env=env, capture_output=True, text=True,
                       timeout=25, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    lines = r.stderr.splitlines()
    assert len(lines) < 5, r.stderr
    errors = [line for line in lines if "BrokerUnreachableError" in line]
    assert len(errors) == 1, r.stderr
    assert address in errors[0] and "STREAMGATE_KAFKA_BOOTSTRAP" in errors[0]
    assert "Connection refused" in errors[0]
