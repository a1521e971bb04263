"""The Pareto plot's labels: none overlaps another label, a point or the legend, and none is
clipped by the axes, even when many artifacts share one accuracy."""

from __future__ import annotations

import itertools

import pytest
from matplotlib.text import Text

from edgekit.report.data import ArtifactRow
from edgekit.report.plots import accuracy_vs_latency, pareto_figure

TARGETS = ("tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "tflite-int16x8",
           "onnx-fp32", "onnx-fp16", "onnx-dynamic", "onnx-int8", "ort")


def _row(target, p50, acc):
    return ArtifactRow(None, f"digits.{target}", target, "tflite", "fp32", "0" * 64, 1000,
                       {"p50": p50}, None, None, None, acc, 100, None, "litert 1")


def _boxes(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    [ax] = fig.axes
    labels = [t for t in ax.texts if t.get_text() in TARGETS]
    for t in labels:
        t.update_positions(r)
    return ax, r, labels, [Text.get_window_extent(t, r) for t in labels]


@pytest.mark.parametrize("case", ["same-accuracy", "corner", "spread"])
def test_pareto_labels_neither_overlap_nor_clip(case):
    if case == "same-accuracy":  # the demo's picture: nearly all artifacts at one accuracy
        rows = [_row(t, 0.05 + 0.004 * i, 0.983 if i % 4 else 0.98) for i, t in enumerate(TARGETS)]
    elif case == "corner":  # the slowest, most accurate point at the top-right corner
        rows = [_row(t, 0.1 * (i + 1), 0.90 + 0.01 * i) for i, t in enumerate(TARGETS)]
    else:  # a log-scale latency axis
        rows = [_row(t, 0.02 * 3 ** i, 0.5 + 0.05 * (i % 5)) for i, t in enumerate(TARGETS)]
    fig = pareto_figure(rows, "local")
    ax, r, labels, boxes = _boxes(fig)
    assert sorted(t.get_text() for t in labels) == sorted(TARGETS)
    frame = ax.get_window_extent(r)
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= box.y1 <= \
            frame.y1, (box, frame)
    for (a, ba), (b, bb) in itertools.combinations(zip(labels, boxes, strict=True), 2):
        assert not ba.overlaps(bb), (a.get_text(), b.get_text())
    legend = ax.get_legend().get_window_extent(r)
    assert not any(b.overlaps(legend) for b in boxes)
    points = [ax.transData.transform((row.latency["p50"], 100 * row.accuracy)) for row in rows]
    for box in boxes:
        assert not any(box.contains(x, y) for x, y in points)


def test_pareto_png_is_reproducible():
    rows = [_row(t, 0.05 + 0.004 * i, 0.98) for i, t in enumerate(TARGETS)]
    png = accuracy_vs_latency(rows, "local")
    assert png.startswith(b"\x89PNG") and png == accuracy_vs_latency(rows, "local")
