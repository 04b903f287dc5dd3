"""Figures of merit for a quality-against-cost curve: pure functions of points.

* ``hull``: the non-decreasing upper convex hull of (cost, quality) points.
* ``aiq``: RouterBench's average improvement in quality, the area under that hull with cost
  normalised to 0..1 between the cheapest and the best single model (quality 0 left of the hull).
* ``apgr``: RouteLLM's average performance gap recovered, the mean over normalised cost (or share of
  calls to the strong model) of ``(q - q_weak) / (q_strong - q_weak)`` along the hull.
* ``cost_to_reach``: the lowest cost of a point at or above a quality.

Usage::

    pts = [(0.1, 0.7), (0.5, 0.85), (4.7, 0.88)]
    aiq(pts, c_min=0.1, c_max=4.7)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Point = tuple[float, float]  # (cost or x, quality)


def hull(points: Sequence[Point]) -> list[Point]:
    """Upper convex hull of the points, kept only where quality rises with cost."""
    pts = sorted(set(points))
    upper: list[Point] = []
    for p in pts:
        while len(upper) >= 2 and _cross(upper[-2], upper[-1], p) >= 0:
            upper.pop()
        upper.append(p)
    rising: list[Point] = []
    for p in upper:
        if not rising or p[1] > rising[-1][1]:
            rising.append(p)
    return rising


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def hull_quality(points: Sequence[Point], x: np.ndarray) -> np.ndarray:
    """Quality of the hull at each ``x``: 0 left of its first point, flat right of its last."""
    h = hull(points)
    if not h:
        return np.zeros_like(x)
    xs = np.array([p[0] for p in h])
    qs = np.array([p[1] for p in h])
    out = np.interp(x, xs, qs)
    return np.where(x < xs[0] - 1e-15, 0.0, out)


def aiq(points: Sequence[Point], *, c_min: float, c_max: float, grid: int = 2001) -> float | None:
    """Area under the hull over cost in [c_min, c_max], divided by the range."""
    if not points or c_max <= c_min:
        return None
    x = np.linspace(c_min, c_max, grid)
    return float(np.trapezoid(hull_quality(points, x), x) / (c_max - c_min))


def apgr(
    points: Sequence[Point],
    *,
    x_weak: float,
    x_strong: float,
    q_weak: float,
    q_strong: float,
    grid: int = 2001,
) -> float | None:
    """Mean performance gap recovered along the hull between the weak and the strong model."""
    if not points or x_strong <= x_weak or q_strong <= q_weak:
        return None
    x = np.linspace(x_weak, x_strong, grid)
    pgr = (hull_quality(points, x) - q_weak) / (q_strong - q_weak)
    return float(np.trapezoid(pgr, x) / (x_strong - x_weak))


def cost_to_reach(points: Sequence[Point], quality: float) -> float | None:
    """Lowest cost among points reaching ``quality`` (a hair of tolerance for float sums)."""
    costs = [c for c, q in points if q >= quality - 1e-9]
    return min(costs) if costs else None


def cpt(
    points: Sequence[Point], *, x_weak: float, x_strong: float, q_weak: float, q_strong: float, share: float
) -> float | None:
    """RouteLLM's call-performance threshold: the lowest normalised x (0..1) on the hull at which
    ``share`` of the weak-to-strong quality gap is recovered."""
    if not points or x_strong <= x_weak or q_strong <= q_weak:
        return None
    target = q_weak + share * (q_strong - q_weak)
    prev: Point | None = None
    for x, q in hull(points):
        if q >= target - 1e-12:
            if prev is not None and q > prev[1]:  # hull points in between are reachable by mixing
                x = prev[0] + (target - prev[1]) / (q - prev[1]) * (x - prev[0])
            return max(0.0, (x - x_weak) / (x_strong - x_weak))
        prev = (x, q)
    return None
