"""Tables fit: in an 80-column terminal no line is wider than 80 and no cell is elided with "…";
in a pipe every row is printed whole on one line, however wide."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
from rich.console import Console

from edgekit.cli import common
from edgekit.cli.common import FitTable


def render(table, *, terminal: bool, width: int = 80) -> str:
    """``table`` as the CLI prints it, on a terminal or a pipe of ``width`` (COLUMNS) columns."""
    buf = io.StringIO()
    out = Console(file=buf, width=width, force_terminal=terminal, color_system=None,
                  legacy_windows=False)
    common.print_table(table, out)
    return buf.getvalue()


def cells(table) -> list[list[str]]:
    return [[str(c) for c in column._cells] for column in table.columns]


def assert_fits_terminal(table, width: int = 80, whole_words: bool = True) -> str:
    text = render(table, terminal=True, width=width)
    widest = max(len(line) for line in text.splitlines())
    assert widest <= width, text
    assert "…" not in text, text
    words = set(text.split())
    for column in table.columns:  # every word of every cell survives (wrapped, never cut)
        free_text = column.meta["wrap"]
        for cell in column._cells:
            for word in _plain(str(cell)).split():
                if whole_words and not (free_text and len(word) > 8):
                    assert word in words, (word, text)
                else:  # a long word in a narrow column may break across lines: its start shows
                    assert word[:min(len(word), 4)] in text, (word, text)
    return text


def assert_whole_rows_in_pipe(table, width: int = 80) -> str:
    text = render(table, terminal=False, width=width)
    assert "…" not in text, text
    lines = text.splitlines()
    rows = list(zip(*cells(table), strict=True))
    for row in rows:  # a row on one line, each cell in full and in order
        plain = [_plain(c) for c in row]
        first = next(c for c in plain if c)
        line = next((ln for ln in lines if first in ln and all(c in ln for c in plain)), None)
        assert line is not None, (row, text)
    return text


def _plain(cell: str) -> str:
    from rich.text import Text

    return Text.from_markup(cell).plain


# --- real tables, built by the commands' own functions ----------------------------------------

def targets_table():
    from edgekit.cli.convert_cmds import targets_table as build

    return build()


def advice_table(monkeypatch):
    """The `edgekit advise` table, captured from ``print_advice`` (rows as a device gives them)."""
    from edgekit.cli import advise_cmd
    from edgekit.search.advisor import Advice, AdviceRow

    def row(recipe, target, fmt, precision, p50, nbytes, rank=None, **kw):
        return AdviceRow(recipe, target, fmt, precision, baseline="tflite-fp32", bytes=nbytes,
                         p50_ms=p50, p90_ms=p50 * 1.1, accuracy=0.9, accuracy_source="device",
                         source_accuracy=0.9, accuracy_drop=0.0, gate_passed=True,
                         within_budget=True, rank=rank, size_ratio=nbytes / 1_046_000,
                         latency_ratio=p50 / 10.0, peak_rss_bytes=48 << 20, **kw)

    rows = [row("tflite-int8", "tflite-int8", "tflite", "int8", 4.93, 301_000, rank=1),
            row("tflite-fp32", "tflite-fp32", "tflite", "fp32", 10.0, 1_046_000, rank=2),
            row("onnx-int8-u8s8", "onnx-int8", "onnx", "int8", 8.12, 350_000, rank=3),
            AdviceRow("tflite-int16x8", "tflite-int16x8", "tflite", "int16x8", gate_passed=False,
                      failed_stage="gate",
                      gate_miss="missed the fidelity gate on 297 samples: accuracy drop 3.00 "
                                "points > 1 (87.00% vs source 90.00%)")]
    advice = Advice("mobilenet_v2_emotions.keras", "ssh://pi@raspberrypi.local", "latency", 1.0,
                    rows, rows[0], [], out="/tmp/advice")
    printed = []
    monkeypatch.setattr(advise_cmd, "print_table", printed.append)
    monkeypatch.setattr(advise_cmd, "console", Console(file=io.StringIO()))
    advise_cmd.print_advice(advice)
    return printed[0]


def profile_like_tables():
    """`edgekit prune`'s cost table and the size table of `cluster` / `prune --lottery`."""
    from edgekit.cli.compress_cmds import size_table
    from edgekit.cli.train_cmds import _cost_table

    class Prof:
        def __init__(self, params, macs):
            self.params, self.macs, self.fp32_bytes = params, macs, params * 4

    cost = _cost_table("pruning", [("original", Prof(3_504_872, 300_774_272)),
                                   ("pruned", Prof(1_902_311, 151_220_004))])
    sizes = {"bytes": 14_023_488, "gzip_bytes": 12_933_001, "zstd_bytes": 12_101_334}
    small = {"bytes": 14_023_488, "gzip_bytes": 3_020_112, "zstd_bytes": 2_803_221}
    size = size_table("lottery ticket: 80.0% zeros in 53 kernels",
                      {"source_sizes": sizes, "sizes": small})
    return [cost, size]


def bench_table(monkeypatch):
    """`edgekit bench` / the demo's results table: the one that read ``loc… dig… ai_…``."""
    from edgekit.cli import bench_cmds
    from edgekit.results import Result

    def result(i, name, target, runtime, p50, ok=True, error=None):
        metrics = {"runtime": runtime, "latency_ms": {"p50": p50, "p90": p50 * 1.2},
                   "init_ms": 3.25, "memory": {"peak_rss_bytes": 61 << 20},
                   "accuracy": {"top1": 0.9712}} if ok else None
        return Result("local", {"name": name, "target": target}, {"runs": 100}, ok, error,
                      metrics, upload_bytes=123_456, id=i)

    results = [result(1, "digits.tflite-fp32.tflite", "tflite-fp32", "ai_edge_litert", 0.0213),
               result(2, "digits.tflite-int8.tflite", "tflite-int8", "ai_edge_litert", 0.0101),
               result(3, "digits.onnx-int8.onnx", "onnx-int8", "onnxruntime", 0.0309),
               result(4, "digits.ort", "ort", "", 0, ok=False,
                      error="numpy is not installed on this Python (/usr/bin/python3)")]
    printed = []
    monkeypatch.setattr(bench_cmds, "print_table", printed.append)
    bench_cmds._print_results(results, "benchmark on local")
    return printed[0]


def test_bench_results_table_fits_and_pipes_whole(monkeypatch):
    table = bench_table(monkeypatch)
    text = assert_fits_terminal(table)
    assert "local" in text.split() and "0.0213" in text  # not "loc…" and "0.00…"
    text = assert_whole_rows_in_pipe(table)
    assert "digits.tflite-int8.tflite (tflite-int8)" in text
    assert "numpy is not installed on this Python" in text


def test_targets_table_fits_80_columns_with_a_readable_description():
    table = targets_table()
    text = assert_fits_terminal(table)
    # The description column keeps whole words of at least a few per line, not 4 characters.
    line = next(ln for ln in text.splitlines() if ln.startswith("tflite-fp32"))
    assert "TFLite, float32" in line, text


def test_targets_table_in_a_pipe_has_whole_rows():
    text = assert_whole_rows_in_pipe(targets_table())
    assert max(len(ln) for ln in text.splitlines()) > 80  # wider than COLUMNS: not cropped


def test_advise_table_fits_and_pipes_whole(monkeypatch):
    table = advice_table(monkeypatch)
    assert_fits_terminal(table)
    text = assert_whole_rows_in_pipe(table)
    assert "missed the fidelity gate on 297 samples" in text


@pytest.mark.parametrize("which", [0, 1])
def test_size_tables_fit_and_pipe_whole(which):
    table = profile_like_tables()[which]
    assert_fits_terminal(table)
    assert_fits_terminal(table, width=40, whole_words=False)  # too narrow: cells break
    assert_whole_rows_in_pipe(table)


def test_a_table_too_wide_for_any_layout_breaks_cells_but_never_elides():
    table = FitTable(title="t")
    for i in range(12):
        table.add_column(f"column number {i}")
    table.add_row(*[f"value-{i}-" + "x" * 12 for i in range(12)])
    text = assert_fits_terminal(table, whole_words=False)
    assert text.count("value") == 12, text  # every cell is there, broken across lines
    assert text.count("x") >= 12 * 12, text  # ... with all of its characters
    assert_whole_rows_in_pipe(table)


@pytest.mark.slow
def test_artifacts_table_of_a_real_conversion(digits_cnn, tmp_path):
    import edgekit
    from edgekit.cli.convert_cmds import artifact_table

    artifacts = edgekit.convert(digits_cnn.keras, ["tflite-fp32", "tflite-int8", "onnx-int8"],
                                calibration=digits_cnn.calibration, out=tmp_path / "out")
    table = artifact_table(artifacts, {"tflite-int16x8": "failed its gate"})
    text = assert_fits_terminal(table)
    assert "agree" in text and "classification" in text
    assert_whole_rows_in_pipe(table)


# --- the real command, on a real terminal and in a real pipe -----------------------------------

def _edgekit_on_pty(*argv, columns: int) -> str:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "dumb"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli.main", *argv], stdin=slave,
                            stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0
    return out.decode().replace("\r\n", "\n")


def test_edgekit_targets_on_an_80_column_terminal():
    from converters.registry import TARGETS

    text = _edgekit_on_pty("targets", columns=80)
    assert max(len(ln) for ln in text.splitlines()) <= 80, text
    assert "…" not in text
    for name in TARGETS:
        assert any(ln.startswith(name + " ") for ln in text.splitlines()), (name, text)


def test_edgekit_targets_in_a_pipe_prints_each_target_on_one_line():
    from converters.registry import TARGETS

    env = dict(os.environ, COLUMNS="80")
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "targets"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stderr
    for t in TARGETS.values():
        assert any(t.name in ln and t.summary in ln for ln in proc.stderr.splitlines()), t.name
