"""Real ``redis-server`` processes for the tests: one server, or a three-node Redis Cluster.

A broker spanning processes is only as good as its behaviour when Redis restarts,
stalls, loses its data or moves a slot, and no fake shows that; so the tests start
Debian's ``redis-server`` themselves, never a system service: on free 127.0.0.1
ports, in a temp dir of their own, with persistence off (a restart is a Redis that
lost its data), stopped by pid. A cluster is three such nodes joined by
``redis-cli --cluster create``, as an operator would.

Redis cannot listen on port 0 (``--port 0`` means "no TCP at all"), so a port is
picked by binding and releasing a socket, and taken again if another process won it
in between. Every child started here is also killed at exit (``atexit``), so not
even an interrupted run leaves a Redis behind.

Without ``redis-server`` (or ``redis-cli``, or redis-py) :func:`redis_binary_or_skip`
skips the test, except under ``CI=true`` where it fails: CI installs them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.realserver import wait_until

try:
    import redis
except ImportError:  # redis_binary_or_skip says so; the rest of the suite still runs
    redis = None

HOST = "127.0.0.1"
SLOTS = 16384
#: how many free ports to try before giving up on a start (others take ports too)
PORT_ATTEMPTS = 5

#: pid -> process of every redis-server still running, for the atexit net
_RUNNING: dict[int, subprocess.Popen] = {}
#: every temp dir not yet removed, for the atexit net
_DIRS: set[str] = set()


class PortTaken(RuntimeError):
    """redis-server could not bind a port it was given: another process took it first."""


def redis_binary_or_skip(*binaries: str) -> None:
    """Skip (locally) or fail (``CI=true``) unless the binaries and redis-py are here.

    A developer without Redis still runs the rest of the suite; CI must not pass
    by skipping what it was meant to test.
    """
    missing = [name for name in binaries or ("redis-server",) if shutil.which(name) is None]
    if missing:
        missing = [f"{', '.join(missing)} not on PATH "
                   "(Debian: apt-get install redis-server redis-tools)"]
    if redis is None:
        missing.append("redis-py not installed (pip install redis)")
    if not missing:
        return
    reason = "; ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} but CI=true: .ci/run must install it")
    pytest.skip(reason)


def retries(count: int = 0) -> redis.retry.Retry:
    """A client retry policy of ``count`` immediate retries. redis-py 8 retries a
    connection error or timeout 10 times with a growing backoff by default, which
    turns a 0.2 s timeout into seconds and hides the very failure a test looks for."""
    return redis.retry.Retry(redis.backoff.NoBackoff(), count)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nobody listens on: all bound at once, then released, so
    two of them are never the same port (a server and its cluster bus need two)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, its temp dir, its log; stopped by pid.

    ``cluster=True`` makes it a cluster node (a second port for the cluster bus and
    ``nodes.conf`` in its dir); :class:`RedisCluster` joins three of them.
    """

    def __init__(self, *args: str, password: str | None = None, unixsocket: bool = False,
                 port: int | None = None, cluster: bool = False,
                 cluster_node_timeout: int = 2000) -> None:
        self.args = args
        self.password = password
        self.unixsocket = unixsocket
        self.cluster = cluster
        self.cluster_node_timeout = cluster_node_timeout
        #: a port asked for is tried once; otherwise free ones are picked, retried if taken
        self.fixed_port = port
        self.port: int | None = None
        self.bus_port: int | None = None
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.paused = False

    # -- life ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.dir = Path(tempfile.mkdtemp(prefix="comet-redis-"))
        _DIRS.add(str(self.dir))
        attempts = 1 if self.fixed_port else PORT_ATTEMPTS
        try:
            for attempt in range(attempts):
                ports = free_ports(2)
                port = self.fixed_port or ports[0]
                bus_port = ports[1] if port != ports[1] else ports[0]
                try:
                    self._launch(port, bus_port, timeout)
                    return self
                except PortTaken:
                    if attempt == attempts - 1:
                        raise
                    self._clear_dir()   # a half-written nodes.conf names the lost ports
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it lingers; the temp dir goes too."""
        self._halt(timeout)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            _DIRS.discard(str(self.dir))
            self.dir = None

    def kill(self) -> None:
        """SIGKILL: a Redis that crashed. Its dir stays, so :meth:`restart` works after."""
        if self.alive:
            self.proc.kill()
        self._reap(10)

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Stop and start again on the same port (and bus port): with persistence off the
        new process is empty, which is what a test of "Redis lost its data" needs; a
        cluster node keeps its ``nodes.conf`` and so its slots."""
        self._halt(timeout)
        self._launch(self.port, self.bus_port, timeout)
        return self

    def pause(self) -> None:
        """SIGSTOP: a Redis that stalls (swap, a fork, a long script) but keeps its
        sockets, so clients hang until their own timeouts. Returns once it has stopped
        (``waitpid`` with ``WUNTRACED``), so the next command surely meets a stalled
        server."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        os.waitpid(self.proc.pid, os.WUNTRACED)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT, and return once it runs again."""
        os.kill(self.proc.pid, signal.SIGCONT)
        os.waitpid(self.proc.pid, os.WCONTINUED)
        self.paused = False

    def __enter__(self) -> RedisServer:
        if not self.alive:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what tests read ----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def unix_url(self) -> str:
        if not self.unixsocket:
            raise AttributeError("started without unixsocket=True")
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}?db=0"

    def client(self, **kwargs) -> redis.Redis:
        """A redis-py client of this server over TCP (password included); no retries
        unless asked for, so a failure shows at once."""
        return redis.Redis.from_url(self.url, **{"retry": retries(), **kwargs})

    def log_text(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.dir / "console.log",
                                                         self.dir / "redis.log") if p.exists()]
        return "\n".join(parts)

    # -- inside -------------------------------------------------------------------------

    def _command(self, port: int, bus_port: int) -> list[str]:
        command = ["redis-server", "--bind", HOST, "--port", str(port), "--dir", str(self.dir),
                   "--logfile", "redis.log", "--daemonize", "no", "--save", "",
                   "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        if self.unixsocket:
            command += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.cluster:
            # cluster-port (Redis 7) names the bus port, so it need not be port + 10000,
            # which is often past 65535 for an ephemeral port
            command += ["--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(self.cluster_node_timeout)]
        return [*command, *self.args]

    def _launch(self, port: int, bus_port: int, timeout: float) -> None:
        self.port, self.bus_port = port, bus_port
        with open(self.dir / "console.log", "ab") as console:
            self.proc = subprocess.Popen(self._command(port, bus_port), cwd=self.dir,
                                         stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT)
        _RUNNING[self.proc.pid] = self.proc
        self.paused = False
        probe = redis.Redis(host=HOST, port=port, password=self.password, retry=retries(),
                            socket_timeout=0.25, socket_connect_timeout=0.25)
        deadline = time.monotonic() + timeout
        try:
            while not self._answers(probe, self.proc.pid):
                if not self.alive:
                    self._reap(1)
                    log = self.log_text()
                    if "Address already in use" in log:
                        raise PortTaken(f"port {port} or {bus_port} taken:\n{log[-600:]}")
                    raise RuntimeError(f"redis-server exited at start:\n{log[-2000:]}")
                if time.monotonic() > deadline:
                    self._halt(5)
                    raise RuntimeError(f"redis-server did not answer in {timeout} s:\n"
                                       + self.log_text()[-2000:])
                time.sleep(0.005)
        finally:
            probe.close()

    @staticmethod
    def _answers(probe, pid: int) -> bool:
        """Whether our process answers: the port may have gone to another process
        between picking and binding, and that one may answer too (or hang)."""
        try:
            return probe.info("server")["process_id"] == pid
        except redis.RedisError:        # refused, timed out, loading, someone else's
            return False

    def _halt(self, timeout: float) -> None:
        if not self.alive:
            self._reap(1)
            return
        self.proc.terminate()
        # a stopped process holds SIGTERM until it runs again
        os.kill(self.proc.pid, signal.SIGCONT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reap(10)

    def _reap(self, timeout: float) -> None:
        if self.proc is not None:
            self.proc.wait(timeout)
            _RUNNING.pop(self.proc.pid, None)
            self.paused = False

    def _clear_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir()


class RedisCluster:
    """Three (``size``) cluster nodes on free ports, joined by ``redis-cli --cluster
    create`` with no replicas: every node a master of about a third of the slots.

    Creating one takes about two seconds (``redis-cli`` waits a second at a time for
    the nodes to agree), so a session shares one and :meth:`reset` returns it to the
    layout it was created with, empty, between tests.
    """

    def __init__(self, size: int = 3, node_timeout: int = 2000) -> None:
        self.nodes = [RedisServer(cluster=True, cluster_node_timeout=node_timeout)
                      for _ in range(size)]
        #: node ids, in the order of ``nodes``
        self.ids: list[str] = []
        #: the owner id of every slot just after creation, which :meth:`reset` restores
        self.layout: list[str] = []
        self._clients: dict[int, redis.Redis] = {}

    def start(self, timeout: float = 30.0) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"{HOST}:{n.port}" for n in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}"
                                   f"{create.stderr}")
            self.ids = [self._admin(i).execute_command("CLUSTER MYID").decode()
                        for i in range(len(self.nodes))]
            self.wait_ok(timeout)
            self.layout = self.owners()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list:
        return [redis.cluster.ClusterNode(HOST, node.port) for node in self.nodes]

    def client(self, **kwargs) -> redis.RedisCluster:
        """A redis-py cluster client that knows every node."""
        return redis.RedisCluster(startup_nodes=self.startup_nodes, **kwargs)

    def owners(self, index: int = 0) -> list[str]:
        """The owner id of every slot, as node ``index`` sees it."""
        return _parse_nodes(self.raw(index, "CLUSTER NODES"))[0]

    def slot_owner(self, slot: int) -> int:
        """The index in ``nodes`` of the node serving ``slot``."""
        return self.ids.index(self.owners()[slot])

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok`` and all see the same owners: before
        that a client may be sent to a node that still disagrees."""
        def agreed() -> bool:
            if not all("cluster_state:ok" in self.raw(i, "CLUSTER INFO")
                       for i in range(len(self.nodes))):
                return False
            views = [self.owners(i) for i in range(len(self.nodes))]
            return all(view == views[0] and None not in view for view in views)
        wait_until(agreed, timeout, what="every cluster node ok and agreeing on the slots")

    def move_slot(self, slot: int, to: int, timeout: float = 30.0) -> None:
        """Move ``slot`` and its keys to node ``to``, the way ``redis-cli --cluster
        reshard`` does: IMPORTING on the target, MIGRATING on the source, MIGRATE the
        keys in batches, then SETSLOT NODE on the target, the source and the rest.
        After it the source answers MOVED for the slot's keys."""
        source = self.slot_owner(slot)
        if source == to:
            return
        src, dst = self._admin(source), self._admin(to)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.ids[source])
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.ids[to])
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", HOST, self.nodes[to].port, "", 0, 5000,
                                "KEYS", *keys)
        others = [i for i in range(len(self.nodes)) if i not in (source, to)]
        for index in (to, source, *others):
            self._admin(index).execute_command("CLUSTER SETSLOT", slot, "NODE", self.ids[to])
        wait_until(lambda: all(self.owners(i)[slot] == self.ids[to]
                               for i in range(len(self.nodes))),
                   timeout, what=f"every node seeing slot {slot} on node {to}")

    def flushall(self) -> None:
        for index in range(len(self.nodes)):
            self._admin(index).flushall()

    def reset(self, timeout: float = 30.0) -> None:
        """Back to just after creation, whatever the last test did: dead nodes restarted
        (their ``nodes.conf`` keeps their slots), paused ones resumed, every key gone,
        half-done migrations closed, moved slots moved back. A node stopped outright
        lost its dir and ``nodes.conf``: then the cluster is created anew."""
        if any(node.dir is None for node in self.nodes):
            self.stop()
            self.start(timeout)
            return
        for node in self.nodes:
            if node.paused:
                node.resume()
            if not node.alive:
                node.restart()
        self.wait_ok(timeout)
        self.flushall()
        for index in range(len(self.nodes)):
            for slot in _parse_nodes(self.raw(index, "CLUSTER NODES"))[1]:
                self._admin(index).execute_command("CLUSTER SETSLOT", slot, "STABLE")
        for slot, (now, then) in enumerate(zip(self.owners(), self.layout, strict=True)):
            if now != then:
                self.move_slot(slot, self.ids.index(then), timeout)

    def _admin(self, index: int) -> redis.Redis:
        """Node ``index``'s own client (not a cluster client: these commands are for
        that node); kept, since a node keeps its port across restarts."""
        if index not in self._clients:
            # one retry: the pooled connection of a node restarted since is dead
            client = redis.Redis(host=HOST, port=self.nodes[index].port, socket_timeout=10,
                                 retry=retries(1))
            # CLUSTER INFO and NODES as the text Redis sends: redis-py's parsed forms
            # have changed between versions, the text has not
            for command in ("CLUSTER INFO", "CLUSTER NODES"):
                client.set_response_callback(command, lambda response, **options: response)
            self._clients[index] = client
        return self._clients[index]

    def raw(self, index: int, command: str) -> str:
        """Node ``index``'s answer to ``CLUSTER INFO`` or ``CLUSTER NODES``, as text."""
        return self._admin(index).execute_command(command).decode()


def _parse_nodes(text: str) -> tuple[list[str | None], set[int]]:
    """From ``CLUSTER NODES``: every slot's owner id (None: unassigned) and the slots
    the node asked has open for migration (``[slot->-id]``, ``[slot-<-id]``)."""
    owners: list[str | None] = [None] * SLOTS
    open_slots: set[int] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        myself = "myself" in fields[2].split(",")
        for item in fields[8:]:
            if item.startswith("["):
                if myself:
                    open_slots.add(int(item[1:].split("-")[0]))
                continue
            first, _, last = item.partition("-")
            for slot in range(int(first), int(last or first) + 1):
                owners[slot] = fields[0]
    return owners, open_slots


@atexit.register
def _kill_leftovers() -> None:
    """The net under every finalizer: a run that dies between start and stop still
    leaves no redis-server and no temp dir behind. By pid, never by name: other
    Redis processes on the host are not ours."""
    for proc in list(_RUNNING.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    _RUNNING.clear()
    for path in list(_DIRS):
        shutil.rmtree(path, ignore_errors=True)
    _DIRS.clear()
