"""What the store applied but has not confirmed durable, on a fake clock; and
the put-back that reads it again from a real WAL."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import pytest

from memoryd.backlog import Backlog
from memoryd.durability import PutBack, Restorer, RetainSettings, Unconfirmed, describe_put_back
from memoryd.ops import Entry
from memoryd.wal import Wal, WalSettings
from tests.fakeclock import FakeClock
from tests.test_stores import NOW, put

RETAIN = RetainSettings(max_bytes=1000, max_age_s=60.0)


async def test_writes_are_confirmed_by_the_time_the_store_says() -> None:
    clock = FakeClock()
    unconfirmed = Unconfirmed(RETAIN, clock=clock)
    unconfirmed.applied(1, 3, 30)
    applied_at = clock.time()
    await clock.advance(1.0)
    unconfirmed.applied(4, 4, 10)
    assert unconfirmed.confirmed_seq == 0 and len(unconfirmed) == 4
    unconfirmed.confirm(applied_at)  # "durable before the moment 1-3 were applied": not them
    assert unconfirmed.confirmed_seq == 0
    unconfirmed.confirm(applied_at + 0.001)
    assert unconfirmed.confirmed_seq == 3 and len(unconfirmed) == 1 and unconfirmed.bytes == 10
    unconfirmed.confirm(math.inf)
    unconfirmed.applied(5, 6, 10)  # a store that confirms at once: nothing waits
    assert unconfirmed.confirmed_seq == 6 and len(unconfirmed) == 0


async def test_retention_lets_the_oldest_go_by_age_and_by_bytes() -> None:
    clock = FakeClock()
    unconfirmed = Unconfirmed(RETAIN, clock=clock)
    unconfirmed.applied(1, 1, 100)
    await clock.advance(30)
    unconfirmed.applied(2, 2, 950)  # over max_bytes together: the oldest goes
    unconfirmed.release_beyond_retention()
    assert (unconfirmed.confirmed_seq, unconfirmed.released) == (1, 1)
    await clock.advance(61)
    unconfirmed.release_beyond_retention()
    assert (unconfirmed.confirmed_seq, unconfirmed.released, len(unconfirmed)) == (2, 2, 0)


def test_put_back_takes_everything_after_the_confirmed_point() -> None:
    clock = FakeClock()
    unconfirmed = Unconfirmed(RETAIN, clock=clock)
    unconfirmed.resume(10)
    unconfirmed.applied(11, 20, 100)
    unconfirmed.applied(21, 25, 50)
    put_back = unconfirmed.put_back(applied_seq=25)
    assert (put_back.first_seq, put_back.last_seq, put_back.count) == (11, 25, 15)
    unconfirmed.restored(put_back)  # queued to be applied again
    assert len(unconfirmed) == 0 and unconfirmed.confirmed_seq == 10
    assert "15 writes not yet confirmed durable were applied again" in describe_put_back(put_back)


async def test_the_confirmed_point_never_passes_a_batch_still_unconfirmed() -> None:
    """After a put-back the batch that was in flight is recorded before the older
    writes put back: confirming it must not move the checkpoint past them."""
    clock = FakeClock()
    unconfirmed = Unconfirmed(RETAIN, clock=clock)
    unconfirmed.applied(30, 40, 10)  # in flight during the put-back of 1-29
    when = clock.time()
    await clock.advance(1.0)
    unconfirmed.applied(1, 29, 10)
    unconfirmed.confirm(when + 0.0001)  # only the first is confirmed
    assert unconfirmed.confirmed_seq == 0


def test_what_the_alert_says_of_writes_past_retention() -> None:
    put_back = PutBack(5, 9, 1_700_000_000.0, released=3, released_until_s=1_699_999_000.0)
    text = describe_put_back(put_back)
    assert "5 writes not yet confirmed durable were applied again" in text
    assert "3 writes applied up to" in text and "may be lost" in text


async def test_batches_applied_within_a_second_are_kept_as_one() -> None:
    """A store that never confirms (no persistence) must not cost memory per batch:
    an hour of single-write batches is 3600 numbers, not millions."""
    clock = FakeClock()
    unconfirmed = Unconfirmed(RetainSettings(max_bytes=1 << 30, max_age_s=3600), clock=clock)
    for seq in range(1, 10_001):
        unconfirmed.applied(seq, seq, 10)
        if seq % 1000 == 0:
            await clock.advance(0.5)
    assert len(unconfirmed) == 10_000 and unconfirmed.bytes == 100_000
    assert len(unconfirmed._batches) <= 6
    unconfirmed.applied(20_000, 20_000, 10)  # not next in line (put back): its own
    assert len(unconfirmed._batches) <= 7


async def test_a_second_put_back_covers_a_batch_applied_after_older_ones() -> None:
    """After a put-back of 11-20, the batch 21-30 that was in flight lands, then 11-20
    are applied again: the backlog's newest applied is 20, but 21-30 are unconfirmed too."""
    clock = FakeClock()
    unconfirmed = Unconfirmed(RETAIN, clock=clock)
    unconfirmed.resume(10)
    unconfirmed.applied(11, 20, 10)
    unconfirmed.restored(unconfirmed.put_back(applied_seq=20))
    unconfirmed.applied(21, 30, 10)  # the batch that was in flight
    await clock.advance(2.0)
    unconfirmed.applied(11, 20, 10)  # put back, applied again
    second = unconfirmed.put_back(applied_seq=20)
    assert (second.first_seq, second.last_seq) == (11, 30)


async def test_writes_being_put_back_stay_unconfirmed_until_queued_again() -> None:
    """Between taking them out and queueing them again they are read from the WAL:
    status must not say "nothing unconfirmed" then, and a batch applied meanwhile
    and confirmed must not move the confirmed point past them."""
    clock = FakeClock()
    unconfirmed = Unconfirmed(RETAIN, durable_until_s=math.inf, clock=clock)
    unconfirmed.resume(10)
    unconfirmed.confirm(-math.inf)
    unconfirmed.applied(11, 20, 100)
    put_back = unconfirmed.put_back(applied_seq=20)
    assert len(unconfirmed) == 10 and unconfirmed.describe()["unconfirmed_bytes"] == 100
    unconfirmed.applied(21, 22, 10)  # in flight to the new server
    unconfirmed.confirm(math.inf)
    assert unconfirmed.confirmed_seq == 10 and len(unconfirmed) == 10
    unconfirmed.restored(put_back)
    assert unconfirmed.confirmed_seq == 22 and len(unconfirmed) == 0


def test_after_a_put_back_nothing_is_confirmed_at_once_until_the_store_says_so() -> None:
    """A server that confirmed each write as applied (AOF always) is not the one
    that took over: what it said holds no more."""
    unconfirmed = Unconfirmed(RETAIN, durable_until_s=math.inf, clock=FakeClock())
    unconfirmed.resume(10)
    unconfirmed.restored(unconfirmed.put_back(applied_seq=10))
    unconfirmed.applied(11, 12, 10)
    assert unconfirmed.confirmed_seq == 10 and len(unconfirmed) == 2


@pytest.fixture
async def wal(tmp_path: Path) -> Wal:
    wal = Wal(
        tmp_path / "wal",
        WalSettings(fsync="always", max_bytes=1 << 26, segment_bytes=1 << 20),
        on_durable=lambda entries: None,
    )
    wal.open()
    return wal


async def test_status_counts_the_writes_a_put_back_is_reading_from_the_wal(
    wal: Wal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The regression behind a lost-looking Sentinel failover: status said nothing
    was unconfirmed and nothing queued while the put-back was reading the WAL."""
    seqs = await wal.append([put(f"r{n}", created_at=NOW) for n in range(5)])
    unconfirmed = Unconfirmed(RETAIN, clock=FakeClock())
    unconfirmed.applied(seqs[0], seqs[-1], 50)
    backlog = Backlog()
    reading, go_on = threading.Event(), threading.Event()
    read_back = wal.read_back

    def slow_read_back(first_seq: int, last_seq: int) -> list[Entry]:
        reading.set()
        go_on.wait(5)
        return read_back(first_seq, last_seq)

    monkeypatch.setattr(wal, "read_back", slow_read_back)
    restoring = asyncio.create_task(Restorer(unconfirmed, backlog, wal).put_back("a test"))
    await asyncio.get_running_loop().run_in_executor(None, reading.wait, 5)
    assert len(unconfirmed) + len(backlog) == 5, "the writes being put back are counted"
    go_on.set()
    put_back = await restoring
    assert put_back.count == 5 and len(backlog) == 5 and len(unconfirmed) == 0
    await wal.close()
