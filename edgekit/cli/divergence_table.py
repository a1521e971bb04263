"""`edgekit diagnose --device`: the device-vs-host layer table for people."""

from __future__ import annotations

from edgekit.cli.common import FitTable

ROWS_AFTER_DEPARTURE = 3  # rows shown past the first departing layer (the error it carries on)
MAX_ROWS = 40  # beyond it (and no departure): the first rows, and a pointer to --json


def _db(v, compared=True) -> str:
    if not compared:
        return "n/a"
    return "same" if v is None else f"{v:.1f}"


def divergence_summary(doc: dict) -> str:
    """One line: where the device departs from the host, or that it never does."""
    where = (f"{doc['device']} ({doc.get('runtime')} {doc.get('runtime_version')}, "
             f"{doc['samples']} samples, {doc['compared']} of {doc['tensor_count']} tensors)")
    first = doc.get("first_departure")
    if first is None:
        line = (f"on {where}: the device agrees with the host at every compared layer "
                f"(device vs host SQNR >= {doc['threshold_db']:g} dB)")
    else:
        line = (f"on {where}: the device departs from the host at {first['layer']} "
                f"({first['op_type']}): {first['device_sqnr_db']:.1f} dB < "
                f"{doc['threshold_db']:g} dB, earlier layers agree")
    return line + _kernels_note(doc) + (f". {doc['note']}" if doc.get("note") else "")


def _kernels_note(doc: dict) -> str:
    """What the per-layer copy could not see: the artifact's own fused int8 kernels."""
    kernels = doc.get("int8_kernels") or {}
    if kernels.get("artifact", 0) <= kernels.get("copy", 0):
        return ""
    outs = [o["device_sqnr_db"] for o in doc.get("artifact_outputs", [])
            if o["device_sqnr_db"] is not None]
    seen = (f"the artifact's outputs depart (device vs host {min(outs):.1f} dB)"
            if doc.get("artifact_departs") else
            "the artifact's outputs agree" + (f" (>= {min(outs):.1f} dB)" if outs else
                                              " (identical)"))
    return (f". The per-layer copy runs {kernels['copy']} fused int8 kernels where the artifact "
            f"runs {kernels['artifact']} (ONNX Runtime does not fuse a read-out tensor's layer); "
            f"{seen}" + (": the difference is in the fused int8 kernels"
                         if doc.get("artifact_departs") and doc.get("first_departure") is None
                         else ""))


def divergence_table(doc: dict) -> FitTable:
    """The layers in graph order: host-int8 vs float and device vs host SQNR (dB)."""
    rows = doc["layers"]
    first = doc.get("first_departure")
    if first is not None:
        shown = rows[:first["index"] + 1 + ROWS_AFTER_DEPARTURE]
    else:
        shown = rows[:MAX_ROWS]
    more = len(rows) - len(shown)
    table = FitTable(title=f"layers on {doc['device']} in graph order"
                     + (f" ({more} more in --json)" if more else ""))
    table.add_column("layer", wrap=True)
    table.add_column("op", wrap=True)
    table.add_column("int8 vs float dB", justify="right", short="int8/fp dB")
    table.add_column("device vs host dB", justify="right", short="dev/host dB")
    table.add_column("max |err|", justify="right")
    table.add_column("", justify="left")
    for r in shown:
        err = r["device_max_abs_error"]
        table.add_row(r["layer"], r["op_type"],
                      "" if r["quant_sqnr_db"] is None else f"{r['quant_sqnr_db']:.1f}",
                      _db(r["device_sqnr_db"], r["device_compared"]),
                      "" if err is None else f"{err:.3g}",
                      "departs" if first is not None and r["index"] == first["index"] else "")
    return table
