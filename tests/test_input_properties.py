"""Property tests of the parsers a client's text reaches: ids, ``?id=``, and positions.

Any text gives a value of the promised shape or a :class:`BadRequest` (or None for a
position that is not one): never another exception, which the server would answer
with a 500. Positions come from ``Last-Event-ID`` and ``since``; a header value
reaches the app decoded as latin-1, so every character up to U+00FF can be in one
(the superscript digits among them, which ``str.isdigit`` calls digits and ``int``
refuses).
"""

from __future__ import annotations

from urllib.parse import urlencode

from hypothesis import example, given, settings
from hypothesis import strategies as st

from comet import inputs
from comet.broker import cursor as cursor_text
from comet.broker import parse_position
from comet.broker.redis import _split
from comet.inputs import ID_PATTERN, MAX_IDS_PER_CONNECTION, MAX_POSITION, BadRequest

FAST = settings(max_examples=200, deadline=None)

#: what a client can put in a header value or a query: latin-1 as pywsgi decodes it,
#: and any Unicode (a query string is percent-decoded as UTF-8)
TEXT = st.one_of(st.text(st.characters(max_codepoint=0xFF), max_size=60), st.text(max_size=60))
ID_CHARS = "ABCXYZabcxyz0189_.:-"
IDS = st.text(ID_CHARS, min_size=1, max_size=128)
#: what a position's parts are built of: digits of every kind, separators, id characters
POSITION = st.text(st.sampled_from("0123456789²³¹٣৪-~@*abcdef:_ "), max_size=40)


def test_the_superscript_digits_are_digits_to_isdigit_and_not_to_int():
    """Why the position parsers test ``isdecimal`` of ASCII, not ``isdigit``."""
    assert "²".isdigit() and not "²".isdecimal()


@FAST
@given(TEXT)
def test_check_id_takes_exactly_the_id_grammar(text):
    try:
        assert inputs.check_id(text) == text
    except BadRequest as refusal:
        assert refusal.status.startswith("400") and not ID_PATTERN.fullmatch(text)
    else:
        assert ID_PATTERN.fullmatch(text)


@FAST
@given(TEXT, st.one_of(TEXT, st.lists(st.one_of(IDS, TEXT), max_size=80).map(
    lambda values: urlencode([("id", v) for v in values]))))
def test_ids_of_gives_distinct_valid_ids_led_by_the_path_id_or_a_400(path_id, query):
    try:
        ids = inputs.ids_of(path_id, query)
    except BadRequest as refusal:
        assert refusal.status.startswith("400")
        return
    assert ids[0] == path_id and len(set(ids)) == len(ids) <= MAX_IDS_PER_CONNECTION
    assert all(ID_PATTERN.fullmatch(id) for id in ids)


@FAST
@given(st.lists(IDS, min_size=1, max_size=MAX_IDS_PER_CONNECTION, unique=True))
def test_ids_of_reads_back_what_a_client_encoded(ids):
    query = urlencode([("id", id) for id in ids[1:]] + [("other", "x")])
    assert inputs.ids_of(ids[0], query) == ids


@FAST
@given(st.one_of(st.none(), TEXT, POSITION), st.one_of(TEXT, POSITION))
def test_last_event_id_is_none_a_bounded_printable_text_or_a_400(header, query_value):
    environ = {"QUERY_STRING": urlencode({"last_event_id": query_value})}
    if header is not None:
        environ["HTTP_LAST_EVENT_ID"] = header
    try:
        value = inputs.last_event_id(environ)
    except BadRequest as refusal:
        assert refusal.status.startswith("400")
        return
    assert value is None or (value.isprintable() and 0 < len(value) <= MAX_POSITION)


@FAST
@given(st.one_of(TEXT, POSITION), st.sampled_from(["", "3f9a21", "e-1"]))
def test_parse_position_is_an_offset_of_this_epoch_or_none(text, epoch):
    offset = parse_position(text, epoch)
    assert offset is None or (isinstance(offset, int) and offset >= 0)


@FAST
@given(st.text(st.sampled_from("0123456789abcdef"), min_size=1, max_size=12),
       st.integers(0, 10**18 - 1))
def test_parse_position_reads_back_an_id_of_its_epoch(epoch, offset):
    assert parse_position(f"{epoch}-{offset}", epoch) == offset
    assert parse_position(f"{epoch}x-{offset}", epoch) is None


def test_parse_position_refuses_digits_that_int_cannot_read_and_overlong_offsets():
    assert parse_position("e-²", "e") is None
    assert parse_position("e-" + "9" * (MAX_POSITION - 2), "e") is None


@FAST
@given(st.one_of(TEXT, POSITION, st.just("a@x-" + "1" * 5000)))
def test_split_gives_an_epoch_and_ascii_digits_for_the_replay_script(text):
    epoch, offset = _split(text)
    assert offset.isascii() and offset.isdecimal() and len(offset) <= 18


@FAST
@given(st.one_of(TEXT, POSITION))
@example("a@x-\N{SUPERSCRIPT TWO}")
@example("a@x-" + "1" * 5000)
def test_a_vector_is_parsed_into_offsets_or_is_none(text):
    found = cursor_text.parse(text)
    if found is not None:
        assert all(isinstance(at, int) and at >= 0 for _, at in found.values())


@FAST
@given(st.dictionaries(st.one_of(IDS, st.just("*")),
                       st.tuples(st.text("0123456789abcdef", max_size=8),
                                 st.integers(0, 10**18 - 1)), min_size=1, max_size=20))
def test_a_cursors_text_reads_back_as_its_elements(at):
    assert cursor_text.parse(cursor_text.Cursor(at).text()) == at
