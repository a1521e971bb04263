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
        return (f"on {where}: the device agrees with the host at every compared layer "
                f"(device vs host SQNR >= {doc['threshold_db']:g} dB)")
    return (f"on {where}: the device departs from the host at {first['layer']} "
            f"({first['op_type']}): {first['device_sqnr_db']:.1f} dB < {doc['threshold_db']:g} dB"
            f", earlier layers agree")


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
