"""Plots for the HTML report, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

PNGs are written without a timestamp or software tag, so the same results give the same bytes.
"""

from __future__ import annotations

import io
from typing import Optional

from edgekit.report.data import ArtifactRow

_DPI = 100
#: Latency axes switch to a log scale when the slowest run is this many times the fastest.
LOG_SCALE_RATIO = 20


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on CI machines or boards)."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on CI machines or boards
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes at the report's resolution, without a software tag; the figure is
    closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(fig)
    return buf.getvalue()


def latency_distribution(rows: list[ArtifactRow], device: str) -> Optional[bytes]:
    """Per artifact: min–max whisker, p50–p90 box, p99 tick and mean dot (or a violin of the raw
    samples when the run document carries ``latency_ms.samples``).

    Returns:
        PNG bytes, or None when no row has latency figures.
    """
    rows = [r for r in rows if r.latency.get("p50") is not None]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    for i, r in enumerate(rows):
        lat = r.latency
        samples = lat.get("samples")
        if isinstance(samples, list) and len(samples) > 1:
            ax.violinplot([samples], positions=[i], vert=False, showextrema=False, widths=0.7)
        ax.hlines(i, lat.get("min", lat["p50"]), lat.get("max", lat["p50"]), color="#555", lw=1)
        ax.barh(i, (lat.get("p90") or lat["p50"]) - lat["p50"], left=lat["p50"], height=0.5,
                color="#4c72b0", alpha=0.8, label="p50–p90" if i == 0 else None)
        ax.vlines(lat["p50"], i - 0.3, i + 0.3, color="black", lw=2, label="p50" if i == 0 else None)
        if lat.get("p99") is not None:
            ax.vlines(lat["p99"], i - 0.2, i + 0.2, color="#c44e52", lw=2,
                      label="p99" if i == 0 else None)
        if lat.get("mean") is not None:
            ax.plot(lat["mean"], i, "o", color="#dd8452", ms=4, label="mean" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [r.label for r in rows])
    ax.invert_yaxis()
    lo = min(r.latency.get("min") or r.latency["p50"] for r in rows)
    hi = max(r.latency.get("max") or r.latency["p50"] for r in rows)
    if lo > 0 and hi / lo > LOG_SCALE_RATIO:
        # One slow tail (a scheduler hiccup on a shared CPU) would squash every box to a line.
        ax.set_xscale("log")
        ax.set_xlabel("latency per inference (ms, log scale); whiskers: min–max")
    else:
        ax.set_xlim(left=0)
        ax.set_xlabel("latency per inference (ms); whiskers: min–max")
    ax.set_title(f"Latency distribution on {device}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return png_bytes(fig)


def pareto_points(rows: list[ArtifactRow]) -> list[tuple[str, float, float]]:
    """(label, p50 ms, accuracy) of every row with both figures; accuracy falls back to the
    manifest's accuracy when the device had no labels."""
    points = []
    for r in rows:
        acc = r.accuracy if r.accuracy is not None else (r.fidelity or {}).get("accuracy")
        if r.latency.get("p50") is not None and acc is not None:
            points.append((r.label, float(r.latency["p50"]), float(acc)))
    return points


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[1], -p[2])):
        if p[2] > best:
            front.append(p)
            best = p[2]
    return front


def accuracy_vs_latency(rows: list[ArtifactRow], device: str) -> Optional[bytes]:
    """Accuracy against p50 latency, with the Pareto front drawn as a step line.

    Returns:
        PNG bytes, or None when no row has both figures.
    """
    fig = pareto_figure(rows, device)
    return None if fig is None else png_bytes(fig)


def pareto_figure(rows: list[ArtifactRow], device: str):
    """The accuracy-vs-latency figure (``accuracy_vs_latency`` without the PNG), labels placed
    by :func:`place_labels`; None when no row has both figures."""
    points = pareto_points(rows)
    if not points:
        return None
    front = pareto_front(points)
    on_front = {p[0] for p in front}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    points = sorted(points, key=lambda p: p[1])
    for label, x, y in points:
        ax.plot(x, 100 * y, "o", color="#c44e52" if label in on_front else "#8c8c8c", ms=6)
    ax.step([p[1] for p in front], [100 * p[2] for p in front], where="post", color="#c44e52",
            lw=1.5, label="Pareto front")
    xs = [p[1] for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > LOG_SCALE_RATIO:
        ax.set_xscale("log")
    # Room around the points for their labels (the axes' default 5 % puts edge labels outside).
    ax.margins(x=0.12, y=0.25)
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Accuracy vs latency on {device}")
    ax.grid(alpha=0.3)
    legend = ax.legend(loc="lower right", fontsize=8)
    place_labels(ax, [(label, x, 100 * y) for label, x, y in points], avoid=[legend])
    return fig


#: Where a label may sit, in points from its point: beside it first, then stacked further up and
#: down (equal accuracies put many points on one line), left of it last.
_LABEL_OFFSETS = [(dx, dy) for k in range(12) for dy in ((3 + 11 * k), -(3 + 11 * k))
                  for dx in (6, -6)]


def place_labels(ax, points, *, avoid=(), fontsize: int = 8) -> list:
    """Label each point where the label overlaps no other label, no point and no ``avoid``
    artist (the legend), and stays inside the axes: the nearest free spot of
    ``_LABEL_OFFSETS``; a label moved away from its point gets a thin leader line. When no spot
    is free, the one inside the axes with the fewest overlaps is used.

    Args:
        ax: axes whose limits and scales are final.
        points: ``(label, x, y)`` in data coordinates.
        avoid: artists labels must not cover.
        fontsize: label size in points.

    Returns:
        The annotations, in ``points`` order.
    """
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()  # final limits and transforms, and a renderer to measure text with
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 4 * fig.dpi / 72  # a marker's half-size, in pixels
    taken = [a.get_window_extent(renderer) for a in avoid]
    for _, x, y in points:
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - pad, py - pad, px + pad, py + pad))
    placed = []
    for label, x, y in points:
        best, best_score = None, None
        for i, (dx, dy) in enumerate(_LABEL_OFFSETS):
            ann = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points",
                              fontsize=fontsize, ha="left" if dx > 0 else "right",
                              va="bottom" if dy > 0 else "top")
            ann.update_positions(renderer)  # where the offset puts it (else done at draw)
            box = Text.get_window_extent(ann, renderer)  # the text alone, without any leader
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
                      and box.y1 <= frame.y1)
            score = (not inside, sum(box.overlaps(t) for t in taken), i)
            ann.remove()
            if best_score is None or score < best_score:
                best, best_score = (dx, dy, box), score
            if score[:2] == (False, 0):
                break
        dx, dy, box = best
        far = abs(dy) > 3
        ann = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points",
                          fontsize=fontsize, ha="left" if dx > 0 else "right",
                          va="bottom" if dy > 0 else "top",
                          arrowprops={"arrowstyle": "-", "color": "#8c8c8c", "lw": 0.6,
                                      "shrinkA": 0, "shrinkB": 4} if far else None)
        taken.append(box)
        placed.append(ann)
    return placed


def size_bars(rows: list[ArtifactRow], device: str) -> Optional[bytes]:
    """Artifact sizes in KiB, one bar each, with the size printed on the bar.

    Returns:
        PNG bytes, or None without rows.
    """
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    kib = [r.bytes / 1024 for r in rows]
    colors = ["#4c72b0" if (r.format or "") == "tflite" else "#55a868" for r in rows]
    ax.barh(range(len(rows)), kib, color=colors)
    for i, v in enumerate(kib):
        ax.text(v, i, f" {v:,.1f}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r.label for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("size (KiB); blue: TFLite, green: ONNX/ORT")
    ax.set_title(f"Artifact size ({device})")
    ax.set_xlim(0, max(kib) * 1.18 or 1)
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)
