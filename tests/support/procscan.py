"""Finding the processes a test started (no orphans left behind)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def procs_mentioning(needle: bytes) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line, environment or working directory contain
    ``needle``: (pid, command line)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                continue
            cmdline = (d / "cmdline").read_bytes()
            blob = cmdline + b"\0" + (d / "environ").read_bytes()
            with contextlib.suppress(OSError):
                blob += b"\0" + os.readlink(d / "cwd").encode()
        except (OSError, IndexError):
            continue
        if needle in blob:
            found.append((int(d.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found
