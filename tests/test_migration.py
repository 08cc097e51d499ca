"""Moving data: TableRound's file store in (`import-legacy`), and JSON Lines out and in."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from memoryd.validation import MAX_NESTING_DEPTH
from memoryd_client import Client, errors
from tests.daemons import Env, eventually, new_agent, run_cli
from tests.harness import Daemon, RedisServer


def write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2), encoding="utf-8")


def legacy_store(root: Path) -> dict[str, str]:
    """A data/ directory as TableRound left it: good, truncated, invalid and mixed agents."""
    tags = ("good", "singles", "truncated", "invalid", "mixed", "nulled")
    agents = {tag: new_agent(tag) for tag in tags}
    memories = root / "memories"
    write_json(
        memories / agents["good"] / "memory.json",
        [
            {
                "type": "introduction",
                "content": {"role": "手工艺人", "content": "你好"},
                "timestamp": 1749371468.5,
            },
            {
                "type": "discussion",
                "content": {"role": "手工艺人", "content": "第一"},
                "timestamp": 1749371470.0,
            },
            {"type": "keywords", "content": {"keywords": ["竹"]}, "timestamp": 1749371470.0},
        ],
    )
    for name, kind, ts in (
        ("1747829891_introduction.json", "introduction", 1747829891),
        ("1747829909_discussion.json", "discussion", 1747829909),
    ):
        write_json(
            memories / agents["singles"] / name,
            {"type": kind, "timestamp": ts, "content": {"content": name}},
        )
    good = json.dumps(
        [{"type": "discussion", "content": {"content": "完整"}, "timestamp": 1749371400.0}] * 3
    )
    truncated = memories / agents["truncated"] / "memory.json"
    truncated.parent.mkdir(parents=True)
    truncated.write_text(good[: len(good) // 2], encoding="utf-8")
    write_json(
        memories / agents["invalid"] / "memory.json",
        [
            {"type": "discussion", "content": {"content": "好的"}, "timestamp": 1749371400.0},
            {"type": "不是类型", "content": {}, "timestamp": 1749371401.0},
        ],
    )
    write_json(
        memories / agents["mixed"] / "memory.json",
        [{"type": "discussion", "content": {"content": "留下"}, "timestamp": 1749371400.0}],
    )
    (memories / agents["mixed"] / "1747829891_introduction.json").write_text(
        '{"type": "intro', encoding="utf-8"
    )
    write_json(
        memories / agents["nulled"] / "memory.json",
        [{"type": "discussion", "content": None, "timestamp": 1749371400.0}],
    )
    (memories / "bad name!").mkdir()
    return agents


def test_import_legacy_keeps_times_and_order_skips_bad_files_and_is_idempotent(
    env: Env, tmp_path: Path
) -> None:
    agents = legacy_store(tmp_path / "data")
    socket = str(env.socket_path)
    dry = run_cli("import-legacy", str(tmp_path / "data"), "--socket", socket, "--dry-run")
    assert dry.returncode == 1 and "checked 6 records of 3 agents from 4 files" in dry.stdout
    with env.client() as client:
        assert list(client.recent(agents["good"])) == []
        for _attempt in range(2):
            done = run_cli("import-legacy", str(tmp_path / "data"), "--socket", socket)
            assert done.returncode == 1, done.stderr
            assert "imported 6 records of 3 agents from 4 files; skipped 5 files" in done.stdout
            good = client.recent(agents["good"], order="oldest", limit=10)
            assert [r["created_at"] for r in good] == [1749371468.5, 1749371470.0, 1749371470.0]
            assert [r["type"] for r in good] == ["introduction", "discussion", "keywords"]
            assert good[0]["content"] == {"role": "手工艺人", "content": "你好"}
        singles = client.recent(agents["singles"], order="oldest")
        assert [r["created_at"] for r in singles] == [1747829891, 1747829909]
        assert list(client.recent(agents["truncated"])) == []
        assert list(client.recent(agents["invalid"])) == []  # never half-imported
        assert [r["content"] for r in client.recent(agents["mixed"])] == [{"content": "留下"}]
    report = done.stdout
    assert f"{agents['truncated']}/memory.json: invalid or truncated JSON" in report
    assert f"{agents['invalid']}/memory.json: record 1: type:" in report
    assert "1747829891_introduction.json: invalid or truncated JSON" in report
    assert "bad name!: directory name: agent_id:" in report
    assert f"{agents['nulled']}/memory.json: record 0: content: is missing or null" in report


def test_import_legacy_skips_files_nested_too_deeply(env: Env, tmp_path: Path) -> None:
    """Content deeper than memoryd accepts, and JSON deeper than the json module reads."""
    memories = tmp_path / "data" / "memories"
    deep, deeper, fine = new_agent("deep"), new_agent("deeper"), new_agent("fine")
    too_deep: object = "x"
    for _ in range(MAX_NESTING_DEPTH + 1):
        too_deep = [too_deep]
    write_json(
        memories / deep / "memory.json",
        [{"type": "discussion", "content": too_deep, "timestamp": 1749371400.0}],
    )
    # Written by hand: json.dumps itself cannot nest 3,000 levels.
    (memories / deeper).mkdir(parents=True)
    (memories / deeper / "memory.json").write_text(
        '[{"type": "discussion", "timestamp": 1749371400.0, "content": '
        + "[" * 3000
        + '"x"'
        + "]" * 3000
        + "}]",
        encoding="utf-8",
    )
    write_json(
        memories / fine / "memory.json",
        [{"type": "discussion", "content": {"content": "好"}, "timestamp": 1749371400.0}],
    )
    done = run_cli("import-legacy", str(tmp_path / "data"), "--socket", str(env.socket_path))
    assert done.returncode == 1, done.stderr
    assert "imported 1 records of 1 agents from 1 files; skipped 2 files" in done.stdout
    assert (
        f"{deep}/memory.json: record 0: content: maps and arrays nested more than "
        f"{MAX_NESTING_DEPTH} levels deep" in done.stdout
    )
    assert f"{deeper}/memory.json: JSON nested too deeply to read" in done.stdout
    with env.client() as client:
        assert client.stats(deep)["count"] == 0 and client.stats(deeper)["count"] == 0
        assert [r["content"] for r in client.recent(fine)] == [{"content": "好"}]


def test_import_legacy_of_a_missing_directory_says_so(env: Env, tmp_path: Path) -> None:
    done = run_cli("import-legacy", str(tmp_path / "nowhere"), "--socket", str(env.socket_path))
    assert done.returncode == 2 and "is not a directory" in done.stderr


def seed(env: Env, prefix: str) -> None:
    with env.client() as client:
        client.add_many(
            [
                {"agent_id": f"{prefix}-a", "type": "note", "content": "纯文本", "ttl_s": 0},
                {
                    "agent_id": f"{prefix}-a",
                    "type": "speech",
                    "content": {"blob": b"\x00\xffbytes", "nested": [1, 2.5, None, True]},
                    "author": "designer_1",
                    "importance": 0.9,
                    "tags": ["voting", "stage:2"],
                    "metadata": {"source": "test", "raw": b"\x01"},
                },
                *(
                    {"agent_id": f"{prefix}-b", "type": "discussion", "content": {"n": n}}
                    for n in range(5)
                ),
            ]
        )


def export(env: Env, out: Path, *selector: str) -> str:
    done = run_cli("export", *selector, "-o", str(out), "--socket", str(env.socket_path))
    assert done.returncode == 0, done.stderr
    return out.read_text(encoding="utf-8")


def test_export_then_import_is_equal_between_the_two_stores(
    redis_env: Env, local_env: Env, tmp_path: Path
) -> None:
    prefix = new_agent("move")
    seed(redis_env, prefix)
    from_redis = export(redis_env, tmp_path / "redis.jsonl", "--prefix", prefix)
    lines = from_redis.splitlines()
    assert len(lines) == 7
    assert json.loads(lines[1])["content"]["blob"] == {"$bytes": "AP9ieXRlcw=="}
    for _attempt in range(2):  # a second import adds nothing
        done = run_cli(
            "import", str(tmp_path / "redis.jsonl"), "--socket", str(local_env.socket_path)
        )
        assert done.returncode == 0, done.stderr
        assert "imported 7 records of 2 agents" in done.stdout
        assert export(local_env, tmp_path / "local.jsonl", "--prefix", prefix) == from_redis
    only_b = export(local_env, tmp_path / "b.jsonl", "--agent", f"{prefix}-b")
    assert only_b.splitlines() == lines[2:]
    with local_env.client() as client:
        (speech,) = client.recent(f"{prefix}-a", types=["speech"])
        assert (
            speech["content"]["blob"] == b"\x00\xffbytes" and speech["metadata"]["raw"] == b"\x01"
        )


def test_import_reports_bad_lines_and_skips_expired_records(env: Env, tmp_path: Path) -> None:
    agent = new_agent("lines")
    good = {
        "id": "g1",
        "agent_id": agent,
        "type": "note",
        "content": "好",
        "created_at": 1749371400.0,
    }
    expired = {**good, "id": "e1", "expires_at": 1000.0}
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps(good, ensure_ascii=False),
                "{not json",
                json.dumps({**good, "id": "x1", "agent_id": "bad agent"}),
                json.dumps({"id": "m1"}),
                json.dumps(expired),
                "",
                json.dumps({**good, "id": "u1", "colour": "red"}),
                json.dumps({**good, "id": "i1", "importance": 7}),
            ]
        ),
        encoding="utf-8",
    )
    done = run_cli("import", str(source), "--socket", str(env.socket_path))
    assert done.returncode == 1
    assert "imported 1 records of 1 agents; 1 already expired, 5 bad lines" in done.stdout
    assert "line 2: invalid JSON" in done.stdout
    assert "line 3: agent_id:" in done.stdout
    assert "line 4: missing agent_id, type, content, created_at" in done.stdout
    assert "line 7: unknown fields colour" in done.stdout
    assert "line 8: importance:" in done.stdout
    with env.client() as client:
        assert [r["id"] for r in client.recent(agent)] == ["g1"]


def test_an_export_that_fails_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "backup.jsonl"
    done = run_cli("export", "--all", "-o", str(out), "--socket", str(tmp_path / "no.sock"))
    assert done.returncode == 2 and "export stopped" in done.stderr
    assert not out.exists() and not (tmp_path / "backup.jsonl.partial").exists()


def test_an_add_may_carry_its_expiry_itself(env: Env) -> None:
    agent = new_agent("expiry")
    later = time.time() + 3600.5
    with env.client() as client:
        (kept,) = client.add_many(
            [{"agent_id": agent, "type": "note", "content": "x", "expires_at": later}]
        )
        assert client.get(agent, kept)["expires_at"] == later
        with pytest.raises(errors.InvalidRequest, match=r"records\[0\]\.expires_at: give ttl_s or"):
            client.add_many(
                [
                    {
                        "agent_id": agent,
                        "type": "note",
                        "content": "y",
                        "expires_at": later,
                        "ttl_s": 5,
                    }
                ]
            )
        with pytest.raises(errors.InvalidRequest, match=r"records\[0\]\.expires_at"):
            client.add_many([{"agent_id": agent, "type": "note", "content": "z", "expires_at": -1}])
        assert [r["id"] for r in client.recent(agent)] == [kept]


def test_export_finds_every_agent_past_the_agents_limit(
    private_redis: RedisServer, daemon_dir: Daemon, tmp_path: Path
) -> None:
    """`agents` answers at most 10,000 ids: the export splits the prefix until each part fits."""
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    prefix = new_agent("many")
    count = 10_001
    with Client(daemon.socket_path, timeout_s=60) as client:
        for first in range(0, count, 1000):
            batch = range(first, min(first + 1000, count))
            client.add_many(
                [{"agent_id": f"{prefix}-{n:05d}", "type": "note", "content": n} for n in batch]
            )
    out = tmp_path / "many.jsonl"
    done = run_cli(
        "export",
        "--prefix",
        prefix,
        "-o",
        str(out),
        "--socket",
        str(daemon.socket_path),
        timeout_s=120,
    )
    assert done.returncode == 0, done.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == count
    assert [json.loads(line)["content"] for line in lines] == list(range(count))


def test_an_export_while_the_store_is_down_fails_and_keeps_the_old_backup(
    private_redis: RedisServer, daemon_dir: Daemon, tmp_path: Path
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    backup = tmp_path / "backup.jsonl"
    backup.write_text("the last good backup\n", encoding="utf-8")
    with Client(daemon.socket_path) as client:
        client.add("kept", "note", "x", durability="store")
        private_redis.kill()
        eventually(lambda: client.status()["state"], lambda state: state == "degraded")
    done = run_cli("export", "--all", "-o", str(backup), "--socket", str(daemon.socket_path))
    assert done.returncode == 2 and "the store is unreachable" in done.stderr
    assert backup.read_text(encoding="utf-8") == "the last good backup\n"


def test_an_import_batch_out_of_bounds_is_refused_by_name(tmp_path: Path) -> None:
    done = run_cli("import", str(tmp_path / "x.jsonl"), "--batch", "5000")
    assert done.returncode == 2 and "argument --batch: must be 1-1000, not 5000" in done.stderr
