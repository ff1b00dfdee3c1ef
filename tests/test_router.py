"""The router alone, with plain connection records: no server, no sockets."""

from comet.router import Router


class Record:
    """The smallest connection: a list for a queue and a limit."""

    def __init__(self, limit: int = 256, transport: str = "test") -> None:
        self.ids = ()
        self.got = []
        self.limit = limit
        self.transport = transport

    def deliver(self, message) -> bool:
        if len(self.got) >= self.limit:
            return False
        self.got.append(message)
        return True


class Gone(Record):
    """A connection that finds its peer gone on delivery and logs itself out."""

    def __init__(self, router: Router, transport: str = "test") -> None:
        super().__init__(transport=transport)
        self.router = router

    def deliver(self, message) -> bool:
        self.router.logout(self)
        return False


def test_send_reaches_only_the_id():
    router, a, b = Router(), Record(), Record()
    router.login("a", a)
    router.login("b", b)
    assert router.send("a", b"x") == (1, [], {"test": 1})
    assert a.got == [b"x"] and b.got == []


def test_send_to_unknown_id_delivers_to_nobody():
    assert Router().send("nobody", b"x")[:2] == (0, [])


def test_login_says_when_an_id_is_new_here_and_logout_when_it_is_gone():
    router, first, second = Router(), Record(), Record()
    assert router.login("u", first) is True
    assert router.login("u", second) is False
    assert router.login("u", second) is False  # twice: a no-op
    assert router.logout(first) == []
    assert router.logout(second) == ["u"]
    assert router.logout(second) == []  # twice: safe


def test_one_connection_several_ids():
    router, conn = Router(), Record()
    assert [router.login(id, conn) for id in ("a", "b", "c")] == [True, True, True]
    assert conn.ids == ("a", "b", "c") and router.ids == 3
    assert router.send("b", b"1")[:2] == (1, []) and router.send("c", b"2")[:2] == (1, [])
    assert conn.got == [b"1", b"2"]
    assert sorted(router.logout(conn)) == ["a", "b", "c"]


def test_one_id_several_connections():
    router, first, second = Router(), Record(), Record()
    router.login("u", first)
    router.login("u", second)
    assert router.send("u", b"m")[:2] == (2, [])
    router.logout(first)
    assert router.send("u", b"n")[:2] == (1, [])
    assert first.got == [b"m"] and second.got == [b"m", b"n"]


def test_broadcast_reaches_each_connection_once():
    router = Router()
    conns = [Record() for _ in range(5)]
    for i, conn in enumerate(conns):
        router.login(f"id{i}", conn)
        router.login("shared", conn)
    assert router.broadcast(b"all") == (5, [], {"test": 5})
    assert all(conn.got == [b"all"] for conn in conns)


def test_a_full_connection_is_returned_not_dropped_and_a_gone_one_is_not_returned():
    router, slow, fast = Router(), Record(limit=1), Record()
    gone = Gone(router)
    for conn in (slow, fast, gone):
        router.login("u", conn)
    assert router.send("u", 0)[:2] == (2, [])  # gone logged itself out on the way
    assert gone.ids == () and len(router.connections_of("u")) == 2
    assert router.send("u", 1)[:2] == (1, [slow])
    assert slow.ids == ("u",), "deciding what to do with a slow reader is the hub's"


def test_many_ids_and_many_connections():
    router = Router()
    conns = [Record() for _ in range(2000)]
    for i, conn in enumerate(conns):
        router.login(str(i % 500), conn)      # 4 connections per id
        router.login(f"own-{i}", conn)
    assert router.ids == 2500
    assert sum(router.send(str(i), i)[0] for i in range(500)) == 2000
    assert router.broadcast("b")[:2] == (2000, [])
    assert len(list(router.all_connections())) == 2000
    for conn in conns[::2]:
        router.logout(conn)
    assert router.ids == 250 + 1000  # odd i: odd i % 500
    for conn in conns[1::2]:
        router.logout(conn)
    assert router.ids == 0 and router._by_id == {}


def test_deliveries_are_counted_by_transport_less_the_refused_and_the_gone():
    router = Router()
    slow = Record(limit=0, transport="ws")
    gone = Gone(router, transport="events")
    conns = [Record(transport="test"), Record(transport="events"), Record(transport="ws"),
             slow, gone]
    for i, conn in enumerate(conns):
        router.login(f"own{i}", conn)
        router.login("shared", conn)  # one connection, two ids: offered once
    fanout = router.broadcast(b"all")
    assert fanout.delivered == 3 and fanout.refused == [slow]
    assert fanout.by_transport == {"test": 1, "events": 1, "ws": 1}
    assert sum(fanout.by_transport.values()) == fanout.delivered
    again = router.send("shared", b"one")  # the gone one has logged out
    assert again.by_transport == {"test": 1, "events": 1, "ws": 1} and again.refused == [slow]
    assert router.send("own0", b"one").by_transport == {"test": 1}
    router.logout(slow)
    assert router.broadcast(b"all").by_transport == {"test": 1, "events": 1, "ws": 1}


def test_transport_counts_follow_logins_not_ids():
    router, conn = Router(), Record(transport="ws")
    for id in ("a", "b", "c"):
        router.login(id, conn)
    assert router.broadcast(b"x").by_transport == {"ws": 1}
    router.logout(conn)
    router.logout(conn)  # twice: counted off once
    assert router.broadcast(b"x") == (0, [], {"ws": 0})
