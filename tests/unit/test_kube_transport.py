"""A request that gets no complete answer is an OSError, and the operator's writers count it as a
failed write (it may or may not have landed) instead of crashing or assuming it landed.

The servers here are real sockets on localhost that misbehave the way a crashing API server does:
they read the request and hang up, or send half a response.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from armcpu_k8s.kube import Credentials, Kube
from armcpu_operator import executor

Behaviour = Callable[[socket.socket], None]


def hang_up(conn: socket.socket) -> None:
    conn.recv(65536)  # the whole request arrives: the write may well have landed


def half_a_response(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\":")


def refuse(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b'HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}')


@contextmanager
def misbehaving_server(behaviour: Behaviour, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None) -> Iterator[tuple[Kube, list[int]]]:
    """A Kube pointed at a server that treats every connection with ``behaviour``; yields it and the
    number of connections served. ``tls``: (the server's context, the client's) to speak HTTPS."""
    listener = socket.create_server(("127.0.0.1", 0))
    served: list[int] = [0]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if tls is not None:
                conn.settimeout(5)
                conn = tls[0].wrap_socket(conn, server_side=True)  # closed later without close_notify, as a killed server does
            with conn:
                served[0] += 1
                behaviour(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    scheme, client = ("https", tls[1]) if tls is not None else ("http", ssl.create_default_context())
    kube = Kube(Credentials(server=f"{scheme}://127.0.0.1:{port}", ssl_context=client), timeout=5.0)
    try:
        yield kube, served
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@pytest.mark.parametrize("behaviour", [hang_up, half_a_response], ids=["hang-up", "half-a-response"])
def test_a_request_without_a_complete_answer_raises_oserror(behaviour: Behaviour) -> None:
    with misbehaving_server(behaviour) as (kube, served), pytest.raises(OSError):
        kube.merge_patch("/api/v1/nodes/n1", {"metadata": {"labels": {"a": "b"}}})
    assert served[0] == 1


def test_a_refused_connection_raises_oserror() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    kube = Kube(Credentials(server=f"http://127.0.0.1:{port}", ssl_context=ssl.create_default_context()), timeout=5.0)
    with pytest.raises(OSError):
        kube.get("/api/v1/nodes")


@pytest.mark.parametrize("behaviour", [hang_up, half_a_response, refuse], ids=["hang-up", "half-a-response", "500"])
def test_a_label_write_without_an_answer_is_reported_failed_for_a_retry(behaviour: Behaviour) -> None:
    with misbehaving_server(behaviour) as (kube, served):
        failed = executor.apply_labels(kube, {"n1": {"armcpu.io/x": "1"}, "n2": {"armcpu.io/x": None}})
    assert failed == ["n1", "n2"]
    assert served[0] == 2


OK_RESPONSE = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def _read_request(conn: socket.socket) -> bool:
    """One request's head and body (Content-Length); False when the client closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return True


def keep_alive(conn: socket.socket) -> None:
    while _read_request(conn):
        conn.sendall(OK_RESPONSE)


def answer_once_then_close(conn: socket.socket) -> None:
    """Answers as if the connection stays open, then closes it (an API server dropping an idle connection)."""
    if _read_request(conn):
        conn.sendall(OK_RESPONSE)


def test_requests_of_one_thread_share_one_kept_alive_connection() -> None:
    with misbehaving_server(keep_alive) as (kube, served):
        answers = [kube.merge_patch(f"/api/v1/nodes/n{i}", {"metadata": {"labels": {"a": "b"}}}) for i in range(5)]
        kube.close()
    assert answers == [{"ok": True}] * 5
    assert served[0] == 1, "one TCP (and TLS) connection for five requests"


def test_a_kept_alive_connection_the_server_closed_is_replaced_once_without_losing_the_request() -> None:
    with misbehaving_server(answer_once_then_close) as (kube, served):
        assert kube.get("/api/v1/nodes") == {"ok": True}
        assert kube.merge_patch("/api/v1/nodes/n1", {"metadata": {"labels": {"a": "b"}}}) == {"ok": True}
        kube.close()
    assert served[0] == 2, "the stale connection was dropped and the request sent once on a new one"


def test_a_kept_alive_tls_connection_the_server_closed_is_replaced_too(tmp_path: Path) -> None:
    """Over TLS the server's close shows as an unexpected EOF (ssl.SSLEOFError), not a reset: it was
    seen against kube-apiserver at 5,000 nodes, and must be retried once like a reset."""
    from armcpu_testing.controlplane import _CA

    ca = _CA.create()
    crt, key = ca.write(tmp_path, "tls", "localhost", server=True)
    (tmp_path / "ca.crt").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(crt, key)
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with misbehaving_server(answer_once_then_close, tls=(server_side, client)) as (kube, served):
        assert kube.get("/api/v1/nodes") == {"ok": True}
        assert kube.merge_patch("/api/v1/nodes/n1", {"metadata": {"labels": {"a": "b"}}}) == {"ok": True}
        kube.close()
    assert served[0] == 2
