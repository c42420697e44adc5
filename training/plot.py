"""Line plots as PNG files with OpenCV alone (a dependency already; matplotlib is not)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import cv2
import numpy as np

from .files import atomic_write_bytes

WIDTH, HEIGHT = 800, 480
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 20, 40, 60
TICKS = 5
FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR colours, one per series, readable on white.
COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]
BLACK, GREY, WHITE = (0, 0, 0), (200, 200, 200), (255, 255, 255)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start)."""
    sums = np.cumsum(np.asarray(values, dtype=np.float64))
    out = []
    for i in range(len(values)):
        lo = i - window
        out.append((sums[i] - (sums[lo] if lo >= 0 else 0.0)) / (i - max(lo, -1)))
    return out


def _nice(value: float) -> str:
    return f"{value:.3g}"


def render_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    log_y: bool = False,
) -> np.ndarray:
    """An HxWx3 uint8 BGR image plotting each series {name: (xs, ys)}."""
    image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    points = [(float(x), float(y)) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(float(y))]
    if log_y:
        points = [(x, y) for x, y in points if y > 0]
    if not points:
        cv2.putText(image, f"{title}: no data", (MARGIN_LEFT, HEIGHT // 2), FONT, 0.6, BLACK, 1, cv2.LINE_AA)
        return image
    transform = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = y_range or (min(p[1] for p in points), max(p[1] for p in points))
    y_lo, y_hi = transform(y_lo), transform(y_hi)
    x_hi, y_hi = (x_hi if x_hi > x_lo else x_lo + 1), (y_hi if y_hi > y_lo else y_lo + 1e-9)
    left, right, top, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM

    def to_pixel(x: float, y: float) -> tuple[int, int]:
        px = left + (x - x_lo) / (x_hi - x_lo) * (right - left)
        py = bottom - (transform(y) - y_lo) / (y_hi - y_lo) * (bottom - top)
        return int(round(px)), int(round(min(max(py, top), bottom)))

    for i in range(TICKS + 1):
        fx, fy = x_lo + (x_hi - x_lo) * i / TICKS, y_lo + (y_hi - y_lo) * i / TICKS
        px = left + (right - left) * i // TICKS
        py = bottom - (bottom - top) * i // TICKS
        cv2.line(image, (px, top), (px, bottom), GREY, 1)
        cv2.line(image, (left, py), (right, py), GREY, 1)
        cv2.putText(image, _nice(fx), (px - 15, bottom + 18), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
        cv2.putText(image, _nice(10**fy if log_y else fy), (5, py + 4), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (right, bottom), BLACK, 1)
    cv2.putText(image, title, (left, 25), FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, x_label, ((left + right) // 2 - 30, HEIGHT - 15), FONT, 0.5, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, y_label, (5, top - 8), FONT, 0.45, BLACK, 1, cv2.LINE_AA)

    for index, (name, (xs, ys)) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        pts = [to_pixel(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(float(y)) and (not log_y or y > 0)]
        if len(pts) > 1:
            cv2.polylines(image, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
        for pt in pts if len(pts) <= 40 else []:
            cv2.circle(image, pt, 3, colour, -1, cv2.LINE_AA)
        ly = top + 20 + 20 * index
        cv2.line(image, (right - 230, ly - 4), (right - 205, ly - 4), colour, 2)
        cv2.putText(image, name, (right - 200, ly), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    return image


def save_png(path: str, image_bgr: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the plot for '{path}'")
    atomic_write_bytes(path, encoded.tobytes())


def save_loss_curve(path: str, losses: Sequence[float], title: str = "ControlNet training loss") -> None:
    """The per-step L2 loss and its moving average (window: a tenth of the run, at least 1)."""
    steps = list(range(1, len(losses) + 1))
    window = max(1, len(losses) // 10)
    series = {"loss per step": (steps, losses), f"mean of last {window}": (steps, moving_average(losses, window))}
    save_png(path, render_curves(series, title, "optimizer step", "L2 loss"))
