"""Why a Kafka connection failed, in words an operator can act on.

kafka-python reports a refused TLS handshake or SASL login only through its own log records
(``kafka.net.*``, repeated at every reconnect); what reaches the caller is a generic
"Unable to bootstrap" timeout. :func:`watch_network_errors` installs a handler on the
``kafka`` logger that keeps the last exceptions those records carry (it prints nothing), and
:func:`describe_failure` turns a failed delivery into one line: the TLS error
(``certificate verify failed: certificate has expired``), the refused SASL mechanism or
login, or the exception itself. No secret is ever part of it.

Example:
    >>> describe_failure(TimeoutError("not acknowledged"), {"security_protocol": "PLAINTEXT"})
    'not acknowledged'
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from typing import Any

#: Captured errors older than this (seconds) do not explain a failure.
MAX_AGE_S = 60.0
_SSL_NOISE = re.compile(r"\[SSL(?:: [A-Z_]+)?\]\s*|\s*\(_ssl\.c:\d+\)")


class _NetworkErrors(logging.Handler):
    """Remembers the last exceptions passed as arguments of ``kafka.*`` log records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lock_ = threading.Lock()
        self.seen: deque[tuple[BaseException, float]] = deque(maxlen=32)

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for a in args:
            if isinstance(a, BaseException):
                with self.lock_:
                    self.seen.append((a, time.monotonic()))


_WATCHER = _NetworkErrors()


def watch_network_errors() -> None:
    """Start remembering kafka-python's connection errors (idempotent; call before a
    producer or consumer connects). Records still reach every other handler as before; a
    ``kafka`` logger whose level is above ERROR hides them from this watcher too."""
    logger = logging.getLogger("kafka")
    if _WATCHER not in logger.handlers:
        logger.addHandler(_WATCHER)


def recent_network_errors(max_age_s: float = MAX_AGE_S) -> list[BaseException]:
    """The connection errors kafka-python logged within ``max_age_s`` seconds, newest
    first (at most 32)."""
    now = time.monotonic()
    with _WATCHER.lock_:
        seen = list(_WATCHER.seen)
    return [e for e, t in reversed(seen) if now - t <= max_age_s]


def _tls_reason(text: str) -> str | None:
    """``certificate verify failed: ...`` (or another TLS error) out of kafka-python's
    ``Handshake failed: [SSL: ...] ... (_ssl.c:N)``; None when ``text`` is not one."""
    if "Handshake failed" not in text and "SSL" not in text:
        return None
    reason = text.split("Handshake failed:", 1)[-1]
    return _SSL_NOISE.sub("", reason).strip() or None


def describe_failure(exc: BaseException | None, client_config: dict[str, Any]) -> str:
    """One line saying why a delivery failed: the TLS or SASL refusal kafka-python saw
    (:func:`recent_network_errors`) when there is one, else ``exc`` itself.

    Arguments:
        exc: what the producer raised or returned (often a generic timeout).
        client_config: the kafka-python settings (``security_protocol``,
            ``sasl_mechanism``, ``ssl_cafile``, ...); only names are used, never secrets.

    Returns:
        e.g. ``TLS handshake failed: certificate verify failed: unable to get local issuer
        certificate (check kafka.ssl_cafile and the broker's certificate)``.
    """
    protocol = str(client_config.get("security_protocol", "PLAINTEXT"))
    candidates = [*recent_network_errors(), *([exc] if exc is not None else [])]
    for c in candidates:
        name = type(c).__name__
        if protocol.startswith("SASL") and name == "UnsupportedSaslMechanismError":
            mech = client_config.get("sasl_mechanism")
            return (
                f"the broker refused SASL mechanism {mech} (UnsupportedSaslMechanismError); "
                "set kafka.sasl_mechanism to one it accepts"
            )
        if protocol.startswith("SASL") and name in (
            "SaslAuthenticationFailedError",
            "AuthenticationFailedError",
        ):
            user = client_config.get("sasl_plain_username")
            return (
                f"the broker refused the SASL login of user {user!r} ({name}); check "
                "kafka.sasl_username and kafka.sasl_password"
            )
        if protocol in ("SSL", "SASL_SSL"):
            tls = _tls_reason(str(c))
            if tls is not None:
                hint = "check kafka.ssl_cafile and the broker's certificate"
                if "expired" in tls:
                    hint = "the broker's certificate has expired: renew it"
                return f"TLS handshake failed: {tls} ({hint})"
    return str(exc) if exc is not None else "unknown error"


__all__ = ["describe_failure", "recent_network_errors", "watch_network_errors"]
