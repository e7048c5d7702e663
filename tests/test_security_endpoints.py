"""What listens: the embedded broker only on 127.0.0.1; the metrics endpoint answers any
path with the metrics and takes no input."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from pipelines.broker import BrokerError, EmbeddedBroker, free_port, listening_addresses
from pipelines.metrics import Metrics


def _raw(port: int, request: bytes) -> bytes:
    """Send ``request`` as is and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _families(body: str) -> set[str]:
    return {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}


@pytest.mark.broker
def test_embedded_broker_listens_only_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # tansu's own settings from the environment must not move the listener.
    other = free_port()
    monkeypatch.setenv("LISTENER_URL", f"tcp://0.0.0.0:{other}")
    monkeypatch.setenv("ADVERTISED_LISTENER_URL", f"tcp://0.0.0.0:{other}")
    with EmbeddedBroker() as broker:
        assert broker.proc is not None
        found = listening_addresses(broker.proc.pid)
        assert found == [("127.0.0.1", broker.port)]
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"


def test_a_broker_listening_elsewhere_is_stopped() -> None:
    """The start-up check itself: a process listening on 0.0.0.0 is refused and stopped."""
    port = free_port()
    code = (
        f"import socket,time;s=socket.socket();s.bind(('0.0.0.0',{port}));s.listen();time.sleep(60)"
    )
    broker = EmbeddedBroker(port=port)
    broker.proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not listening_addresses(broker.proc.pid):
            time.sleep(0.05)
        with pytest.raises(BrokerError, match=rf"listened on 0\.0\.0\.0:{port}, not only 127"):
            broker.verify_loopback()
        assert broker.proc is None  # stopped
    finally:
        if broker.proc is not None:
            broker.proc.kill()


def test_metrics_endpoint_answers_any_path_and_takes_no_input() -> None:
    m = Metrics()
    m.frames_read.labels(camera="gate").inc(7)
    port = m.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}"
        main = urllib.request.urlopen(f"{url}/metrics", timeout=5)
        body = main.read().decode()
        assert main.status == 200 and main.headers["Content-Type"].startswith("text/plain")
        assert 'posewatch_frames_read_total{camera="gate"} 7.0' in body
        families = _families(body)
        assert len(families) >= 20
        # Any path, any query: the same exposition (a query does not filter it).
        for path in ("/", "/x/y/z", "/metrics?name[]=posewatch_build_info", "/?debug=1"):
            got = urllib.request.urlopen(url + path, timeout=5).read().decode()
            assert _families(got) == families, path
            assert 'posewatch_frames_read_total{camera="gate"} 7.0' in got
        head = _raw(port, b"HEAD /anything HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") and head.endswith(b"\r\n\r\n")
        # Other methods are refused before their body is read, and change nothing.
        for method in (b"POST", b"PUT", b"DELETE", b"PATCH", b"FOO"):
            answer = _raw(
                port,
                method + b" /metrics HTTP/1.0\r\nContent-Length: 9\r\n\r\nreset=yes",
            )
            status = answer.split(b"\r\n", 1)[0]
            assert status.startswith(b"HTTP/1.0 405"), (method, status)
            assert b"Allow: GET, HEAD" in answer and answer.endswith(b"\r\n\r\n")
        # Malformed requests get an empty answer (no status line for a request line that
        # does not parse, an empty 431 for oversized headers): nothing is echoed.
        bad = _raw(port, b"GET /<script>secret-token HTTP/1.0 junk\r\n\r\n")
        assert bad == b""
        big = _raw(port, b"GET / HTTP/1.0\r\nX-Secret-Token: " + b"a" * 70000 + b"\r\n\r\n")
        assert big.startswith(b"HTTP/1.0 431") and big.endswith(
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        assert b"Secret" not in big
        after = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        assert 'posewatch_frames_read_total{camera="gate"} 7.0' in after
    finally:
        m.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
