"""The in-memory history alone: ids, epochs, bounds, and what a resuming client gets."""

from comet.broker import parse_position
from comet.broker.memory import BROADCAST, MemoryHistory


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ids_carry_the_epoch_and_count_up():
    history = MemoryHistory()
    first, second = history.publish("a", b"1"), history.publish("b", b"2")
    assert first.id == f"{history.epoch}-1" and second.id == f"{history.epoch}-2"
    assert history.position() == second.id


def test_an_id_from_another_epoch_is_never_taken_for_ours():
    before, after = MemoryHistory(), MemoryHistory()
    assert before.epoch != after.epoch
    after.publish("a", b"x")
    old = before.publish("a", b"old").id
    assert parse_position(old, after.epoch) is None
    replay = after.since(["a"], old)
    assert replay.missed and [m.data for m in replay.messages] == [b"x"]


def test_since_replays_only_later_messages_of_these_ids_and_broadcasts():
    history = MemoryHistory()
    start = history.position()
    history.publish("a", b"a1")
    history.publish("b", b"b1")
    history.publish(BROADCAST, b"all")
    history.publish("a", b"a2")
    replay = history.since(["a"], start)
    assert [m.data for m in replay.messages] == [b"a1", b"all", b"a2"] and not replay.missed
    middle = replay.messages[1].id
    assert [m.data for m in history.since(["a"], middle).messages] == [b"a2"]


def test_several_ids_merge_in_order():
    history = MemoryHistory()
    start = history.position()
    for data, id in ((b"1", "x"), (b"2", "y"), (b"3", "x"), (b"4", "y")):
        history.publish(id, data)
    assert [m.data for m in history.since(["y", "x"], start).messages] == [b"1", b"2", b"3", b"4"]


def test_count_bound_evicts_oldest_and_says_missed():
    history = MemoryHistory(per_id=3)
    start = history.position()
    for n in range(5):
        history.publish("a", b"%d" % n)
    assert len(history) == 3
    replay = history.since(["a"], start)
    assert [m.data for m in replay.messages] == [b"2", b"3", b"4"] and replay.missed
    recent = replay.messages[0].id
    assert not history.since(["a"], recent).missed


def test_ttl_expires_messages_and_frees_the_id():
    clock = Clock()
    history = MemoryHistory(ttl=10, clock=clock)
    start = history.position()
    history.publish("a", b"old")
    clock.now = 11
    replay = history.since(["a"], start)
    assert replay.messages == [] and replay.missed
    assert len(history) == 0 and history._by_id == {}


def test_byte_budget_bounds_all_ids_together():
    history = MemoryHistory(max_bytes=1000)
    for n in range(100):
        history.publish(f"id{n}", b"x" * 100)
    assert history._bytes <= 1000 and len(history) == 10
    assert len(history._by_id) == 10


def test_order_index_stays_bounded_under_count_eviction():
    history = MemoryHistory(per_id=2)
    for _ in range(20000):
        history.publish("hot", b"m")
    assert len(history) == 2 and len(history._order) <= 2 * 2 + 1024 + 1


def test_no_history_costs_nothing_and_never_hides_a_loss():
    history = MemoryHistory(per_id=0)
    message = history.publish("a", b"x")
    assert message.id.endswith("-1") and len(history) == 0 and history._by_id == {}
    history.publish("a", b"y")
    assert history.since(["a"], message.id)[:2] == ([], True)
    assert history.since(["a"], history.position())[:2] == ([], False)


def test_garbage_position_means_missed():
    history = MemoryHistory()
    for garbage in ("", "nonsense", f"{history.epoch}-x", f"{history.epoch}-99"):
        assert history.since(["a"], garbage).missed
