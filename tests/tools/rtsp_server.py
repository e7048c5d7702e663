"""A real RTSP server for tests: GStreamer's gst-rtsp-server (Debian's
``gir1.2-gst-rtsp-server-1.0`` + ``python3-gi``) serving a looping video file as H.264 over
RTSP on 127.0.0.1, with basic authentication. Run with the system Python (``/usr/bin/python3``,
where ``gi`` lives), not the project's virtual environment.

Usage::

    /usr/bin/python3 tests/tools/rtsp_server.py VIDEO PORT USER PASSWORD [--fps 10]

Prints ``ready rtsp://127.0.0.1:PORT/cam`` once it listens; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("port", type=int)
    ap.add_argument("user")
    ap.add_argument("password")
    ap.add_argument("--fps", type=int, default=10)
    a = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    # A looping file: multifilesrc with loop, decoded, re-encoded as low-latency H.264.
    factory.set_launch(
        f'( multifilesrc location="{a.video}" loop=true ! decodebin ! videoconvert ! '
        f"videorate ! video/x-raw,framerate={a.fps}/1 ! "
        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, a.password), token)
    server.set_auth(auth)
    perms = GstRtspServer.RTSPPermissions()
    perms.add_role_from_structure(
        Gst.Structure.from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )[0]
    )
    factory.set_permissions(perms)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{a.port}")
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print(f"ready rtsp://127.0.0.1:{a.port}/cam", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
