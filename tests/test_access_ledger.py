"""The spend ledger: journaled before it returns, written in batches, replayed after a crash."""

from __future__ import annotations

import os
from pathlib import Path

from wattwise.access.ledger import SpendLedger
from wattwise.store.access import AccessStore
from wattwise.store.sql import TraceStore


def test_rows_reach_the_store_in_batches(store: TraceStore, tmp_path: Path) -> None:
    access = AccessStore(store=store)
    ledger = SpendLedger(store=access, directory=tmp_path / "j", interval_s=0.01)
    ledger.start()
    for i in range(50):
        ledger.reserve(request_id=f"r{i}", key_id="k", team="t", ts=100.0 + i, usd=1.0, j=10.0)
    ledger.settle(request_id="r0", usd=0.25, j=2.0, j_unknown=False)
    ledger.flush()
    assert access.spent(key_id="k") == (49.25, 492.0)
    assert access.spent(team="t", since=140.0) == (10.0, 100.0)
    ledger.close()
    assert list((tmp_path / "j").iterdir()) == []  # everything stored: no journal left


def test_a_crashed_process_journal_is_replayed_once(store: TraceStore, tmp_path: Path) -> None:
    access = AccessStore(store=store)
    crashed = SpendLedger(store=access, directory=tmp_path, interval_s=3600)  # never writes on its own
    crashed.start()
    crashed.reserve(request_id="a", key_id="k", team=None, ts=1.0, usd=0.5, j=5.0)
    crashed.reserve(request_id="b", key_id="k", team=None, ts=2.0, usd=0.5, j=5.0)
    crashed.settle(request_id="a", usd=0.1, j=1.0, j_unknown=False)
    # kill -9: the thread and the queue die with the process; the journal lines and their lock's end remain.
    crashed._stop.set()
    assert crashed._thread is not None
    crashed._thread.join()
    assert crashed._fd is not None
    os.close(crashed._fd)
    assert access.spent(key_id="k") == (0.0, 0.0)

    restarted = SpendLedger(store=access, directory=tmp_path)
    restarted.start()  # b, in flight at the kill, counts at its worst case
    assert access.spent(key_id="k") == (0.6, 6.0)
    restarted.close()
    again = SpendLedger(store=access, directory=tmp_path)
    again.start()
    assert access.spent(key_id="k") == (0.6, 6.0)  # nothing replayed twice
    again.close()


def test_a_live_process_journal_is_left_alone(store: TraceStore, tmp_path: Path) -> None:
    access = AccessStore(store=store)
    live = SpendLedger(store=access, directory=tmp_path, interval_s=3600)
    live.start()
    live.reserve(request_id="x", key_id="k", team=None, ts=1.0, usd=1.0, j=1.0)
    other = SpendLedger(store=access, directory=tmp_path)
    other.start()
    assert access.spent(key_id="k") == (0.0, 0.0)
    other.close()
    live.close()
    assert access.spent(key_id="k") == (1.0, 1.0)


def test_without_a_journal_each_row_is_written_at_once(store: TraceStore) -> None:
    access = AccessStore(store=store)
    ledger = SpendLedger(store=access, directory=None)
    ledger.start()
    ledger.reserve(request_id="z", key_id="k", team=None, ts=1.0, usd=2.0, j=3.0)
    assert not ledger.journaled and access.spent(key_id="k") == (2.0, 3.0)
