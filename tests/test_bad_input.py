"""Bad input, for every method: refused with an error naming the argument, nothing written.

Most cases go over a raw MessagePack-RPC connection (``RawConnection``),
because the client library rightly refuses to send many of them; a few go
through ``memoryd_client.Client`` to check the errors it raises.  After each
refused request the test checks that nothing changed: the WAL's sequence
number, the agent's stats, records and keys, and no trace of a bad agent id.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import memoryd_client
from memoryd.validation import MAX_NESTING_DEPTH
from memoryd_client import errors
from tests.daemons import Env, RawConnection, new_agent

AGENT = "@AGENT@"  # the test's own, valid agent
MARKER = "@MARKER@"  # a unique string inside every invalid agent id
LONG_AGENT = "@LONG@"  # an invalid agent id of 129 characters, with the marker
FUTURE = "@FUTURE@"  # a creation time ten days ahead
KEEP = "keep-1"  # a record the agent has before the bad request

BIG = "x" * (70 * 1024)  # more than max_record_bytes (64 KiB), less than a message


def nested(levels: int, innermost: Any = "x") -> Any:
    """``innermost`` inside ``levels`` arrays."""
    value = innermost
    for _ in range(levels):
        value = [value]
    return value


TOO_DEEP = nested(MAX_NESTING_DEPTH + 1)
# A map is a level itself: metadata holding arrays one level short is already too deep.
TOO_DEEP_MAP = {"k": nested(MAX_NESTING_DEPTH)}

GOOD_RECORD = {"agent_id": AGENT, "type": "discussion", "content": "fine"}
VALID: dict[str, dict[str, Any]] = {
    "hello": {},
    "ping": {},
    "status": {},
    "add": dict(GOOD_RECORD),
    "add_many": {"records": [dict(GOOD_RECORD)]},
    "get": {"agent_id": AGENT, "id": KEEP},
    "delete": {"agent_id": AGENT, "id": KEEP},
    "update": {"agent_id": AGENT, "id": KEEP, "importance": 0.9},
    "recent": {"agent_id": AGENT},
    "search": {"agent_id": AGENT, "query": "fine"},
    "stats": {"agent_id": AGENT},
    "clear": {"agent_id": AGENT},
    "agents": {},
}
AGENT_METHODS = ("add", "get", "update", "delete", "recent", "search", "stats", "clear")

_DROP = object()

BAD_AGENT_IDS: list[tuple[str, Any]] = [
    ("braces", "{" + MARKER + "}"),
    ("brace-open", MARKER + "{x"),
    ("space", MARKER + " x"),
    ("star", MARKER + "*"),
    ("star-alone", "*"),
    ("question", MARKER + "?"),
    ("empty", ""),
    ("129-chars", LONG_AGENT),
    ("leading-dash", "-" + MARKER),
    ("slash", MARKER + "/x"),
    ("integer", 12345),
    ("float", 1.5),
    ("list", [MARKER]),
    ("map", {"id": MARKER}),
    ("nil", None),
    ("missing", _DROP),
]


def args_of(method: str, **changes: Any) -> dict[str, Any]:
    args = {**VALID[method], **changes}
    return {name: value for name, value in args.items() if value is not _DROP}


def case(method: str, name: str, code: str = "invalid_request", *, tid: str, **changes: Any) -> Any:
    return pytest.param(method, args_of(method, **changes), code, name, id=f"{method}-{tid}")


def record_case(
    index: int, name: str, code: str = "invalid_request", *, tid: str, **changes: Any
) -> Any:
    """add_many with three records, the one at ``index`` changed."""
    records = [{**GOOD_RECORD, "id": f"good-{i}"} for i in range(3)]
    records[index] = {
        key: value for key, value in {**records[index], **changes}.items() if value is not _DROP
    }
    return pytest.param(
        "add_many", {"records": records}, code, name, id=f"add_many-records{index}-{tid}"
    )


def _cases() -> list[Any]:
    cases: list[Any] = []
    for method in AGENT_METHODS:
        for label, value in BAD_AGENT_IDS:
            cases.append(case(method, "agent_id", tid=f"agent_id-{label}", agent_id=value))
    for label, value in BAD_AGENT_IDS:
        cases.append(record_case(1, "records[1].agent_id", tid=f"agent_id-{label}", agent_id=value))
    for method in VALID:
        cases.append(case(method, "colour", tid="unknown-argument", colour=1))
    cases += [
        # hello
        case("hello", "client", tid="client-int", client=5),
        case("hello", "client", tid="client-long", client="x" * 257),
        case("hello", "protocol", tid="protocol-string", protocol="1"),
        case("hello", "protocol", tid="protocol-negative", protocol=-1),
        # add: type
        case("add", "type", tid="type-empty", type=""),
        case("add", "type", tid="type-space", type="bad type"),
        case("add", "type", tid="type-braces", type="{t}"),
        case("add", "type", tid="type-star", type="t*"),
        case("add", "type", tid="type-int", type=5),
        case("add", "type", tid="type-65-chars", type="t" * 65),
        case("add", "type", tid="type-nil", type=None),
        case("add", "type", tid="type-missing", type=_DROP),
        # add: content
        case("add", "content", tid="content-missing", content=_DROP),
        case("add", "content", tid="content-nil", content=None),
        case("add", "content", "too_large", tid="content-too-large", content=BIG),
        case("add", "content", "too_large", tid="content-map-too-large", content={"k": BIG}),
        case("add", "metadata", "too_large", tid="metadata-too-large", metadata={"blob": BIG}),
        case("add", "metadata", tid="metadata-string", metadata="x"),
        case("add", "metadata", tid="metadata-list", metadata=[1]),
        case("add", "content", tid="content-too-deep", content=TOO_DEEP),
        case("add", "content", tid="content-map-too-deep", content=TOO_DEEP_MAP),
        case("add", "metadata", tid="metadata-too-deep", metadata=TOO_DEEP_MAP),
        # add: importance
        case("add", "importance", tid="importance-negative", importance=-0.1),
        case("add", "importance", tid="importance-above-1", importance=1.01),
        case("add", "importance", tid="importance-bool", importance=True),
        case("add", "importance", tid="importance-string", importance="high"),
        case("add", "importance", tid="importance-nan", importance=math.nan),
        case("add", "importance", tid="importance-inf", importance=math.inf),
        # add: tags
        case("add", "tags", tid="tags-string", tags="stage"),
        case("add", "tags", tid="tags-map", tags={"a": 1}),
        case("add", "tags", tid="tags-int-item", tags=["ok", 1]),
        case("add", "tags", tid="tags-empty-item", tags=[""]),
        case("add", "tags", tid="tags-too-many", tags=[f"t{i}" for i in range(65)]),
        case("add", "tags", tid="tags-item-too-long", tags=["t" * 129]),
        # add: ttl_s, created_at, id, author, durability
        case("add", "ttl_s", tid="ttl-negative", ttl_s=-1),
        case("add", "ttl_s", tid="ttl-string", ttl_s="10"),
        case("add", "ttl_s", tid="ttl-bool", ttl_s=True),
        case("add", "ttl_s", tid="ttl-beyond-ten-years", ttl_s=11 * 365 * 86400),
        case("add", "created_at", tid="created-at-future", created_at=FUTURE),
        case("add", "created_at", tid="created-at-negative", created_at=-1),
        case("add", "created_at", tid="created-at-string", created_at="yesterday"),
        case("add", "created_at", tid="created-at-bool", created_at=True),
        case("add", "id", tid="id-empty", id=""),
        case("add", "id", tid="id-space", id="bad id"),
        case("add", "id", tid="id-65-chars", id="i" * 65),
        case("add", "id", tid="id-int", id=5),
        case("add", "author", tid="author-empty", author=""),
        case("add", "author", tid="author-int", author=5),
        case("add", "author", tid="author-long", author="a" * 129),
        case("add", "durability", tid="durability-unknown", durability="disk"),
        case("add", "durability", tid="durability-int", durability=1),
        # add_many
        case("add_many", "records", tid="records-missing", records=_DROP),
        case("add_many", "records", tid="records-empty", records=[]),
        case("add_many", "records", tid="records-string", records="x"),
        case("add_many", "records", tid="records-map", records={"agent_id": AGENT}),
        case("add_many", "records[0]", tid="records-item-int", records=[1]),
        case(
            "add_many",
            "records",
            "too_large",
            tid="records-over-max-batch",
            records=[dict(GOOD_RECORD) for _ in range(1001)],
        ),
        case("add_many", "durability", tid="durability-unknown", durability="disk"),
        record_case(2, "records[2].importance", tid="importance", importance=1.5),
        record_case(0, "records[0].type", tid="type", type="bad type"),
        record_case(1, "records[1].content", tid="content-missing", content=_DROP),
        record_case(1, "records[1].content", "too_large", tid="content-too-large", content=BIG),
        record_case(
            2, "records[2].metadata", "too_large", tid="metadata-too-large", metadata={"b": BIG}
        ),
        record_case(1, "records[1].tags", tid="tags", tags="x"),
        record_case(1, "records[1].content", tid="content-too-deep", content=TOO_DEEP),
        record_case(2, "records[2].metadata", tid="metadata-too-deep", metadata=TOO_DEEP_MAP),
        record_case(1, "records[1].ttl_s", tid="ttl", ttl_s=-5),
        record_case(1, "records[1].created_at", tid="created-at-future", created_at=FUTURE),
        record_case(0, "records[0].colour", tid="unknown-field", colour=1),
        # get / delete
        *(
            case(method, "id", tid=label, id=value)
            for method in ("get", "delete", "update")
            for label, value in (
                ("id-missing", _DROP),
                ("id-nil", None),
                ("id-empty", ""),
                ("id-space", "bad id"),
                ("id-star", "*"),
                ("id-65-chars", "i" * 65),
                ("id-int", 5),
            )
        ),
        # update
        case("update", "nothing to update", tid="nothing-to-update", importance=_DROP),
        case("update", "importance", tid="importance-above-1", importance=1.5),
        case("update", "importance", tid="importance-negative", importance=-0.1),
        case("update", "importance", tid="importance-bool", importance=False),
        case("update", "importance", tid="importance-string", importance="high"),
        case("update", "tags", tid="tags-string", tags="x"),
        case("update", "tags", tid="tags-int-item", tags=[1]),
        case("update", "tags", tid="tags-too-many", tags=[f"t{i}" for i in range(65)]),
        case("update", "metadata", tid="metadata-string", metadata="x"),
        case("update", "content", tid="content-too-deep", content=TOO_DEEP),
        case("update", "metadata", tid="metadata-too-deep", metadata=TOO_DEEP_MAP),
        case("update", "ttl_s", tid="ttl-negative", ttl_s=-1),
        case("update", "ttl_s", tid="ttl-string", ttl_s="10"),
        case("update", "content", "too_large", tid="content-too-large", content=BIG),
        case("update", "metadata", "too_large", tid="metadata-too-large", metadata={"b": BIG}),
        case("update", "type", tid="type-not-updatable", type="other"),
        case("update", "created_at", tid="created-at-not-updatable", created_at=1.0),
        case("update", "author", tid="author-not-updatable", author="someone"),
        # recent
        case("recent", "limit", tid="limit-zero", limit=0),
        case("recent", "limit", tid="limit-negative", limit=-1),
        case("recent", "limit", tid="limit-1001", limit=1001),
        case("recent", "limit", tid="limit-string", limit="5"),
        case("recent", "limit", tid="limit-float", limit=2.5),
        case("recent", "limit", tid="limit-bool", limit=True),
        case("recent", "order", tid="order-unknown", order="sideways"),
        case("recent", "order", tid="order-uppercase", order="NEWEST"),
        case("recent", "order", tid="order-int", order=1),
        case("recent", "types", tid="types-empty", types=[]),
        case("recent", "types", tid="types-string", types="discussion"),
        case("recent", "types", tid="types-bad-token", types=["bad type"]),
        case("recent", "types", tid="types-int-item", types=[5]),
        case("recent", "types", tid="types-too-many", types=[f"t{i}" for i in range(65)]),
        case("recent", "author", tid="author-empty", author=""),
        case("recent", "author", tid="author-int", author=5),
        case("recent", "exclude_author", tid="exclude-author-empty", exclude_author=""),
        case("recent", "exclude_author", tid="exclude-author-list", exclude_author=["a"]),
        case("recent", "tags", tid="tags-string", tags="stage"),
        case("recent", "tags", tid="tags-int-item", tags=[1]),
        case("recent", "since", tid="since-string", since="yesterday"),
        case("recent", "since", tid="since-bool", since=True),
        case("recent", "since", tid="since-list", since=[1]),
        case("recent", "since", tid="since-negative", since=-1),
        case("recent", "until", tid="until-string", until="x"),
        case("recent", "until", tid="until-map", until={}),
        # search
        case("search", "query", tid="query-missing", query=_DROP),
        case("search", "query", tid="query-nil", query=None),
        case("search", "query", tid="query-empty", query=""),
        case("search", "query", tid="query-int", query=5),
        case("search", "query", tid="query-too-long", query="q" * 1025),
        case("search", "limit", tid="limit-zero", limit=0),
        case("search", "limit", tid="limit-1001", limit=1001),
        case("search", "limit", tid="limit-string", limit="3"),
        case("search", "types", tid="types-empty", types=[]),
        case("search", "types", tid="types-bad-token", types=["a b"]),
        # agents
        case("agents", "prefix", tid="prefix-space", prefix="a b"),
        case("agents", "prefix", tid="prefix-star", prefix="*"),
        case("agents", "prefix", tid="prefix-braces", prefix="{a}"),
        case("agents", "prefix", tid="prefix-int", prefix=5),
        case("agents", "prefix", tid="prefix-129-chars", prefix="p" * 129),
        case("agents", "limit", tid="limit-zero", limit=0),
        case("agents", "limit", tid="limit-huge", limit=10_001),
        case("agents", "limit", tid="limit-string", limit="10"),
        case("agents", "limit", tid="limit-bool", limit=True),
    ]
    return cases


CASES = _cases()


def fill(value: Any, agent: str, marker: str) -> Any:
    """The case's arguments with the placeholders replaced for this test."""
    if isinstance(value, dict):
        return {key: fill(item, agent, marker) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, agent, marker) for item in value]
    if value == LONG_AGENT:
        return (marker + "x" * 129)[:129]
    if value == FUTURE:
        return time.time() + 10 * 86400
    if isinstance(value, str):
        return value.replace(AGENT, agent).replace(MARKER, marker)
    return value


def snapshot(env: Env, client: memoryd_client.Client, agent: str) -> dict[str, Any]:
    """What a refused request must leave as it was."""
    return {
        "written_seq": client.status()["wal"]["written_seq"],
        "stats": client.stats(agent),
        "records": list(client.recent(agent, limit=1000)),
        "stored": env.redis_keys(agent) if env.kind == "redis" else env.stored_ids(agent),
    }


@pytest.fixture
def raw(env: Env) -> Iterator[RawConnection]:
    with RawConnection(env.socket_path) as connection:
        yield connection


@pytest.fixture
def prepared(client: memoryd_client.Client, agent: str) -> str:
    """The agent, holding one record (``KEEP``) already in the store."""
    client.add(agent, "discussion", "keep me", id=KEEP, durability="store")
    return agent


@pytest.mark.parametrize(("method", "args", "code", "name"), CASES)
def test_bad_argument_is_refused_naming_it_and_writes_nothing(
    env: Env,
    client: memoryd_client.Client,
    raw: RawConnection,
    prepared: str,
    method: str,
    args: dict[str, Any],
    code: str,
    name: str,
) -> None:
    marker = "mark" + uuid.uuid4().hex[:16]
    before = snapshot(env, client, prepared)

    filled = fill(args, prepared, marker)
    error, result = raw.call(method, filled)

    assert error is not None, f"{method} accepted {args!r}: {result!r}"
    assert result is None
    assert error["code"] == code, error
    assert error["retryable"] is False
    assert name in error["message"], error
    exc = errors.error_from_wire(error)
    assert isinstance(exc, errors.TooLarge if code == "too_large" else errors.InvalidRequest)
    # The connection stays usable after a refused request.
    assert raw.call("ping") == (None, "pong")
    assert snapshot(env, client, prepared) == before
    if marker in repr(filled):
        assert not env.store_has_traces(marker)


def test_unknown_method_names_the_method(
    env: Env, client: memoryd_client.Client, raw: RawConnection, prepared: str
) -> None:
    before = snapshot(env, client, prepared)
    for method in ("colour", "ADD", "add ", "get_all", "_call", "__init__"):
        error, result = raw.call(method, {"agent_id": prepared})
        assert result is None
        assert error is not None and error["code"] == "invalid_request", error
        assert "method" in error["message"] and repr(method) in error["message"], error
        assert isinstance(errors.error_from_wire(error), errors.InvalidRequest)
        error, result = raw.call(method)
        assert error is not None and error["code"] == "invalid_request", error
    assert raw.call("ping") == (None, "pong")
    assert snapshot(env, client, prepared) == before


def test_boundaries_that_are_valid_are_accepted(raw: RawConnection) -> None:
    longest = ("edge" + uuid.uuid4().hex + "z" * 128)[:128]
    error, result = raw.call(
        "add",
        {
            "agent_id": longest,
            "type": "t" * 64,
            "content": nested(MAX_NESTING_DEPTH),
            "metadata": {"k": nested(MAX_NESTING_DEPTH - 1)},
            "importance": 1,
            "tags": [f"t{i}" for i in range(64)],
            "ttl_s": 0,
            "id": "i" * 64,
            "created_at": time.time() + 3600,
        },
    )
    assert error is None, error
    assert result["id"] == "i" * 64
    error, result = raw.call("recent", {"agent_id": longest, "limit": 1000, "since": 0})
    assert error is None, error
    assert [r["id"] for r in result["records"]] == ["i" * 64]
    assert result["records"][0]["content"] == nested(MAX_NESTING_DEPTH)
    assert raw.call("recent", {"agent_id": longest, "limit": 1})[0] is None


# -- through the client library -------------------------------------------------------


def test_client_raises_invalid_request_naming_the_argument(
    env: Env, client: memoryd_client.Client, prepared: str
) -> None:
    before = snapshot(env, client, prepared)
    with pytest.raises(errors.InvalidRequest) as caught:
        client.add("craftsman 1", "discussion", "x")
    assert "agent_id" in caught.value.message
    assert caught.value.code == "invalid_request"
    with pytest.raises(errors.InvalidRequest, match="importance"):
        client.add(prepared, "discussion", "x", importance=2)
    with pytest.raises(errors.InvalidRequest, match="ttl_s"):
        client.add(prepared, "discussion", "x", ttl_s=-1)
    with pytest.raises(errors.InvalidRequest, match="content"):
        client.add(prepared, "discussion", None)
    with pytest.raises(errors.InvalidRequest, match="limit"):
        client.recent(prepared, limit=0)
    with pytest.raises(errors.InvalidRequest, match="order"):
        client.recent(prepared, order="sideways")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequest, match="types"):
        client.search(prepared, "x", types=[])
    with pytest.raises(errors.InvalidRequest, match="nothing to update"):
        client.update(prepared, KEEP)
    with pytest.raises(errors.InvalidRequest, match="durability"):
        client.add(prepared, "discussion", "x", durability="disk")  # type: ignore[arg-type]
    assert snapshot(env, client, prepared) == before


def test_client_raises_too_large_naming_content_or_metadata(
    env: Env, client: memoryd_client.Client, prepared: str
) -> None:
    before = snapshot(env, client, prepared)
    with pytest.raises(errors.TooLarge) as caught:
        client.add(prepared, "discussion", BIG)
    assert "content" in caught.value.message
    assert caught.value.code == "too_large"
    with pytest.raises(errors.TooLarge, match="metadata"):
        client.add(prepared, "discussion", "small", metadata={"blob": BIG})
    with pytest.raises(errors.TooLarge, match="content"):
        client.update(prepared, KEEP, content=BIG)
    assert snapshot(env, client, prepared) == before
    assert client.get(prepared, KEEP)["content"] == "keep me"


def test_add_many_with_one_bad_record_writes_none_of_them(
    env: Env, client: memoryd_client.Client, prepared: str
) -> None:
    other = new_agent("other")
    before = snapshot(env, client, prepared)
    records: list[dict[str, Any]] = [
        {"agent_id": prepared, "type": "discussion", "content": "good 0", "id": "g0"},
        {"agent_id": other, "type": "discussion", "content": "good 1", "id": "g1"},
        {"agent_id": prepared, "type": "discussion", "content": "bad", "importance": 7},
        {"agent_id": prepared, "type": "discussion", "content": "good 3", "id": "g3"},
    ]
    with pytest.raises(errors.InvalidRequest) as caught:
        client.add_many(records)
    assert "records[2].importance" in caught.value.message
    assert snapshot(env, client, prepared) == before
    for agent_id, record_id in ((prepared, "g0"), (other, "g1"), (prepared, "g3")):
        with pytest.raises(errors.NotFound):
            client.get(agent_id, record_id)
    assert client.stats(other)["count"] == 0
    assert other not in client.agents(prefix=other)


def test_content_nested_a_thousand_levels_is_refused_and_writes_nothing(
    env: Env, client: memoryd_client.Client, raw: RawConnection, prepared: str
) -> None:
    """The depth an older memoryd accepted, and that then broke search and export."""
    before = snapshot(env, client, prepared)
    thousand = nested(1000)
    requests = [
        ("add", {**GOOD_RECORD, "agent_id": prepared, "content": thousand}, "content"),
        ("add", {**GOOD_RECORD, "agent_id": prepared, "metadata": {"k": thousand}}, "metadata"),
        (
            "add_many",
            {
                "records": [{**GOOD_RECORD, "agent_id": prepared}] * 3
                + [{**GOOD_RECORD, "agent_id": prepared, "metadata": {"k": thousand}}]
            },
            "records[3].metadata",
        ),
        ("update", {"agent_id": prepared, "id": KEEP, "content": thousand}, "content"),
    ]
    for method, args, name in requests:
        error, result = raw.call(method, args)
        assert result is None and error is not None, method
        assert error["code"] == "invalid_request", error
        assert error["message"].startswith(f"{name}: "), error
        assert f"more than {MAX_NESTING_DEPTH} levels" in error["message"], error
    assert snapshot(env, client, prepared) == before
    assert [r["id"] for r in client.search(prepared, "keep")] == [KEEP]


def test_clear_with_a_wildcard_clears_nobody(
    env: Env, client: memoryd_client.Client, prepared: str
) -> None:
    bystander = new_agent("bystander")
    client.add(bystander, "discussion", "still here", durability="store")
    for pattern in ("*", "agent:*", prepared[:4] + "*", "?" * 8, "[a-z]*", ""):
        with pytest.raises(errors.InvalidRequest, match="agent_id"):
            client.clear(pattern)
    assert client.stats(prepared)["count"] == 1
    assert client.stats(bystander)["count"] == 1
