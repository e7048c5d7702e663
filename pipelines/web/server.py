"""Serving the web view from a service: uvicorn on a thread of its own.

:func:`start_ui` is the one call a service makes (``posewatch run``'s ``init_ui`` step):
it binds ``ui.host:ui.port`` first (a port in use is a one-line start-up error naming the
setting), starts uvicorn on that socket in a daemon thread, appends the
:class:`~pipelines.sinks.ui.UiSink` to the router and tells the snapshot stamp the URL.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipelines.config import PosewatchConfig
from pipelines.serving import RuntimeConfigError
from pipelines.sinks.privacy import redact
from pipelines.sinks.router import AlertRouter
from pipelines.sinks.store import SnapshotStamp
from pipelines.sinks.ui import UiSink
from pipelines.web.app import allowed_hosts, create_app
from pipelines.web.live import LiveHub

log = logging.getLogger(__name__)


class UiServer:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread.

    Raises:
        RuntimeConfigError: the address cannot be bound (port in use, no such address).
    """

    def __init__(self, app: Any, host: str, port: int, hub: LiveHub | None = None):
        import uvicorn

        self.hub = hub
        self.app = app
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise RuntimeConfigError(
                f"ui: cannot listen on {host}:{port} ({exc.strerror}); another process uses "
                "the port? Set ui.port to a free port (0: any) or ui.enabled: false"
            ) from exc
        self.sock.listen(128)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(
            app, log_level="warning", log_config=None, access_log=False,
            timeout_graceful_shutdown=2,
            lifespan="off",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="ui", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> UiServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeConfigError(f"ui: the web server did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.hub is not None:
            self.hub.close()
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
        store = getattr(getattr(self.app, "state", None), "store", None)
        if store is not None:
            store.close()


def start_ui(
    cfg: PosewatchConfig,
    cameras: Sequence[str],
    router: AlertRouter,
    states: Callable[[], dict[str, tuple[str, str]]] | None = None,
) -> UiServer:
    """Serve the web view of a running service and feed it from ``router``.

    Raises:
        RuntimeConfigError: the port cannot be bound; the alert store cannot be opened.
    """
    privacy = cfg.outputs.privacy
    hub = LiveHub(cameras, cfg.ui.max_fps, cfg.ui.max_width, privacy=privacy != "off")
    app = create_app(hub, cfg.outputs.store, hosts=allowed_hosts(cfg.ui.host))
    server = UiServer(app, cfg.ui.host, cfg.ui.port, hub).start()
    router.sinks.extend(redact([UiSink(hub, states)], privacy))
    base = cfg.ui.public_url or server.url
    for sink in router.sinks:
        if isinstance(sink, SnapshotStamp):
            sink.base_url = base
    log.info("web view on %s/ (cameras, alerts, verdicts)", server.url)
    return server


__all__ = ["UiServer", "start_ui"]
