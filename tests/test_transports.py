"""Framing as pure functions: message in, bytes out."""

from comet import transports


def test_test_stream_lines_follow_the_seed():
    assert transports.test_welcome("foo") == b"comet welcomes you! Your Id: foo\n"
    assert transports.test_tick(3, "foo") == b"Chunk 3 for id foo\n"
    assert transports.test_message(b"hi there") == b"Recvd msg: hi there\n"
    assert transports.test_farewell("server shutting down") == b"Bye: server shutting down\n"
