"""Per stream positions (comet/broker/cursor.py): parsing what a client sends back, and
the dedupe a connection's cursor does."""

import pytest

from comet.broker import Message, cursor


def test_a_vector_reads_back_as_its_elements():
    text = "alice@3f9a21-1826000123456~*@77b0c4-1826000120000~bob@-17"
    assert cursor.parse(text) == {"alice": ("3f9a21", 1826000123456),
                                  "*": ("77b0c4", 1826000120000), "bob": ("", 17)}
    assert cursor.parse(cursor.Cursor(cursor.parse(text)).text()) == cursor.parse(text)


@pytest.mark.parametrize("bad", [
    None, "", "deadbeef-12",               # no vector: one id, or nothing
    "a@", "a@x", "a@x-", "@x-1", "a@x-1~",  # an element without its parts
    "a@x-1x", "a@x-" + "9" * 19,            # an offset that is no offset (or too long)
    "a@x-1~b",
])
def test_anything_else_is_not_a_vector(bad):
    assert cursor.parse(bad) is None


def test_a_cursor_drops_what_it_has_and_takes_a_new_epoch_as_new():
    seen = cursor.Cursor({"a": ("e1", 5)})
    assert not seen.advance(Message("e1", 5, b"old", stream="a"))
    assert seen.advance(Message("e1", 6, b"new", stream="a"))
    assert seen.advance(Message("e2", 1, b"made anew", stream="a"))  # expired, recreated
    assert seen.advance(Message("e9", 3, b"first of b", stream="b"))
    assert seen.text() == "a@e2-1~b@e9-3"
