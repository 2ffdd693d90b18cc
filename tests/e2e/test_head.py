"""HEAD of a health or version path from a real server: the GET's status and headers, and no body."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from stateport.http.options import HEAD_AS_GET
from tests.fixtures.rest import Server


def _exchange(port: int, requests: bytes) -> bytes:
    """What the server sends for ``requests`` on one connection, until it has been quiet for a second."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(requests)
        sock.settimeout(1.0)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def test_a_head_answers_the_gets_status_and_length_with_no_body(stateport_server: Server) -> None:
    port = urlsplit(stateport_server.base_url).port or 80
    for path in sorted(HEAD_AS_GET):
        # A HEAD then a GET on one connection: the HEAD's answer carries no body, so the GET's answer
        # starts right after its head.
        got = _exchange(
            port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (path, got[:300])
        assert rest.startswith(b"HTTP/1.1 200"), (path, got[:600])  # no body in between
        _, _, get_body = rest.partition(b"\r\n\r\n")
        length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        assert length == [b"content-length: %d" % len(get_body)], (path, head, get_body)
