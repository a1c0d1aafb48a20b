"""Hostile clients against the real server (`bookrec serve` in a subprocess, a real redis-server),
over raw sockets: silent and slow connections are closed by their deadlines, oversized heads are
refused without being buffered, absurd numbers answer 4xx, and ordinary requests are unaffected.
"""

from __future__ import annotations

import socket
import threading
import time

import psutil
import pytest

from tests.support.live_server import LiveServer
from tests.support.publish import publish_fixture
from tests.support.redis_server import RedisServer

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1.0
# Generous for a shared 2-core machine, and still far below "held indefinitely".
SLACK = 2.0


@pytest.fixture(scope="module")
def api():
    redis = RedisServer().start()
    fixture = publish_fixture(redis.url, n_users=40, n_books=40, seed=11)
    server = LiveServer(
        redis.url,
        api_header_timeout_seconds=HEADER_TIMEOUT,
        api_body_timeout_seconds=BODY_TIMEOUT,
        api_keepalive_timeout_seconds=KEEPALIVE_TIMEOUT,
        api_max_header_bytes=16 * 1024,
        api_max_headers=100,
    ).start()
    server.fixture = fixture
    yield server
    log = server.log()
    server.stop()
    redis.stop()
    assert "Traceback" not in log, log


def _connect(api: LiveServer, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=timeout)


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


class _Responses:
    """Reads successive responses from one keep-alive connection (the API answers with Content-Length)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed before a whole response: {self.buffer!r}"
        self.buffer += chunk

    def next(self) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers.get(b"content-length", b"0"))
        self.buffer = rest
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), headers, body


def _status(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split()[1])


def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(api):
    with _connect(api) as sock:
        data, seconds = _read_until_closed(sock)
    assert data == b""
    assert HEADER_TIMEOUT * 0.8 <= seconds < HEADER_TIMEOUT + SLACK


def test_an_unfinished_head_is_answered_408_and_closed(api):
    with _connect(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        data, seconds = _read_until_closed(sock)
    assert _status(data) == 408
    assert b"connection: close" in data.lower()
    assert seconds < HEADER_TIMEOUT + SLACK


def test_a_head_dripped_byte_by_byte_is_cut_at_the_deadline_not_kept_alive_by_each_byte(api):
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Drip-%d: y\r\n" % i for i in range(200))
    sock = _connect(api)
    sock.settimeout(0.2)
    started = time.monotonic()
    closed_after = None
    received = b""
    try:
        for byte in head:
            if time.monotonic() - started > 10:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            received += chunk
            if not chunk:
                closed_after = time.monotonic() - started
                break
    finally:
        sock.close()
    assert closed_after is not None, "the dripping connection was never closed"
    assert closed_after < HEADER_TIMEOUT + SLACK
    assert received == b"" or _status(received) == 408


def test_an_unfinished_body_is_answered_408_and_closed(api):
    with _connect(api) as sock:
        sock.sendall(b"POST /recommend/cold-start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200\r\n\r\n{\"ratings\": [")
        data, seconds = _read_until_closed(sock)
    assert _status(data) == 408
    assert seconds < BODY_TIMEOUT + SLACK


def test_an_idle_keep_alive_connection_is_closed_even_when_sent_bare_line_ends(api):
    with _connect(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = _Responses(sock).next()
        assert status in (200, 503) and headers.get(b"connection") != b"close"
        data, seconds = _read_until_closed(sock)
    assert data == b"" and seconds < KEEPALIVE_TIMEOUT + SLACK

    # CRLFs start no request (the parser skips them) but would stop the keep-alive timer.
    with _connect(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        _Responses(sock).next()
        sock.settimeout(0.3)
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 10:
            try:
                sock.sendall(b"\r\n")
                if sock.recv(4096) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socket.timeout:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None and closed_after < HEADER_TIMEOUT + SLACK


def test_an_oversized_header_in_one_read_is_answered_431(api):
    with _connect(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        data, _ = _read_until_closed(sock)
    assert _status(data) == 431


def test_too_many_header_fields_are_answered_431(api):
    fields = b"".join(b"X-Field-%d: 1\r\n" % i for i in range(150))
    with _connect(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        data, _ = _read_until_closed(sock)
    assert _status(data) == 431


def test_a_20_mb_header_is_refused_without_growing_the_servers_memory(api):
    process = psutil.Process(api.process.pid)
    before = process.memory_info().rss
    sock = _connect(api)
    sent = 0

    def send() -> None:
        nonlocal sent
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Huge: ")
            chunk = b"a" * 65536
            for _ in range(20 * 16):
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass

    sender = threading.Thread(target=send)
    sender.start()
    try:
        data, _ = _read_until_closed(sock)
    finally:
        sender.join(timeout=30)
        sock.close()
    after = process.memory_info().rss
    assert _status(data) == 431
    assert sent < 20 * 2**20, "the server read the whole 20 MB header"
    assert after - before < 8 * 2**20, f"RSS grew by {(after - before) / 2**20:.1f} MB"


@pytest.mark.parametrize("value", [b"0" * 5000 + b"5", b"9" * 5001, b"1" * 25])
def test_an_absurd_content_length_is_a_4xx_never_a_500(api, value):
    with _connect(api) as sock:
        sock.sendall(b"POST /recommend/cold-start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + value + b"\r\n\r\n{}")
        data, _ = _read_until_closed(sock)
    assert 400 <= _status(data) < 500


def test_ordinary_requests_still_work_on_one_keep_alive_connection(api):
    fx = api.fixture
    user = fx.user_ids[0]
    body = b'{"ratings": [{"isbn": "%s", "rating": 8}], "top_k": 3}' % fx.isbns[0].encode()
    with _connect(api) as sock:
        responses = _Responses(sock)
        sock.sendall(b"GET /recommend/%d HTTP/1.1\r\nHost: x\r\n\r\n" % user)
        status, _, payload = responses.next()
        assert status == 200 and b'"recommendations"' in payload
        # Head and body in separate writes, well within their deadlines.
        sock.sendall(b"POST /recommend/cold-start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.3)
        sock.sendall(body)
        status, _, payload = responses.next()
        assert status == 200, payload
        # Two pipelined requests in one write: both answered, in order.
        sock.sendall(b"GET /recommend/%d HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n" % user)
        first = responses.next()
        second = responses.next()
        assert first[0] == 200 and b'"recommendations"' in first[2]
        assert second[0] == 200
        # A request that spends most of the header deadline arriving is still served.
        sock.sendall(b"GET /recommend/%d HTTP/1.1\r\n" % user)
        time.sleep(HEADER_TIMEOUT * 0.6)
        sock.sendall(b"Host: x\r\n\r\n")
        assert responses.next()[0] == 200


# --- nginx in front (deploy/nginx.conf, as the frontend image runs it) ------------------------------

NGINX_HEADER_TIMEOUT = 10.0  # client_header_timeout in deploy/nginx.conf


def _nginx_config(tmp_path, api_port: int, port: int) -> tuple[str, str]:
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    site = (repo / "deploy" / "nginx.conf").read_text()
    site = site.replace("listen 3000;", f"listen 127.0.0.1:{port};")
    assert "http://api:8000" in site
    site = site.replace("http://api:8000", f"http://127.0.0.1:{api_port}")
    site = re.sub(r"root [^;]+;", f"root {repo / 'src' / 'bookrec' / 'web' / 'static'};", site)
    (tmp_path / "site.conf").write_text(site)
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = (
        f"daemon off; master_process off; pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'} warn;\n"
        "events { worker_connections 512; }\n"
        "http {\n  access_log off;\n"
        + "".join(f"  {name}_temp_path {path};\n" for name, path in
                  [("client_body", temp["body"]), *[(n, temp[n]) for n in ("proxy", "fastcgi", "uwsgi", "scgi")]])
        + f"  include {tmp_path / 'site.conf'};\n}}\n"
    )
    (tmp_path / "nginx.conf").write_text(main)
    return str(tmp_path / "nginx.conf"), site


def test_nginx_in_front_applies_the_same_limits(api, tmp_path):
    import shutil
    import subprocess

    from tests.support.redis_server import free_port

    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    config, _ = _nginx_config(tmp_path, api.port, port)
    process = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", config], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)

        def request(raw: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                sock.sendall(raw)
                return _read_until_closed(sock)[0]

        proxied = request(b"GET /api/recommend/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % api.fixture.user_ids[0])
        assert _status(proxied) == 200 and b'"recommendations"' in proxied
        assert _status(request(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")) in (400, 431)
        body = b"{" + b" " * 100_000 + b"}"
        assert _status(request(b"POST /api/recommend/cold-start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(body) + body)) == 413

        # A silent connection and an unfinished head, side by side: both closed at nginx's deadline.
        silent = socket.create_connection(("127.0.0.1", port), timeout=NGINX_HEADER_TIMEOUT + 10)
        partial = socket.create_connection(("127.0.0.1", port), timeout=NGINX_HEADER_TIMEOUT + 10)
        partial.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        results: dict[str, tuple[bytes, float]] = {}
        threads = [threading.Thread(target=lambda n=n, s=s: results.__setitem__(n, _read_until_closed(s)))
                   for n, s in (("silent", silent), ("partial", partial))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        silent.close()
        partial.close()
        for name in ("silent", "partial"):
            data, seconds = results[name]
            assert seconds < NGINX_HEADER_TIMEOUT + SLACK + 1, f"{name}: held {seconds:.1f} s"
            assert data == b"" or _status(data) == 408, f"{name}: {data[:100]!r}"
    finally:
        process.terminate()
        process.wait(timeout=10)
