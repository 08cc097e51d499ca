"""Every method of the protocol, end to end: the real daemon, its socket, the real client.

Each test runs against both stores (``store_kind``: local SQLite and Redis);
tests that look inside Redis itself use the ``redis_env`` daemon.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import memoryd
import memoryd_client
from memoryd.stores.base import APPLIED_KEPT_S
from memoryd_client import errors, wire
from tests import redis_view
from tests.daemons import TRIM_MAX_MEMORIES, Env, eventually, new_agent
from tests.harness import Daemon, RedisServer, running_daemon

RECORD_FIELDS = {
    "id",
    "agent_id",
    "type",
    "content",
    "author",
    "importance",
    "tags",
    "metadata",
    "created_at",
    "expires_at",
}
DEFAULT_TTL_S = 604_800

CJK_TEXT = (
    "圆桌会议开始了。手工艺人首先发言，他认为这把椅子应该采用传统的榫卯结构，不用一颗钉子，"
    "这样既坚固又便于日后维修。消费者代表则关心价格和舒适度，她说家里有老人和孩子，"
    "椅子的高度和扶手的弧度都很重要。制造商提出，如果要批量生产，榫卯结构的成本太高，"
    "建议在关键部位使用金属连接件，同时保留木材的自然纹理。设计师综合了大家的意见，"
    "画出了第一版草图：椅背略微后倾十二度，座面采用整块胡桃木，扶手末端做成圆润的卷曲造型。"
    "大家讨论了将近一个小时，最后一致同意先做一个样品，下周再开会评审。"
    "会议记录由秘书整理后分发给每一位参与者。在评审会上，我们将重点检查样品的稳定性、"
    "表面处理的质量以及整体造型是否符合最初的设想。如果有任何问题，设计师会在两天内给出修改方案。"
    "橡木和胡桃木的样板已经寄到工作室。"
)


def stored_record(client: memoryd_client.Client, agent_id: str, record_id: str) -> dict[str, Any]:
    return dict(client.get(agent_id, record_id))


def ids_of(records: list[Any]) -> list[str]:
    return [record["id"] for record in records]


# -- session ------------------------------------------------------------------


def test_hello_reports_server_protocol_and_peer(client: memoryd_client.Client) -> None:
    hello = client.hello("test-suite")
    assert hello["server"] == "memoryd"
    assert hello["version"] == memoryd.__version__
    assert hello["protocol"] == wire.PROTOCOL_VERSION
    assert hello["peer"] == {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()}


def test_ping(client: memoryd_client.Client) -> None:
    assert client.ping() == "pong"


def test_status_has_the_contract_keys(env: Env, client: memoryd_client.Client) -> None:
    status = client.status()
    assert {"state", "version", "pid", "store", "wal"} <= status.keys()
    assert status["state"] == "healthy"
    assert status["version"] == memoryd.__version__
    assert env.daemon.process is not None
    assert status["pid"] == env.daemon.process.pid
    assert status["store"]["kind"] == env.kind
    assert status["wal"]["fsync"] == "always"
    assert status["socket"] == str(env.socket_path)


# -- add and get ----------------------------------------------------------------


def test_add_returns_id_and_created_at_and_get_returns_the_exact_record(
    client: memoryd_client.Client, agent: str
) -> None:
    before = time.time()
    result = client.add(
        agent,
        "discussion",
        "the chair needs a lower back",
        author="designer_1",
        importance=0.8,
        tags=["stage:sketch", "chair"],
        metadata={"round": 2, "speaker": {"name": "Li", "seat": [1, 2]}},
        ttl_s=3600,
    )
    after = time.time()
    assert set(result) == {"id", "created_at"}
    assert isinstance(result["id"], str) and result["id"]
    assert before <= result["created_at"] <= after

    record = stored_record(client, agent, result["id"])
    assert set(record) == RECORD_FIELDS
    expires_at = record.pop("expires_at")
    assert record == {
        "id": result["id"],
        "agent_id": agent,
        "type": "discussion",
        "content": "the chair needs a lower back",
        "author": "designer_1",
        "importance": 0.8,
        "tags": ["stage:sketch", "chair"],
        "metadata": {"round": 2, "speaker": {"name": "Li", "seat": [1, 2]}},
        "created_at": result["created_at"],
    }
    assert before + 3600 <= expires_at <= time.time() + 3600


def test_add_applies_the_documented_defaults(client: memoryd_client.Client, agent: str) -> None:
    before = time.time()
    result = client.add(agent, "keywords", ["oak", "walnut"])
    record = stored_record(client, agent, result["id"])
    assert record["author"] is None
    assert record["importance"] == 0.5
    assert record["tags"] == []
    assert record["metadata"] == {}
    assert record["content"] == ["oak", "walnut"]
    assert before + DEFAULT_TTL_S <= record["expires_at"] <= time.time() + DEFAULT_TTL_S


def test_ttl_zero_means_no_expiry(client: memoryd_client.Client, agent: str) -> None:
    result = client.add(agent, "discussion", "forever", ttl_s=0)
    assert stored_record(client, agent, result["id"])["expires_at"] is None


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(CJK_TEXT, id="cjk-text"),
        pytest.param(
            {
                "发言人": "手工艺人",
                "要点": [CJK_TEXT[:40], {"材料": ["橡木", "胡桃木"], "数量": 3}],
                "nested": {"deeper": {"list": [1, 2.5, True, None, "末尾"]}},
                "empty": {"map": {}, "list": []},
            },
            id="nested-map",
        ),
        pytest.param([["a", ["b", ["c"]]], {"k": "v"}, 7, -1.25, False], id="nested-list"),
        pytest.param(b"\x00\xffbinary\x80 \xe4\xb8", id="bytes"),
        pytest.param({"blob": b"\x01\x02", "text": "混合"}, id="map-with-bytes"),
    ],
)
def test_content_round_trips_exactly(
    client: memoryd_client.Client, agent: str, content: Any
) -> None:
    if content == CJK_TEXT:
        assert len(CJK_TEXT.encode()) >= 1000
    result = client.add(agent, "speech", content, metadata={"说明": "元数据"})
    record = stored_record(client, agent, result["id"])
    assert record["content"] == content
    assert type(record["content"]) is type(content)
    assert record["metadata"] == {"说明": "元数据"}
    # And the same once read back through a query (not only get).
    (listed,) = client.recent(agent)
    assert listed["content"] == content


def test_client_supplied_id_and_created_at_are_honoured(
    client: memoryd_client.Client, agent: str
) -> None:
    created_at = 1_700_000_000.125
    result = client.add(agent, "discussion", "hello", id="my-id_1.x:y@z", created_at=created_at)
    assert result == {"id": "my-id_1.x:y@z", "created_at": created_at}
    record = stored_record(client, agent, "my-id_1.x:y@z")
    assert record["id"] == "my-id_1.x:y@z"
    assert record["created_at"] == created_at
    stats = client.stats(agent)
    assert stats["oldest"] == created_at and stats["newest"] == created_at


def test_adding_the_same_id_twice_stores_it_once(client: memoryd_client.Client, agent: str) -> None:
    fields: dict[str, Any] = {"id": "retry-1", "created_at": time.time()}
    first = client.add(agent, "discussion", "first attempt", **fields)
    second = client.add(agent, "discussion", "first attempt", **fields)
    assert first == second
    assert client.stats(agent)["count"] == 1
    assert ids_of(client.recent(agent)) == ["retry-1"]

    # Re-applying an id that exists changes nothing, whatever the new write holds.
    client.add(agent, "other", "a different write", **fields)
    assert stored_record(client, agent, "retry-1")["content"] == "first attempt"
    stats = client.stats(agent)
    assert stats["count"] == 1
    assert stats["by_type"] == {"discussion": 1}
    assert ids_of(client.recent(agent)) == ["retry-1"]


def test_get_of_a_missing_record_is_not_found(client: memoryd_client.Client, agent: str) -> None:
    with pytest.raises(errors.NotFound):
        client.get(agent, "no-such-id")
    client.add(agent, "discussion", "x", id="exists")
    with pytest.raises(errors.NotFound):
        client.get(new_agent(), "exists")  # ids belong to their agent


# -- add_many -----------------------------------------------------------------------


def test_add_many_returns_ids_in_order_and_all_are_readable(
    client: memoryd_client.Client, agent: str
) -> None:
    now = time.time()
    records: list[dict[str, Any]] = [
        {"agent_id": agent, "type": "discussion", "content": f"point {i}", "created_at": now + i}
        for i in range(6)
    ]
    records[2]["id"] = "given-id-2"
    records[4].update(author="craftsman_1", tags=["t"], importance=0.9, metadata={"i": 4})
    other = new_agent()
    records.append({"agent_id": other, "type": "keywords", "content": ["oak"]})

    ids = client.add_many(records)
    assert len(ids) == 7 and len(set(ids)) == 7
    assert ids[2] == "given-id-2"
    for record_id, sent in zip(ids, records, strict=True):
        stored = stored_record(client, sent["agent_id"], record_id)
        assert stored["content"] == sent["content"]
        assert stored["type"] == sent["type"]
    assert stored_record(client, agent, ids[4])["author"] == "craftsman_1"
    assert stored_record(client, agent, ids[4])["metadata"] == {"i": 4}
    assert ids_of(client.recent(agent, order="oldest")) == ids[:6]
    assert client.stats(agent)["count"] == 6
    assert client.stats(other)["count"] == 1


def test_add_many_records_take_the_fields_of_add(env: Env, agent: str) -> None:
    # "records: [same fields as add, each with agent_id]", durability included
    # (memoryd_client.NewRecord documents it too).
    with env.client() as client:
        ids = client.add_many(
            [
                {"agent_id": agent, "type": "t", "content": "stored", "durability": "store"},
                {"agent_id": agent, "type": "t", "content": "logged", "durability": "local"},
            ]
        )
        assert [client.get(agent, record_id)["content"] for record_id in ids] == [
            "stored",
            "logged",
        ]


def test_add_many_over_max_batch_is_rejected_and_writes_nothing(
    client: memoryd_client.Client, agent: str
) -> None:
    records = [{"agent_id": agent, "type": "t", "content": i} for i in range(1001)]
    with pytest.raises((errors.TooLarge, errors.InvalidRequest)) as caught:
        client.add_many(records)
    assert "records" in caught.value.message
    assert client.stats(agent)["count"] == 0
    # Exactly max_batch is fine.
    assert len(client.add_many(records[:1000])) == 1000
    assert client.stats(agent)["count"] == 1000


# -- update ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"content": {"new": ["content", "新内容"]}}, {"content": {"new": ["content", "新内容"]}}),
        ({"importance": 0.95}, {"importance": 0.95}),
        ({"importance": 0}, {"importance": 0.0}),
        ({"tags": ["stage:review", "final"]}, {"tags": ["stage:review", "final"]}),
        ({"tags": []}, {"tags": []}),
        (
            {"metadata": {"votes": 3, "by": ["a", "b"]}},
            {"metadata": {"votes": 3, "by": ["a", "b"]}},
        ),
        (
            {"content": "both", "importance": 0.1, "tags": ["x"]},
            {"content": "both", "importance": 0.1, "tags": ["x"]},
        ),
    ],
    ids=["content", "importance", "importance-zero", "tags", "tags-empty", "metadata", "several"],
)
def test_update_changes_the_field_and_persists(
    client: memoryd_client.Client,
    agent: str,
    changes: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    created_at = time.time() - 5
    client.add(
        agent,
        "discussion",
        "old content",
        id="u1",
        created_at=created_at,
        author="consumer_1",
        importance=0.5,
        tags=["stage:sketch"],
        metadata={"round": 1},
        ttl_s=3600,
    )
    original = stored_record(client, agent, "u1")
    updated = dict(client.update(agent, "u1", **changes))
    assert updated == {**original, **expected}
    assert updated["type"] == "discussion"
    assert updated["created_at"] == created_at
    assert stored_record(client, agent, "u1") == updated
    # One record, the new version, everywhere.
    assert client.recent(agent) == [updated]
    assert client.stats(agent)["count"] == 1


def test_update_of_ttl_sets_and_removes_the_expiry(
    client: memoryd_client.Client, agent: str
) -> None:
    client.add(agent, "discussion", "x", id="u1", ttl_s=0)
    assert stored_record(client, agent, "u1")["expires_at"] is None
    before = time.time()
    updated = client.update(agent, "u1", ttl_s=120)
    expires_at = updated["expires_at"]
    assert expires_at is not None and before + 120 <= expires_at <= time.time() + 120
    assert stored_record(client, agent, "u1") == updated
    cleared = client.update(agent, "u1", ttl_s=0)
    assert cleared["expires_at"] is None
    assert stored_record(client, agent, "u1")["expires_at"] is None
    assert cleared["content"] == "x" and cleared["type"] == "discussion"


def test_update_of_a_missing_record_is_not_found(client: memoryd_client.Client, agent: str) -> None:
    with pytest.raises(errors.NotFound):
        client.update(agent, "missing", content="x")
    client.add(agent, "discussion", "x", id="gone")
    assert client.delete(agent, "gone") is True
    with pytest.raises(errors.NotFound):
        client.update(agent, "gone", importance=0.1)
    assert client.stats(agent)["count"] == 0


# -- delete ---------------------------------------------------------------------


def test_delete_returns_whether_it_existed(client: memoryd_client.Client, agent: str) -> None:
    client.add(agent, "discussion", "keep", id="keep")
    client.add(agent, "discussion", "drop", id="drop")
    assert client.delete(agent, "drop") is True
    assert client.delete(agent, "drop") is False
    assert client.delete(agent, "never-was") is False
    with pytest.raises(errors.NotFound):
        client.get(agent, "drop")
    assert ids_of(client.recent(agent)) == ["keep"]
    assert client.stats(agent)["count"] == 1


# -- recent ---------------------------------------------------------------------

AUTHORS = ("craftsman_1", "consumer_1", "designer_1", "manufacturer_1")
TYPES = ("discussion", "keywords", "speech")


@pytest.fixture
def history(client: memoryd_client.Client, agent: str) -> Iterator[list[dict[str, Any]]]:
    """24 records with known times, types, authors and tags, added in shuffled order."""
    base = time.time() - 1000
    records = [
        {
            "agent_id": agent,
            "id": f"r{i:02d}",
            "type": TYPES[i % 3],
            "content": f"record {i}",
            "author": AUTHORS[i % 4],
            "tags": ["even"] if i % 2 == 0 else ["odd", "stage:vote"] if i % 5 == 0 else ["odd"],
            "created_at": base + i * 10,
        }
        for i in range(24)
    ]
    order = list(range(24))
    order = order[::3] + order[1::3] + order[2::3]
    client.add_many([records[i] for i in order])
    yield records


def expect(
    records: list[dict[str, Any]],
    *,
    limit: int = 10,
    order: str = "newest",
    keep: Any = lambda record: True,
) -> list[str]:
    chosen = sorted(
        (r for r in records if keep(r)),
        key=lambda r: r["created_at"],
        reverse=order == "newest",
    )
    return [r["id"] for r in chosen[:limit]]


def test_recent_defaults_to_the_newest_ten(
    client: memoryd_client.Client, agent: str, history: list[dict[str, Any]]
) -> None:
    got = client.recent(agent)
    assert ids_of(got) == expect(history)
    assert got.degraded is False
    assert ids_of(got)[0] == "r23"


@pytest.mark.parametrize("limit", [1, 3, 24, 1000])
def test_recent_limit(
    client: memoryd_client.Client, agent: str, history: list[dict[str, Any]], limit: int
) -> None:
    assert ids_of(client.recent(agent, limit=limit)) == expect(history, limit=limit)


def test_recent_order_oldest_is_the_whole_history(
    client: memoryd_client.Client, agent: str, history: list[dict[str, Any]]
) -> None:
    got = client.recent(agent, limit=100, order="oldest")
    assert ids_of(got) == [f"r{i:02d}" for i in range(24)]
    assert ids_of(client.recent(agent, limit=100, order="newest")) == ids_of(got)[::-1]
    assert ids_of(client.recent(agent, limit=4, order="oldest")) == ["r00", "r01", "r02", "r03"]


def test_recent_by_one_type_and_by_several(
    client: memoryd_client.Client, agent: str, history: list[dict[str, Any]]
) -> None:
    got = client.recent(agent, types=["keywords"], limit=100)
    assert ids_of(got) == expect(history, limit=100, keep=lambda r: r["type"] == "keywords")
    assert {r["type"] for r in got} == {"keywords"}
    got = client.recent(agent, types=["speech", "discussion"], limit=5, order="oldest")
    assert ids_of(got) == expect(
        history, limit=5, order="oldest", keep=lambda r: r["type"] in ("speech", "discussion")
    )
    assert client.recent(agent, types=["no-such-type"]) == []


def test_recent_by_author_and_excluding_an_author(
    client: memoryd_client.Client, agent: str, history: list[dict[str, Any]]
) -> None:
    got = client.recent(agent, author="designer_1", limit=100)
    assert ids_of(got) == expect(history, limit=100, keep=lambda r: r["author"] == "designer_1")
    got = client.recent(agent, exclude_author="designer_1", limit=100)
    assert ids_of(got) == expect(history, limit=100, keep=lambda r: r["author"] != "designer_1")
    assert client.recent(agent, author="nobody") == []


def test_recent_meeting_context_excludes_the_callers_own_speeches(
    client: memoryd_client.Client,
) -> None:
    meeting = new_agent("meeting")
    base = time.time() - 100
    speeches = [
        {
            "agent_id": meeting,
            "type": "speech",
            "content": f"speech {i} by {AUTHORS[i % 4]}",
            "author": AUTHORS[i % 4],
            "created_at": base + i,
        }
        for i in range(20)
    ]
    ids = client.add_many(speeches)
    for speaker in AUTHORS:
        context = client.recent(meeting, limit=8, exclude_author=speaker)
        assert len(context) == 8
        assert all(r["author"] != speaker for r in context)
        expected = [ids[i] for i in reversed(range(20)) if AUTHORS[i % 4] != speaker][:8]
        assert ids_of(context) == expected


def test_recent_by_tags(
    client: memoryd_client.Client, agent: str, history: list[dict[str, Any]]
) -> None:
    got = client.recent(agent, tags=["even"], limit=100)
    assert ids_of(got) == expect(history, limit=100, keep=lambda r: "even" in r["tags"])
    got = client.recent(agent, tags=["stage:vote"], limit=100)
    assert ids_of(got) == expect(history, limit=100, keep=lambda r: "stage:vote" in r["tags"])
    assert ids_of(got) == ["r15", "r05"]
    # Several tags: the records carrying all of them.
    got = client.recent(agent, tags=["odd", "stage:vote"], limit=100)
    assert ids_of(got) == ["r15", "r05"]
    assert client.recent(agent, tags=["no-such-tag"]) == []


def test_recent_since_is_inclusive_and_until_exclusive(
    client: memoryd_client.Client, agent: str, history: list[dict[str, Any]]
) -> None:
    t = {r["id"]: r["created_at"] for r in history}
    got = client.recent(agent, since=t["r05"], limit=100, order="oldest")
    assert ids_of(got) == [f"r{i:02d}" for i in range(5, 24)]
    got = client.recent(agent, until=t["r05"], limit=100, order="oldest")
    assert ids_of(got) == [f"r{i:02d}" for i in range(5)]
    got = client.recent(agent, since=t["r05"], until=t["r09"], limit=100, order="oldest")
    assert ids_of(got) == ["r05", "r06", "r07", "r08"]
    assert client.recent(agent, since=t["r05"], until=t["r05"]) == []
    assert ids_of(client.recent(agent, since=t["r23"])) == ["r23"]


def test_recent_filters_combine(
    client: memoryd_client.Client, agent: str, history: list[dict[str, Any]]
) -> None:
    t = {r["id"]: r["created_at"] for r in history}
    got = client.recent(
        agent,
        types=["discussion", "keywords"],
        exclude_author="craftsman_1",
        tags=["odd"],
        since=t["r03"],
        until=t["r22"],
        order="oldest",
        limit=3,
    )
    assert ids_of(got) == expect(
        history,
        limit=3,
        order="oldest",
        keep=lambda r: (
            r["type"] in ("discussion", "keywords")
            and r["author"] != "craftsman_1"
            and "odd" in r["tags"]
            and t["r03"] <= r["created_at"] < t["r22"]
        ),
    )
    assert len(got) == 3
    got = client.recent(agent, types=["speech"], author="designer_1", limit=100)
    assert ids_of(got) == expect(
        history,
        limit=100,
        keep=lambda r: r["type"] == "speech" and r["author"] == "designer_1",
    )


def test_recent_of_an_unknown_agent_is_empty(client: memoryd_client.Client) -> None:
    got = client.recent(new_agent())
    assert got == [] and got.degraded is False


# -- search ---------------------------------------------------------------------


def test_search_is_a_case_insensitive_substring_match_newest_first(
    client: memoryd_client.Client, agent: str
) -> None:
    base = time.time() - 100
    contents: list[Any] = [
        "A chair of solid OAK",  # 0
        {"note": "the oak grain is fine", "n": 1},  # 1
        ["first", ["deep", {"x": "Oaken bucket"}]],  # 2
        "walnut only",  # 3
        {"oak": "the key is not text"},  # 4: keys are not searched
        ["no match", 42, None],  # 5
        {"nested": {"list": ["cloak room"]}},  # 6
        CJK_TEXT,  # 7
    ]
    ids = client.add_many(
        [
            {
                "agent_id": agent,
                "type": "keywords" if i % 2 else "discussion",
                "content": content,
                "created_at": base + i,
            }
            for i, content in enumerate(contents)
        ]
    )
    oak = [ids[6], ids[2], ids[1], ids[0]]
    assert ids_of(client.search(agent, "oak")) == oak
    assert ids_of(client.search(agent, "OAK")) == oak
    assert ids_of(client.search(agent, "oAk")) == oak
    assert ids_of(client.search(agent, "oak", limit=2)) == oak[:2]
    assert ids_of(client.search(agent, "oak", types=["discussion"])) == [ids[6], ids[2], ids[0]]
    assert ids_of(client.search(agent, "oak", types=["keywords"])) == [ids[1]]
    assert ids_of(client.search(agent, "grain is")) == [ids[1]]
    assert ids_of(client.search(agent, "胡桃木")) == [ids[7]]
    assert ids_of(client.search(agent, "WALNUT")) == [ids[3]]
    got = client.search(agent, "nothing like this")
    assert got == [] and got.degraded is False
    assert client.search(new_agent(), "oak") == []


# -- stats ----------------------------------------------------------------------


def test_stats_follow_adds_updates_and_deletes(client: memoryd_client.Client, agent: str) -> None:
    empty = client.stats(agent)
    assert empty == {"count": 0, "by_type": {}, "bytes": 0, "oldest": None, "newest": None}

    base = time.time() - 100
    client.add(agent, "discussion", "first", id="a", created_at=base)
    one = client.stats(agent)
    assert one["count"] == 1 and one["by_type"] == {"discussion": 1}
    assert one["bytes"] > 0
    assert one["oldest"] == base and one["newest"] == base

    client.add(agent, "keywords", ["k1", "k2"], id="b", created_at=base + 10)
    client.add(agent, "discussion", "third", id="c", created_at=base + 20)
    three = client.stats(agent)
    assert three["count"] == 3
    assert three["by_type"] == {"discussion": 2, "keywords": 1}
    assert three["bytes"] > one["bytes"]
    assert three["oldest"] == base and three["newest"] == base + 20

    client.update(agent, "a", content="first, now with a much longer text " * 10)
    grown = client.stats(agent)
    assert grown["count"] == 3 and grown["by_type"] == three["by_type"]
    assert grown["bytes"] > three["bytes"]
    client.update(agent, "a", content="first")
    assert client.stats(agent) == three

    assert client.delete(agent, "a") is True
    after_delete = client.stats(agent)
    assert after_delete["count"] == 2
    assert after_delete["by_type"] == {"discussion": 1, "keywords": 1}
    assert after_delete["oldest"] == base + 10 and after_delete["newest"] == base + 20
    assert after_delete["bytes"] < three["bytes"]

    assert client.delete(agent, "b") is True
    assert client.delete(agent, "c") is True
    assert client.stats(agent) == empty


def test_stats_after_trimming_to_max_memories(trim_env: Env) -> None:
    agent = new_agent("trim")
    base = time.time() - 100
    with trim_env.client() as client:
        for i in range(8):
            client.add(
                agent,
                "discussion" if i % 2 else "keywords",
                f"memory {i}",
                id=f"m{i}",
                created_at=base + i,
            )
        stats = client.stats(agent)
        assert stats["count"] == TRIM_MAX_MEMORIES
        assert sum(stats["by_type"].values()) == TRIM_MAX_MEMORIES
        assert stats["by_type"] == {"discussion": 3, "keywords": 2}  # m3..m7 kept
        assert stats["oldest"] == base + 3 and stats["newest"] == base + 7
        assert ids_of(client.recent(agent, limit=100)) == [
            "m7",
            "m6",
            "m5",
            "m4",
            "m3",
        ]
        for trimmed in ("m0", "m1", "m2"):
            with pytest.raises(errors.NotFound):
                client.get(agent, trimmed)
        # An add_many past the limit trims too, oldest first.
        client.add_many(
            [
                {
                    "agent_id": agent,
                    "type": "speech",
                    "content": i,
                    "id": f"n{i}",
                    "created_at": base + 10 + i,
                }
                for i in range(3)
            ]
        )
        stats = client.stats(agent)
        assert stats["count"] == TRIM_MAX_MEMORIES
        assert stats["by_type"] == {"speech": 3, "discussion": 1, "keywords": 1}
        assert ids_of(client.recent(agent, limit=100, order="oldest")) == [
            "m6",
            "m7",
            "n0",
            "n1",
            "n2",
        ]
    assert trim_env.stored_ids(agent) == {"m6", "m7", "n0", "n1", "n2"}
    if trim_env.kind == "redis":
        keys = trim_env.redis_keys(agent)
        memory_keys = {k for k in keys if ":memory:" in k}
        assert memory_keys == {
            f"agent:{{{agent}}}:memory:{i}" for i in ("m6", "m7", "n0", "n1", "n2")
        }
        with trim_env.redis_conn() as conn:
            for record_type, count in (("speech", 3), ("discussion", 1), ("keywords", 1)):
                assert conn.zcard(f"agent:{{{agent}}}:memories:type:{record_type}") == count
            assert int(conn.hget(f"agent:{{{agent}}}:stats", "count")) == TRIM_MAX_MEMORIES


def test_reads_right_after_writes_respect_max_memories(trim_env: Env) -> None:
    # Reads lay the writes not yet applied over the store; that view must be
    # trimmed like the store will be, or a read shows records that are gone
    # (or are about to be) as soon as the flusher catches up.
    with trim_env.client() as client:
        for attempt in range(20):
            agent = new_agent(f"trim-ryw{attempt}")
            base = time.time() - 100
            client.add_many(
                [
                    {
                        "agent_id": agent,
                        "type": "t",
                        "content": i,
                        "id": f"m{i}",
                        "created_at": base + i,
                    }
                    for i in range(8)
                ]
            )
            assert ids_of(client.recent(agent, limit=100)) == ["m7", "m6", "m5", "m4", "m3"]
            with pytest.raises(errors.NotFound):
                client.get(agent, "m0")


# -- expiry ---------------------------------------------------------------------


def test_expired_records_are_not_returned_and_leave_the_stats(
    client: memoryd_client.Client, agent: str
) -> None:
    client.add(agent, "discussion", "stays", id="stays", ttl_s=0)
    client.add(agent, "flash", "goes away", id="flash", ttl_s=1)
    client.add(agent, "discussion", "goes too", id="flash2", ttl_s=1)
    # (Only a loose check before the expiry: a loaded machine may take a while.)
    assert "stays" in ids_of(client.recent(agent))

    eventually(
        lambda: ids_of(client.recent(agent)),
        lambda ids: ids == ["stays"],
        timeout_s=4,
        what="the records with ttl_s=1 to expire",
    )
    assert ids_of(client.recent(agent, types=["flash"])) == []
    assert ids_of(client.search(agent, "goes")) == []
    for gone in ("flash", "flash2"):
        with pytest.raises(errors.NotFound):
            client.get(agent, gone)
    stats = client.stats(agent)
    assert stats["count"] == 1
    assert stats["by_type"] == {"discussion": 1}
    assert stats["oldest"] == stats["newest"] == client.get(agent, "stays")["created_at"]


def test_the_sweep_removes_expired_records_from_the_store(env: Env) -> None:
    # Nobody reads this agent: only the periodic sweep (every 0.5 s) can clean it.
    agent = new_agent("sweep")
    with env.client() as client:
        client.add(agent, "discussion", "stays", id="stays", ttl_s=0)
        client.add(agent, "flash", "goes", id="flash", ttl_s=1, durability="store")
    assert "stays" in env.stored_ids(agent)
    eventually(
        lambda: env.stored_ids(agent),
        lambda ids: ids == {"stays"},
        timeout_s=4,
        what="the sweep to remove the expired record",
    )
    if env.kind == "redis":
        prefix = f"agent:{{{agent}}}:"
        with env.redis_conn() as conn:
            assert conn.exists(prefix + "memory:flash") == 0
            assert conn.exists(prefix + "memories:type:flash") == 0
            assert conn.zscore(prefix + "memories:list", "flash") is None
            assert conn.zscore(prefix + "memories:expiry", "flash") is None
            assert conn.hget(prefix + "memories:types", "flash") is None
            assert conn.hgetall(prefix + "memories:types") == {b"discussion": b"1"}
            assert int(conn.hget(prefix + "stats", "count")) == 1
        # Every index entry that remains points at a live record.
        for key in env.redis_keys(agent):
            assert "flash" not in key
    with env.client() as client:
        assert client.stats(agent)["count"] == 1


def test_expiry_of_the_last_record_leaves_no_redis_keys_but_a_passing_one(
    redis_env: Env,
) -> None:
    agent = new_agent("expire-all")
    with redis_env.client() as client:
        client.add(agent, "flash", "goes", ttl_s=1, durability="store")
        assert redis_env.record_keys(agent)
    assert 0 < redis_env.applied_ttl_s(agent) <= APPLIED_KEPT_S
    eventually(
        lambda: redis_env.record_keys(agent),
        lambda keys: not keys,
        timeout_s=4,
        what="every key of an agent whose records all expired to go",
    )


def test_expired_records_are_not_returned_while_the_store_is_down() -> None:
    # With Redis gone the daemon answers from the writes it holds; those
    # expire like any other record.
    server = RedisServer().start()
    try:
        with running_daemon(MEMORYD_REDIS_URL=server.url) as daemon:
            agent = new_agent("degraded")
            with memoryd_client.Client(daemon.socket_path, timeout_s=5) as client:
                client.add(agent, "discussion", "stays", id="stays", ttl_s=0, durability="store")
                server.kill()
                eventually(
                    lambda: client.status()["state"],
                    lambda state: state == "degraded",
                    what="the daemon to notice that Redis is gone",
                )
                client.add(agent, "flash", "goes", id="flash", ttl_s=1)
                assert "flash" in ids_of(client.recent(agent))
                eventually(
                    lambda: ids_of(client.recent(agent)),
                    lambda ids: "flash" not in ids,
                    timeout_s=4,
                    what="the record to expire",
                )
                with pytest.raises(errors.NotFound):
                    client.get(agent, "flash")
                with pytest.raises(errors.NotFound):
                    client.update(agent, "flash", importance=0.1)
                assert client.delete(agent, "flash") is False
    finally:
        server.cleanup()


# -- clear ----------------------------------------------------------------------


def test_clear_deletes_only_that_agent(env: Env, client: memoryd_client.Client) -> None:
    target, bystander = new_agent("clear"), new_agent("keep")
    for i in range(3):
        client.add(target, TYPES[i], f"target {i}", id=f"t{i}")
    for i in range(2):
        client.add(bystander, TYPES[i], f"bystander {i}", id=f"b{i}")
    assert client.stats(target)["count"] == 3
    bystander_keys = env.record_keys(bystander) if env.kind == "redis" else set()

    assert client.clear(target) == 3
    assert client.recent(target) == []
    assert client.stats(target)["count"] == 0
    with pytest.raises(errors.NotFound):
        client.get(target, "t0")
    assert client.stats(bystander)["count"] == 2
    assert ids_of(client.recent(bystander, order="oldest")) == ["b0", "b1"]

    assert client.clear(target) == 0
    assert client.clear(new_agent()) == 0
    eventually(lambda: env.stored_ids(target), lambda ids: not ids, what="the clear to apply")
    assert env.stored_ids(bystander) == {"b0", "b1"}
    if env.kind == "redis":
        eventually(
            lambda: env.record_keys(target), lambda keys: not keys, what="every key of the agent"
        )
        assert 0 < env.applied_ttl_s(target) <= APPLIED_KEPT_S  # goes too, later
        assert env.record_keys(bystander) == bystander_keys
        assert len(bystander_keys) >= 7  # 2 HASHes, list, types, 2 type ZSETs, stats, expiry

    # The agent can be used again after a clear.
    client.add(target, "discussion", "again", id="again")
    assert ids_of(client.recent(target)) == ["again"]


# -- agents ---------------------------------------------------------------------


def test_agents_with_prefix_and_limit(client: memoryd_client.Client) -> None:
    prefix = new_agent("agents") + "-"
    names = [prefix + suffix for suffix in ("c", "a", "b.x", "b")]
    for name in names:
        client.add(name, "discussion", "hello")
    assert client.agents(prefix=prefix) == sorted(names)
    assert client.agents(prefix=prefix, limit=2) == sorted(names)[:2]
    assert client.agents(prefix=prefix + "b") == [prefix + "b", prefix + "b.x"]
    assert client.agents(prefix=prefix + "zzz") == []
    everyone = client.agents(limit=10_000)
    assert set(names) <= set(everyone)
    assert everyone == sorted(everyone)

    # An agent whose records are all gone is not known any more.
    assert client.clear(prefix + "a") == 1
    client.stats(prefix + "a")  # waits until the clear is applied
    assert client.agents(prefix=prefix) == sorted(set(names) - {prefix + "a"})


def test_clear_and_agents_say_whether_they_saw_the_store(
    daemon_dir: Daemon, private_redis: RedisServer
) -> None:
    """Both answer ``degraded`` (the protocol's flag); the client keeps it."""
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon_dir.start()
    cleared, listed = new_agent("cleared"), new_agent("listed")
    with memoryd_client.Client(daemon_dir.socket_path) as client:
        client.add(cleared, "note", "stored", id="s0")
        client.add(listed, "note", "stored", id="l0")
        client.stats(listed)  # waits until both are applied
        healthy_clear = client.clear(cleared)
        assert healthy_clear == 1 and not healthy_clear.degraded
        healthy_agents = client.agents(prefix=listed)
        assert healthy_agents == [listed] and not healthy_agents.degraded

        private_redis.kill()
        eventually(lambda: client.status()["state"], lambda state: state == "degraded")
        client.add(cleared, "note", "held", id="h0")
        client.add(cleared, "note", "held", id="h1")
        down_clear = client.clear(cleared)
        assert down_clear == 2 and down_clear.degraded  # the backlog's count
        client.add(listed, "note", "held", id="l1")
        down_agents = client.agents(prefix=listed)
        assert down_agents == [listed] and down_agents.degraded
        assert repr(down_clear) == "Cleared(2, degraded=True)"


# -- consistency ------------------------------------------------------------------


def test_read_your_writes_across_connections(env: Env, agent: str) -> None:
    with env.client() as writer, env.client() as reader:
        for i in range(20):
            result = writer.add(agent, "discussion", f"write {i}")
            assert reader.get(agent, result["id"])["content"] == f"write {i}"
            assert ids_of(reader.recent(agent, limit=1)) == [result["id"]]
            assert result["id"] in ids_of(reader.search(agent, f"write {i}"))
        assert reader.stats(agent)["count"] == 20


def test_durability_store_acks_once_the_record_is_in_the_store(env: Env, agent: str) -> None:
    with env.client() as client:
        for i in range(5):
            result = client.add(agent, "discussion", f"durable {i}", durability="store")
            # No polling: the record must be in the store when the call returns.
            assert result["id"] in env.stored_ids(agent)
            if env.kind == "redis":
                with env.redis_conn() as conn:
                    key = f"agent:{{{agent}}}:memory:{result['id']}"
                    assert conn.exists(key) == 1
        local = client.add(agent, "discussion", "local ack", durability="local")
        assert client.get(agent, local["id"])["content"] == "local ack"


async def test_async_client_500_concurrent_adds_on_one_connection(
    aclient: memoryd_client.AsyncClient, agent: str
) -> None:
    other = new_agent("async-other")
    results = await asyncio.gather(
        *(
            aclient.add(agent if i % 5 else other, "discussion", {"n": i, "text": f"message {i}"})
            for i in range(500)
        )
    )
    ids = [result["id"] for result in results]
    assert len(set(ids)) == 500
    records = await asyncio.gather(
        *(aclient.get(agent if i % 5 else other, record_id) for i, record_id in enumerate(ids))
    )
    assert [record["content"]["n"] for record in records] == list(range(500))
    assert (await aclient.stats(agent))["count"] == 400
    assert (await aclient.stats(other))["count"] == 100
    listed = await aclient.recent(agent, limit=1000)
    assert {r["id"] for r in listed} == {ids[i] for i in range(500) if i % 5}


async def test_async_client_methods(aclient: memoryd_client.AsyncClient, agent: str) -> None:
    hello = await aclient.hello()
    assert hello["peer"]["pid"] == os.getpid()
    assert await aclient.ping() == "pong"
    added = await aclient.add(agent, "discussion", "async hello", author="a1")
    assert (await aclient.get(agent, added["id"]))["content"] == "async hello"
    updated = await aclient.update(agent, added["id"], importance=0.25)
    assert updated["importance"] == 0.25
    ids = await aclient.add_many([{"agent_id": agent, "type": "t", "content": "two"}])
    assert ids_of(await aclient.recent(agent, exclude_author="a1")) == ids
    assert ids_of(await aclient.search(agent, "ASYNC")) == [added["id"]]
    assert (await aclient.stats(agent))["count"] == 2
    assert agent in await aclient.agents(prefix=agent)
    assert (await aclient.status())["state"] == "healthy"
    assert await aclient.delete(agent, ids[0]) is True
    assert await aclient.clear(agent) == 1


# -- the documented layout in Redis ----------------------------------------------


def test_redis_keys_follow_the_documented_layout(redis_env: Env, agent: str) -> None:
    created_at = 1_750_000_000.5
    with redis_env.client() as client:
        result = client.add(
            agent, "discussion", "layout", id="L1", created_at=created_at, ttl_s=3600
        )
        client.add(agent, "keywords", ["a"], id="L2", created_at=created_at + 1, ttl_s=0)
    prefix = f"agent:{{{agent}}}:"
    conn: redis.Redis
    with redis_env.redis_conn() as conn:

        def applied() -> bool:
            return (
                bool(conn.exists(prefix + "memory:L2"))
                and conn.zcard(prefix + "memories:list") == 2
            )

        eventually(applied, what="the flusher to apply both records")
        memory = prefix + "memory:" + result["id"]
        assert conn.type(memory) == b"hash"
        assert conn.ttl(memory) > 0  # EXPIRE set from expires_at
        assert conn.ttl(prefix + "memory:L2") == -1  # no expiry
        assert conn.type(prefix + "memories:list") == b"zset"
        assert conn.zrange(prefix + "memories:list", 0, -1, withscores=True) == [
            (b"L1", created_at),
            (b"L2", created_at + 1),
        ]
        assert conn.type(prefix + "memories:types") == b"hash"
        assert conn.hgetall(prefix + "memories:types") == {b"discussion": b"1", b"keywords": b"1"}
        assert conn.type(prefix + "memories:type:discussion") == b"zset"
        assert conn.zrange(prefix + "memories:type:discussion", 0, -1, withscores=True) == [
            (b"L1", created_at)
        ]
        assert conn.zrange(prefix + "memories:type:keywords", 0, -1, withscores=True) == [
            (b"L2", created_at + 1)
        ]
        assert conn.type(prefix + "stats") == b"hash"
        stats = redis_view.hash_text(conn, prefix + "stats")
        assert int(stats["count"]) == 2
        assert int(stats["bytes"]) > 0
        assert float(stats["oldest"]) == created_at
        assert float(stats["newest"]) == created_at + 1
    # Every key of the agent carries its hash tag.
    assert all(key.startswith(prefix) for key in redis_env.redis_keys(agent))
