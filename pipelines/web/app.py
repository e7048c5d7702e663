"""The operator's web view (FastAPI): cameras, alerts and the alert detail with verdicts.

Pages (server-rendered HTML, a little plain JavaScript in ``static/app.js``, no framework):

- ``/cameras``: one tile per camera, its live annotated image refreshed a few times a
  second (``/api/cameras/{camera}/frame.jpg``), status, model phase, frames/s, persons;
- ``/alerts``: the alert history, newest first, filterable by camera, time and verdict;
  new episodes appear live (server-sent events, ``/api/events``);
- ``/alerts/{id}``: the snapshot, the skeleton drawn from the alert's keypoints, the score
  over the episode against the threshold, the model, and the "false alert" / "confirmed"
  buttons with an optional note (``POST /api/alerts/{id}/verdict``).

Bad input gets a 4xx with a message saying what is wrong, and changes nothing: an unknown
alert id (404), a malformed query (400, 422), a verdict that is not JSON (415) or not
``false_alert`` / ``confirmed`` (422), a body over 16 KiB (413).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse

from detector.pose import CAMERA_NAME
from pipelines.sinks.store import MAX_NOTE, AlertRecord, AlertStore, parse_time
from pipelines.sinks.store import Query as StoreQuery
from pipelines.web.live import LiveHub
from pipelines.web.render import score_plot_svg, skeleton_svg, thumbnail

HERE = Path(__file__).parent
MAX_BODY = 16 * 1024
ALERT_ID = re.compile(r"[0-9a-fA-F-]{1,64}")


class VerdictIn(BaseModel):
    """An operator's verdict on an episode."""

    model_config = ConfigDict(extra="forbid")
    verdict: Literal["false_alert", "confirmed"]
    note: str = Field("", max_length=MAX_NOTE)


def query_time(name: str, value: str | None) -> float | None:
    """A time of the query string (:func:`~pipelines.sinks.store.parse_time`); 400 when it
    is not one.

    >>> query_time("since", "1700000000")
    1700000000.0
    >>> query_time("since", "soon")
    Traceback (most recent call last):
    ...
    fastapi.exceptions.HTTPException: 400: since: 'soon' is not a time: give ISO 8601 (2026-11-30T14:05) or UNIX seconds
    """
    if value is None or value == "":
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise HTTPException(400, f"{name}: {exc}") from None


def _camera(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not CAMERA_NAME.fullmatch(value):
        raise HTTPException(
            400, f"camera: {value[:40]!r} is not a camera name (letters, digits, '_ . -')"
        )
    return value


def _local(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


#: Host names a page served on a loopback address answers to (anything else is refused:
#: a DNS-rebinding page in the operator's browser cannot read snapshots of people).
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def allowed_hosts(bind: str) -> list[str] | None:
    """The ``Host`` names to accept when serving on ``bind``: the loopback names for a
    loopback address; None (any) when the operator exposes it (behind their proxy)."""
    return LOOPBACK_HOSTS if bind in ("127.0.0.1", "localhost", "::1") else None


def create_app(
    hub: LiveHub,
    store_path: str | Path | None,
    title: str = "posewatch",
    hosts: list[str] | None = None,
) -> FastAPI:
    """The web application over a live hub and the alert store (None: no history);
    ``hosts``: the only ``Host`` header values accepted (None: any)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    if hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)  # type: ignore[arg-type]
    store = AlertStore(store_path) if store_path is not None else None
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["local"] = _local
    app.state.hub, app.state.store = hub, store
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(BodyLimit, limit=MAX_BODY)  # type: ignore[arg-type]
    _errors(app, templates)

    def need_store() -> AlertStore:
        if store is None:
            raise HTTPException(404, "no alert history: outputs.store is not set")
        return store

    def record(alert_id: str) -> AlertRecord:
        rec = need_store().get(alert_id) if ALERT_ID.fullmatch(alert_id) else None
        if rec is None:
            raise HTTPException(404, f"no alert with id {alert_id[:80]!r}")
        return rec

    def page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request, name, {"title": title, "split": hub.split, "privacy": hub.privacy, **ctx}
        )

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/cameras")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/cameras", response_class=HTMLResponse)
    def cameras_page(request: Request) -> HTMLResponse:
        return page(request, "cameras.html", cameras=hub.states(), max_fps=hub.max_fps)

    @app.get("/api/cameras")
    def cameras_api() -> list[dict[str, Any]]:
        return hub.states()

    @app.get("/api/cameras/{camera}/frame.jpg")
    def frame(camera: str) -> Response:
        if camera not in hub.cameras:
            raise HTTPException(404, f"no camera {_camera(camera)!r}")
        jpeg = hub.jpeg(camera)
        if jpeg is None:
            raise HTTPException(404, f"camera {camera!r} has delivered no frame yet")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    _alert_pages(app, page, need_store, record)
    _alert_api(app, need_store, record)
    _event_route(app, hub, need_store, templates)
    return app


def _filters(
    camera: str | None, since: str | None, until: str | None, verdict: str | None,
    limit: int, page: int,
) -> StoreQuery:  # fmt: skip
    return StoreQuery(
        camera=_camera(camera),
        since=query_time("since", since),
        until=query_time("until", until),
        verdict=verdict or None,
        limit=limit,
        offset=(page - 1) * limit,
    )


Verdict = Literal["false_alert", "confirmed", "none", ""]


def _alert_pages(
    app: FastAPI,
    page: Callable[..., HTMLResponse],
    need_store: Callable[[], AlertStore],
    record: Callable[[str], AlertRecord],
) -> None:
    """The alert list and the detail page."""

    @app.get("/alerts", response_class=HTMLResponse)
    def alerts_page(
        request: Request,
        camera: str | None = None,
        since: str | None = None,
        until: str | None = None,
        verdict: Verdict | None = None,
        limit: int = Query(100, ge=1, le=1000),
        page_no: int = Query(1, ge=1, le=100_000, alias="page"),
    ) -> HTMLResponse:
        q = _filters(camera, since, until, verdict, limit, page_no)
        store = need_store()
        return page(
            request, "alerts.html", alerts=store.query(q), total=store.count(q),
            cameras=store.cameras(), q=q, form={"camera": camera or "", "since": since or "",
            "until": until or "", "verdict": verdict or ""}, page_no=page_no,
        )  # fmt: skip

    @app.get("/alerts/{alert_id}", response_class=HTMLResponse)
    def alert_page(request: Request, alert_id: str) -> HTMLResponse:
        rec = record(alert_id)
        store = need_store()
        return page(
            request, "alert.html", a=rec, max_note=MAX_NOTE,
            skeleton=skeleton_svg(rec.keypoints, rec.bbox),
            plot=score_plot_svg(store.scores(rec.alert_id), rec.threshold, rec.start_ts,
                                rec.start_ts + rec.duration_s if rec.status == "ended" else None),
            events=store.events(rec.alert_id), verdicts=store.verdict_log(rec.alert_id),
        )  # fmt: skip


def _alert_api(
    app: FastAPI, need_store: Callable[[], AlertStore], record: Callable[[str], AlertRecord]
) -> None:
    """The alerts' JSON API, pictures and verdicts."""

    @app.get("/api/alerts")
    def alerts_api(
        camera: str | None = None,
        since: str | None = None,
        until: str | None = None,
        verdict: Verdict | None = None,
        limit: int = Query(100, ge=1, le=1000),
        page_no: int = Query(1, ge=1, le=100_000, alias="page"),
    ) -> dict[str, Any]:
        q = _filters(camera, since, until, verdict, limit, page_no)
        store = need_store()
        return {"total": store.count(q), "alerts": [r.to_dict() for r in store.query(q)]}

    @app.get("/api/alerts/{alert_id}")
    def alert_api(alert_id: str) -> dict[str, Any]:
        rec = record(alert_id)
        store = need_store()
        return {
            **rec.to_dict(),
            "events": store.events(rec.alert_id),
            "scores": store.scores(rec.alert_id),
            "verdicts": store.verdict_log(rec.alert_id),
        }

    @app.get("/api/alerts/{alert_id}/snapshot.jpg")
    def snapshot(alert_id: str) -> Response:
        rec = record(alert_id)
        jpeg = need_store().snapshot(rec.alert_id)
        if jpeg is None:
            raise HTTPException(404, f"alert {alert_id!r} has no snapshot")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    thumbs: OrderedDict[str, bytes] = OrderedDict()

    @app.get("/api/alerts/{alert_id}/thumb.jpg")
    def thumb(alert_id: str) -> Response:
        rec = record(alert_id)
        small = thumbs.get(rec.alert_id)
        if small is None:
            jpeg = need_store().snapshot(rec.alert_id)
            if jpeg is None:
                raise HTTPException(404, f"alert {alert_id!r} has no snapshot")
            small = thumbs[rec.alert_id] = thumbnail(jpeg, rec.bbox)
            if len(thumbs) > 1024:
                thumbs.popitem(last=False)
        return Response(small, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/alerts/{alert_id}/verdict")
    async def verdict(alert_id: str, request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/json":
            raise HTTPException(
                415, f"send the verdict as application/json, not {ctype or 'no content type'!r}"
            )
        try:
            body = VerdictIn.model_validate_json(await request.body())
        except ValueError as exc:
            raise RequestValidationError(getattr(exc, "errors", lambda: [])()) from None
        try:
            rec = await run_in_threadpool(record, alert_id)
        except HTTPException as exc:
            raise HTTPException(exc.status_code, f"{exc.detail}; nothing was changed") from None
        out = await run_in_threadpool(
            need_store().set_verdict, rec.alert_id, body.verdict, body.note
        )
        return {"alert_id": out.alert_id, "verdict": out.verdict, "note": out.verdict_note}


def _event_route(
    app: FastAPI,
    hub: LiveHub,
    need_store: Callable[[], AlertStore],
    templates: Jinja2Templates,
) -> None:
    """``/api/events``: alert messages as server-sent events, each with its list row."""
    row = templates.env.get_template("_row.html")

    def render(item: dict[str, Any]) -> str | None:
        rec = need_store().get(item["alert_id"])
        if rec is None:
            return None
        return json.dumps({**item, "html": row.render(a=rec)})

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        need_store()
        queue = hub.subscribe()

        async def stream() -> Any:
            try:
                yield "retry: 2000\n: connected\n\n"
                while not hub.closed:
                    try:
                        item = await asyncio.wait_for(queue.get(), timeout=15.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if item is None:
                        break
                    data = await run_in_threadpool(render, item)
                    if data is not None:
                        yield f"event: alert\ndata: {data}\n\n"
            finally:
                hub.unsubscribe(queue)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )


def _errors(app: FastAPI, templates: Jinja2Templates) -> None:
    """Errors as ``{"error": message}`` for the API and as a page for the rest."""

    def respond(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get(
            "accept", ""
        ):
            return JSONResponse({"error": message}, status_code=status)
        return templates.TemplateResponse(
            request, "error.html", {"title": "posewatch", "status": status, "message": message},
            status_code=status,
        )  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return respond(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body", "path"))
            got = e.get("input")
            shown = f" (got {str(got)[:40]!r})" if isinstance(got, str | int | float) else ""
            parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}{shown}")
        return respond(request, 422, "; ".join(parts) or "invalid request")


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, before they are read whole
    (by Content-Length, or counted as they arrive)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send, length.decode(errors="replace"))
            return
        seen = 0
        started = False

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise _TooLargeError
            return msg

        async def watch(msg: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, watch)
        except _TooLargeError:
            if not started:
                await self._refuse(send, f"more than {self.limit}")

    async def _refuse(self, send: Send, size: str) -> None:
        body = json.dumps(
            {"error": f"request body of {size} bytes is over the {self.limit}-byte limit; "
             "nothing was changed"}
        ).encode()  # fmt: skip
        await send(
            {"type": "http.response.start", "status": 413,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
        )  # fmt: skip
        await send({"type": "http.response.body", "body": body})


class _TooLargeError(Exception):
    pass


__all__ = ["MAX_BODY", "BodyLimit", "VerdictIn", "create_app", "query_time"]
