"""Pictures of the alert detail page as inline SVG (no image, no JavaScript needed): the
flagged person's skeleton drawn from the alert's own keypoints (so it exists in split mode,
where no camera image does), and the score over the episode against the threshold.

Example:
    >>> svg = score_plot_svg([(0.0, 1.0), (1.0, 3.0), (2.0, 0.5)], 2.0, 0.5, 2.0)
    >>> svg.startswith("<svg") and "polyline" in svg and "threshold" in svg
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from detector.skeleton import KEYPOINT_NAMES, LIMBS


def skeleton_svg(
    keypoints: Sequence[Sequence[float]], bbox: Sequence[float], size: int = 320
) -> str:
    """The person's skeleton (COCO limbs between joints with confidence > 0) and box,
    framed on the box with a margin; joints named in tooltips."""
    pts = [(float(x), float(y), float(c)) for x, y, c in keypoints]
    seen = [(x, y) for x, y, c in pts if c > 0 and math.isfinite(x) and math.isfinite(y)]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    xs = [x1, x2, *(p[0] for p in seen)]
    ys = [y1, y2, *(p[1] for p in seen)]
    lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
    pad = 0.12 * max(hi_x - lo_x, hi_y - lo_y, 20.0)
    vb = (lo_x - pad, lo_y - pad, hi_x - lo_x + 2 * pad, hi_y - lo_y + 2 * pad)
    stroke = max(vb[2], vb[3]) / 120
    out = [
        f'<svg class="skeleton" xmlns="http://www.w3.org/2000/svg" width="{size}" '
        f'height="{size}" viewBox="{vb[0]:.1f} {vb[1]:.1f} {vb[2]:.1f} {vb[3]:.1f}" '
        'role="img" aria-label="skeleton of the flagged frame">',
        f'<rect x="{vb[0]:.1f}" y="{vb[1]:.1f}" width="{vb[2]:.1f}" height="{vb[3]:.1f}" '
        'fill="#202020"/>',
        f'<rect x="{x1:.1f}" y="{y1:.1f}" width="{x2 - x1:.1f}" height="{y2 - y1:.1f}" '
        f'fill="none" stroke="#e03030" stroke-width="{stroke:.2f}"/>',
    ]
    for a, b in LIMBS:
        (xa, ya, ca), (xb, yb, cb) = pts[a], pts[b]
        if ca > 0 and cb > 0:
            out.append(
                f'<line x1="{xa:.1f}" y1="{ya:.1f}" x2="{xb:.1f}" y2="{yb:.1f}" '
                f'stroke="#ffd21f" stroke-width="{1.5 * stroke:.2f}" stroke-linecap="round"/>'
            )
    for i, (x, y, c) in enumerate(pts):
        if c > 0:
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{1.6 * stroke:.2f}" fill="#fff">'
                f"<title>{KEYPOINT_NAMES[i]} ({c:.2f})</title></circle>"
            )
    out.append("</svg>")
    return "".join(out)


def thumbnail(jpeg: bytes, bbox: Sequence[float], size: tuple[int, int] = (192, 144)) -> bytes:
    """The snapshot cropped around the person (4:3, the box about half its height) for the
    alert list.

    Raises:
        ValueError: ``jpeg`` is not an image.
    """
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("the snapshot is not a JPEG image")
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    ch = min(h, max(2.0 * (y2 - y1), 1.5 * (x2 - x1) * size[1] / size[0], 96.0))
    cw = min(w, ch * size[0] / size[1])
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(np.clip(cx - cw / 2, 0, max(0, w - cw)))
    top = int(np.clip(cy - ch / 2, 0, max(0, h - ch)))
    crop = img[top : top + max(1, int(ch)), left : left + max(1, int(cw))]
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("cannot encode the thumbnail")
    return bytes(buf)


def score_plot_svg(
    points: Sequence[tuple[float, float]],
    threshold: float,
    start_ts: float,
    end_ts: float | None,
    width: int = 640,
    height: int = 220,
) -> str:
    """Smoothed score over time (seconds from the episode's start) with the threshold as a
    dashed red line and the episode shaded."""
    if not points:
        return '<p class="muted">no scores recorded for this episode</p>'
    ml, mr, mt, mb = 48, 12, 12, 30
    t = [p[0] - start_ts for p in points]
    s = [p[1] for p in points]
    t_lo, t_hi = min(t), max(max(t), (end_ts - start_ts) if end_ts is not None else max(t))
    if t_hi - t_lo < 1e-6:
        t_lo, t_hi = t_lo - 0.5, t_hi + 0.5
    finite = [v for v in s if math.isfinite(v)] or [threshold]
    s_lo, s_hi = min(finite), max(finite)
    span = max(s_hi - s_lo, 0.05 * abs(s_hi), 1e-3)
    # The threshold is drawn to scale when it lies near the scores, else at the edge.
    near = s_lo - 2 * span <= threshold <= s_hi + 2 * span
    if near:
        s_lo, s_hi = min(s_lo, threshold), max(s_hi, threshold)
        span = max(s_hi - s_lo, 1e-3)
    lo, hi = s_lo - 0.08 * span, s_hi + 0.08 * span
    thr_y = threshold if near else (lo if threshold < lo else hi)

    def fx(v: float) -> float:
        return ml + (v - t_lo) / (t_hi - t_lo) * (width - ml - mr)

    def fy(v: float) -> float:
        return mt + (hi - v) / (hi - lo) * (height - mt - mb)

    ep_end = (end_ts - start_ts) if end_ts is not None else t_hi
    line = " ".join(
        f"{fx(a):.1f},{fy(b):.1f}" for a, b in zip(t, s, strict=True) if math.isfinite(b)
    )
    out = [
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="score over the episode">',
        f'<rect x="{fx(0.0):.1f}" y="{mt}" width="{max(0.0, fx(ep_end) - fx(0.0)):.1f}" '
        f'height="{height - mt - mb}" fill="#e0303022"><title>episode</title></rect>',
        f'<line x1="{ml}" y1="{height - mb}" x2="{width - mr}" y2="{height - mb}" stroke="#888"/>',
        f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{height - mb}" stroke="#888"/>',
        f'<line class="threshold" x1="{ml}" y1="{fy(thr_y):.1f}" x2="{width - mr}" '
        f'y2="{fy(thr_y):.1f}" stroke="#e03030" stroke-dasharray="6 4">'
        f"<title>threshold {threshold:.3f}</title></line>",
        f'<polyline points="{line}" fill="none" stroke="#3a8ee6" stroke-width="2"/>',
    ]
    for v in {s_lo, s_hi}:
        if abs(fy(v) - fy(thr_y)) > 12:
            out.append(
                f'<text x="{ml - 4}" y="{fy(v) + 4:.1f}" text-anchor="end" font-size="11" '
                f'fill="#bbb">{v:.2f}</text>'
            )
    for v, anchor in ((t_lo, "start"), (0.0, "middle"), (t_hi, "end")):
        if anchor == "middle" and min(abs(fx(0.0) - fx(t_lo)), abs(fx(t_hi) - fx(0.0))) < 40:
            continue
        out.append(
            f'<text x="{fx(v):.1f}" y="{height - mb + 16}" text-anchor="{anchor}" '
            f'font-size="11" fill="#bbb">{v:+.1f} s</text>'
        )
    label = f"threshold {threshold:.3f}" + ("" if near else " (off the scale)")
    above = fy(thr_y) - 4 if fy(thr_y) > mt + 14 else fy(thr_y) + 14
    out.append(
        f'<text x="{width - mr}" y="{above:.1f}" text-anchor="end" font-size="11" '
        f'fill="#e03030">{escape(label)}</text></svg>'
    )
    return "".join(out)


__all__ = ["score_plot_svg", "skeleton_svg", "thumbnail"]
