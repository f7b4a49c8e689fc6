"""SQLite files that several processes open at once (access log, range cache, KV store, ledger)."""

from __future__ import annotations

import sqlite3
import time

WAIT_S = 60.0  # how long a connection waits for another process's lock


def connect(path, **kwargs) -> sqlite3.Connection:
    """`sqlite3.connect(path, timeout=WAIT_S, **kwargs)` in WAL mode.

    A process that finds another switching a new file to WAL at the same moment gets "database is
    locked" at once (SQLite does not wait the connection's timeout for that lock), so the switch
    is tried again for up to WAIT_S.

    Raises:
        sqlite3.Error: the file cannot be opened, or stays locked.
    """
    db = sqlite3.connect(path, timeout=WAIT_S, **kwargs)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return db
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.05)
