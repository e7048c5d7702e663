"""Credentials out of text: URLs with user info, and secret-named query parameters.

:func:`redact` is applied to every camera URI and every error message that may hold one
before it is logged, printed, counted or stored. It works on the raw text, not through
``urllib.parse`` (which ends the user info at the first ``/``, ``?`` or ``#`` and so shows
the rest of a password such as ``Rtsp/Env#Slash``):

- **user info**: in ``scheme://USERINFO@host...`` everything between ``://`` and the *last*
  ``@`` of the URL (which ends at whitespace) is replaced by ``***``, so passwords holding
  ``/ # ? @ :`` are hidden whole. A URL whose path or query holds an ``@`` is over-redacted
  (its host is hidden too), never under-redacted. A raw space inside user info ends the URL
  early; cameras need it percent-encoded (``%20``) anyway.
- **known secret values**: every value registered with :func:`register_secrets` (the
  configuration registers what came from ``${ENV}``, ``file:`` and secret-named fields),
  plain or URL-encoded, wherever it appears (a token in a URL path, an error message).
- **secret parameters**: the value of any ``name=value`` whose name contains ``pass``,
  ``pw``, ``token``, ``key``, ``secret``, ``auth``, ``sig``, ``cred``, ``jwt`` or
  ``session`` (any case:
  ``password``, ``passwd``, ``api_key``, ``access_token``, ``X-Auth``, ``signature``) is
  replaced by ``***`` up to the next ``&`` or whitespace (a ``#`` or ``;`` inside a
  password is hidden too).

Example:
    >>> redact("rtsp://admin:Rtsp/Env#Slash@10.0.0.5:8554/x")
    'rtsp://***@10.0.0.5:8554/x'
    >>> redact("camera 'gate' (rtsp://u:p@ss@h/s): refused")
    "camera 'gate' (rtsp://***@h/s): refused"
    >>> redact("http://cam/mjpg?user=me&password=hunter2&fps=5")
    'http://cam/mjpg?user=me&password=***&fps=5'
    >>> redact("/videos/gate.mp4")
    '/videos/gate.mp4'
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import quote

#: ``scheme://`` then the URL up to whitespace (RFC 3986 scheme characters).
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>\S*)")
#: Words that make a parameter or field name look like it holds a secret (any case).
SECRET_WORDS = ("pass", "pw", "token", "key", "secret", "auth", "sig", "cred", "jwt", "session")
#: A name (of a parameter, a configuration field) that looks like it holds a secret.
SECRET_NAME = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
#: A parameter whose name looks like it holds a secret, and its value.
_SECRET_PARAM = re.compile(
    r"(?P<name>(?<![A-Za-z0-9_.\-])[A-Za-z0-9_.\-]*"
    rf"(?:{'|'.join(SECRET_WORDS)})[A-Za-z0-9_.\-]*)"
    r"=(?P<value>[^&\s]+)",
    re.IGNORECASE,
)
MASK = "***"

#: Secret values known to this process (from ``${ENV}`` / ``file:`` references and
#: secret-named configuration fields): hidden wherever they appear, e.g. a token in a URL
#: path (``rtsps://nvr:7441/${TOKEN}``), which no pattern can recognise.
_KNOWN: list[str] = []
_KNOWN_LOCK = threading.Lock()
#: Shorter values are not registered (they would mask ordinary words).
MIN_SECRET_LEN = 4


def register_secrets(values: Iterable[str]) -> None:
    """Hide these values (and their URL-encoded forms) in everything :func:`redact`
    returns from now on (values shorter than :data:`MIN_SECRET_LEN` are ignored)."""
    new = set()
    for v in values:
        if isinstance(v, str) and len(v) >= MIN_SECRET_LEN:
            new.update({v, quote(v, safe=""), quote(v, safe="/")})
    with _KNOWN_LOCK:
        known = set(_KNOWN) | new
        _KNOWN[:] = sorted(known, key=len, reverse=True)


def _hide_userinfo(m: re.Match[str]) -> str:
    rest = m.group("rest")
    at = rest.rfind("@")
    if at < 0:
        return m.group(0)
    return f"{m.group('scheme')}{MASK}{rest[at:]}"


def redact(text: str) -> str:
    """``text`` with the user info of every URL and the value of every secret-named
    parameter replaced by ``***`` (see the module docstring); other text unchanged.

    Arguments:
        text: a URI, or any message that may contain some.

    Returns:
        The redacted text (the same string when there was nothing to hide).
    """
    for secret in _KNOWN:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL.sub(_hide_userinfo, text)
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: f"{m.group('name')}={MASK}", text)
    return text


__all__ = ["MASK", "MIN_SECRET_LEN", "SECRET_NAME", "SECRET_WORDS", "redact", "register_secrets"]
