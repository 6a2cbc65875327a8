"""Highly available Redis on loopback: a Redis Cluster (masters with a replica each) and a
master with a replica watched by Sentinels. Timeouts are cut to about a second, so a killed
master is replaced within a few seconds."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from proxy.devstack import free_port, stop
from proxy.devstack.processes import start_redis

NODE_TIMEOUT_MS = 1000  # cluster: a master silent this long is failed over
DOWN_AFTER_MS = 1000  # sentinel: likewise
MASTER_NAME = "orp"
FAST_SYNC = ("--repl-diskless-sync-delay", "0")  # a returning replica syncs at once, not in 5 s


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args], check=True, capture_output=True, text=True
    )
    return done.stdout


def wait_for(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not within {seconds} s")


def cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    args: tuple[str, ...] = ()
    config: Path | None = None

    @classmethod
    def start(cls, stack: ExitStack, workdir: Path, *args: str, config: Path | None = None) -> Node:
        port = cluster_port()
        node = cls(port, start_redis(workdir, port, *args, config=config), workdir, args, config)
        stack.callback(lambda: stop(node.process))
        return node

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster or the replicas."""
        self.process.kill()
        self.process.wait()

    def restart(self, *extra: str) -> None:
        """Back on its port with its own directory (a cluster node keeps its nodes.conf, so it
        comes back as what the cluster now makes it: the replica of the node that took over)."""
        self.process = start_redis(self.workdir, self.port, *self.args, *extra, config=self.config)


@dataclass
class Cluster:
    nodes: list[Node]

    @property
    def seed_url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.process.poll() is None]

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Port of each live master -> its slot ranges, as a live node sees the cluster."""
        found: dict[int, list[tuple[int, int]]] = {}
        for line in redis_cli(self.live()[0].port, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            ranges = []
            for part in fields[8:]:
                first, _, last = part.partition("-")
                ranges.append((int(first), int(last or first)))
            found[port] = ranges
        return found

    def taken_over(self, port: int) -> bool:
        """The master on `port` is marked failed and another node serves its slots."""
        masters = self.masters()
        return port not in masters and len(masters) == len(self.nodes) // 2 and self.healthy()

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def healthy(self) -> bool:
        """Every live node sees every slot served."""
        return all(
            "cluster_state:ok" in redis_cli(node.port, "cluster", "info") for node in self.live()
        )


@contextmanager
def running_cluster(workdir: Path, masters: int = 3) -> Iterator[Cluster]:
    """`masters` masters and one replica each, slots assigned by `redis-cli --cluster create`."""
    with ExitStack() as stack:
        nodes = [
            Node.start(
                stack,
                workdir / f"node-{n}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(workdir / f"node-{n}" / "nodes.conf"),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                *FAST_SYNC,
            )
            for n in range(masters * 2)
        ]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
        )
        cluster = Cluster(nodes)
        wait_for(cluster.healthy, "cluster state ok")
        wait_for(
            lambda: (
                all(
                    "master_link_status:up" in redis_cli(node.port, "info", "replication")
                    for node in nodes
                    if "role:slave" in redis_cli(node.port, "info", "replication")
                )
                and sum("role:slave" in redis_cli(n.port, "info", "replication") for n in nodes)
                == masters
            ),
            "every replica in sync",
        )
        yield cluster


@dataclass
class SentinelSet:
    master: Node
    replica: Node
    sentinels: list[Node]

    def hosts(self) -> tuple[tuple[str, int], ...]:
        return tuple(("127.0.0.1", node.port) for node in self.sentinels)

    def rejoin(self, old: Node) -> None:
        """Start a failed master again as a replica of the current one, as an orchestrator
        would (Sentinel alone converts it too, but only after watching it for ~10 s)."""
        old.restart("--replicaof", "127.0.0.1", str(self.current_master()))
        wait_for(lambda: in_sync(old.port), "the old master back as a replica")

    def current_master(self) -> int:
        """The master's port, as the first live Sentinel names it."""
        live = [node for node in self.sentinels if node.process.poll() is None]
        reply = redis_cli(live[0].port, "sentinel", "get-master-addr-by-name", MASTER_NAME)
        return int(reply.split()[1])


@contextmanager
def running_sentinels(
    workdir: Path, *server_args: str, sentinels: int = 3
) -> Iterator[SentinelSet]:
    """A master, a replica of it, and `sentinels` Sentinels with a quorum of two."""
    with ExitStack() as stack:
        master = Node.start(stack, workdir / "master", *FAST_SYNC, *server_args)
        replica = Node.start(
            stack,
            workdir / "replica",
            *FAST_SYNC,
            *server_args,
            "--replicaof",
            "127.0.0.1",
            str(master.port),
        )
        wait_for(lambda: in_sync(replica.port), "replica in sync")
        watchers = []
        for n in range(sentinels):
            directory = workdir / f"sentinel-{n}"
            directory.mkdir(parents=True)
            config = directory / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
            )
            watchers.append(Node.start(stack, directory, "--sentinel", config=config))
        found = SentinelSet(master, replica, watchers)
        wait_for(
            lambda: all(
                "num-other-sentinels" in redis_cli(node.port, "sentinel", "master", MASTER_NAME)
                and _other_sentinels(node.port) == sentinels - 1
                for node in watchers
            ),
            "sentinels know each other",
        )
        yield found


def in_sync(port: int) -> bool:
    """A replica whose link to its master is up."""
    return "master_link_status:up" in redis_cli(port, "info", "replication")


def _other_sentinels(port: int) -> int:
    reply = redis_cli(port, "sentinel", "master", MASTER_NAME).split()
    return int(reply[reply.index("num-other-sentinels") + 1])
