"""The router alone, with plain connection records: no server, no sockets."""

from comet.router import Router


class Record:
    """The smallest connection: a list for a queue, a limit, and how it ended."""

    def __init__(self, limit: int = 256) -> None:
        self.ids = ()
        self.got = []
        self.limit = limit
        self.dropped = None

    def deliver(self, message) -> bool:
        if len(self.got) >= self.limit:
            return False
        self.got.append(message)
        return True

    def drop(self, reason: str) -> int:
        self.dropped = reason
        discarded = len(self.got)
        self.got = []
        return discarded


def test_send_reaches_only_the_id():
    router, a, b = Router(), Record(), Record()
    router.login("a", a)
    router.login("b", b)
    assert router.send("a", b"x") == 1
    assert a.got == [b"x"] and b.got == []


def test_send_to_unknown_id_delivers_to_nobody():
    router = Router()
    assert router.send("nobody", b"x") == 0
    assert router.messages_in == 1 and router.messages_out == 0


def test_one_connection_several_ids():
    router, conn = Router(), Record()
    for id in ("a", "b", "c"):
        router.login(id, conn)
    router.login("b", conn)  # twice: no-op
    assert conn.ids == ("a", "b", "c")
    assert router.connections == 1 and router.ids == 3
    assert router.send("b", b"1") == 1 and router.send("c", b"2") == 1
    assert conn.got == [b"1", b"2"]


def test_one_id_several_connections():
    router, first, second = Router(), Record(), Record()
    router.login("u", first)
    router.login("u", second)
    assert router.send("u", b"m") == 2
    router.logout(first)
    assert router.send("u", b"n") == 1
    assert first.got == [b"m"] and second.got == [b"m", b"n"]


def test_broadcast_reaches_each_connection_once():
    router = Router()
    conns = [Record() for _ in range(5)]
    for i, conn in enumerate(conns):
        router.login(f"id{i}", conn)
        router.login("shared", conn)
    assert router.broadcast(b"all") == 5
    assert all(conn.got == [b"all"] for conn in conns)


def test_logout_forgets_everything_and_is_idempotent():
    router, conn, other = Router(), Record(), Record()
    router.login("a", conn)
    router.login("b", conn)
    router.login("b", other)
    router.logout(conn)
    router.logout(conn)
    assert conn.ids == () and router.connections == 1
    assert router.connections_of("a") == () and router.connections_of("b") == (other,)
    router.logout(other)
    assert router.connections == 0 and router.ids == 0
    assert router._by_id == {}


def test_slow_consumer_is_dropped_not_buffered():
    router, slow, fast = Router(), Record(limit=3), Record(limit=100)
    router.login("u", slow)
    router.login("u", fast)
    for n in range(3):
        assert router.send("u", n) == 2
    assert router.send("u", 3) == 1
    assert slow.dropped == "slow consumer" and slow.got == [] and slow.ids == ()
    assert router.slow_consumers == 1 and router.messages_dropped == 4
    assert router.send("u", 4) == 1 and fast.got == [0, 1, 2, 3, 4]


def test_many_ids_and_many_connections():
    router = Router()
    conns = [Record() for _ in range(2000)]
    for i, conn in enumerate(conns):
        router.login(str(i % 500), conn)      # 4 connections per id
        router.login(f"own-{i}", conn)
    assert router.connections == 2000 and router.ids == 2500
    assert sum(router.send(str(i), i) for i in range(500)) == 2000
    assert router.broadcast("b") == 2000
    assert len(list(router.all_connections())) == 2000
    for conn in conns[::2]:
        router.logout(conn)
    assert router.connections == 1000 and router.ids == 250 + 1000  # odd i: odd i % 500
    for conn in conns[1::2]:
        router.logout(conn)
    assert router.connections == 0 and router._by_id == {}
