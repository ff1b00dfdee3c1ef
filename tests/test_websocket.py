"""GET /ws/<id> with a real WebSocket client (websocket-client)."""

import socket

import pytest
import websocket

from tests.realserver import post


def connect(server, path, **kw):
    return websocket.create_connection(f"ws://127.0.0.1:{server.port}{path}", timeout=10, **kw)


def test_messages_arrive_as_text_frames(server):
    ws = connect(server, "/ws/alice?id=team")
    server.wait_for(lambda s: s["connections"].get("ws") == 1, what="ws open")
    post(server, "/send/alice", "héllo".encode())
    post(server, "/send/team", b"to the team")
    assert ws.recv() == "héllo" and ws.recv() == "to the team"
    ws.close()
    server.wait_for(lambda s: s["connections"]["total"] == 0, what="logout")


def test_server_pings_every_heartbeat(start_server):
    server = start_server("--heartbeat", "0.2")
    ws = connect(server, "/ws/p")
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PING
    ws.close()


def test_binary_frame_closes_with_1003(server):
    ws = connect(server, "/ws/b")
    ws.send_binary(b"\x00\x01")
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1003


def test_oversize_frame_closes_with_1009_without_reading_it(server):
    ws = connect(server, "/ws/big")
    ws.send("x" * 10_000)  # over the 4 KiB limit
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1009
    server.wait_for_log("client message over 4096 bytes")


def test_slow_consumer_is_closed_with_1008(start_server):
    server = start_server("--queue-limit", "2", "--write-timeout", "600")
    # a small receive buffer, and the client never reads
    ws = connect(server, "/ws/slow", sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    big = b"y" * 60000
    for _ in range(300):
        if post(server, "/send/slow", big)["delivered"] == 0:
            break
    server.wait_for(lambda s: s["slow_consumers"] == 1, what="drop")
    for _ in range(300):  # now read: what was in flight, then the close frame
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1008
    server.wait_for(lambda s: s["connections"]["total"] == 0, what="closed")


def test_plain_get_is_told_to_upgrade(server):
    import requests
    answer = requests.get(server.url + "/ws/x", timeout=10)  # no handshake at all
    assert answer.status_code == 426 and answer.headers["Upgrade"] == "websocket"


def test_shutdown_closes_with_1012_service_restart(server):
    ws = connect(server, "/ws/s")
    server.wait_for(lambda s: s["connections"].get("ws") == 1, what="ws open")
    server.proc.send_signal(15)
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1012
    assert server.proc.wait(15) == 0


@pytest.mark.parametrize("path", ["/ws/bad%20id", "/ws/ok?id=b%2Fad"])
def test_bad_id_is_refused(server, path):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server, path)
    assert refused.value.status_code == 400


def test_upgrade_at_capacity_gets_503_with_retry_after_and_is_counted(start_server):
    server = start_server("--max-connections", "1")
    held = connect(server, "/ws/first")
    server.wait_for(lambda s: s["connections"]["total"] == 1, what="one held")
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server, "/ws/second")
    assert refused.value.status_code == 503
    assert refused.value.resp_headers["retry-after"] == "5"
    assert b"at capacity" in refused.value.resp_body
    assert server.stats()["refused"] == 1
    held.close()


def test_a_write_blocked_past_the_write_timeout_drops_the_websocket(start_server):
    server = start_server("--queue-limit", "1000", "--write-timeout", "1")
    ws = connect(server, "/ws/stuck", sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    big = b"y" * 60000
    for _ in range(100):  # never read: the kernel's buffers fill, then writes block
        if post(server, "/send/stuck", big)["delivered"] == 0 or server.stats()["drops"]:
            break
    stats = server.wait_for(lambda s: s["connections"]["total"] == 0, what="the drop")
    assert stats["drops"] == {"write timed out": 1}, stats
    assert stats["slow_consumers"] == 0
    ws.close()


def test_a_silent_client_outlives_the_write_timeout(start_server):
    """A WebSocket client that only listens sends nothing between pings; the write
    timeout bounds the server's writes, never how long the client may be silent
    (the plain life's reader once waited for client frames with it, and ended a
    listening client as gone after --write-timeout)."""
    server = start_server("--write-timeout", "1", "--heartbeat", "60")
    ws = connect(server, "/ws/quiet")
    opened = server.wait_for(lambda s: s["connections"].get("ws") == 1, what="ws open")
    server.wait_for(lambda s: s["uptime"] > opened["uptime"] + 3, timeout=20,
                    what="three write timeouts gone by")
    post(server, "/send/quiet", b"still here")
    assert ws.recv() == "still here"
    assert server.stats()["ends"].get("client gone", 0) == 0
    ws.close()
