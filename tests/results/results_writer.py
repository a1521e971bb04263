"""A results writer process for the concurrency tests: ``python results_writer.py DB DEVICE N
[HOLD_AT MARKER]`` adds N results for DEVICE to DB, printing each committed result's uid.

With HOLD_AT, the HOLD_AT-th result (1-based) is inserted and then held uncommitted: the
writer writes that row's uid to MARKER and sleeps until it is killed, so a test can kill it
mid-transaction. The hold is an SQLAlchemy event on this process's engine: edgekit itself has
no test hook.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from results_sample import make
from sqlalchemy import event

from edgekit.results import ResultStore
from edgekit.results.model import new_uid


def main() -> None:
    db, device, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    hold_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    marker = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    with ResultStore(db) as store:
        for i in range(n):
            result = make(float(i + 1), device=device)
            result.uid = new_uid()
            if i + 1 == hold_at:
                def hold(conn, cursor, statement, *args, uid=result.uid):
                    if statement.startswith("INSERT INTO results"):
                        marker.write_text(uid)
                        time.sleep(600)  # inside the open transaction, until SIGKILL

                event.listen(store.engine, "after_cursor_execute", hold)
            store.add(result)
            print(result.uid, flush=True)
            time.sleep(0.01)  # the other writer's turn, so the two interleave


if __name__ == "__main__":
    main()
