"""memoryd.config: where each setting comes from, and how secrets are shown.

Precedence: CLI overrides > MEMORYD_* environment > the original system's
variables > TOML file > defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from memoryd.config import Settings, load_settings, mask_url
from memoryd.errors import ConfigError
from memoryd.redis_url import RedisUrlError, masked
from memoryd.redis_url import parse as parse_url


@pytest.fixture(autouse=True)
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No variable of ours from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith(("MEMORYD_", "REDIS_", "ENABLE_REDIS", "MEMORY_")):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    config = tmp_path / "memoryd.toml"
    config.write_text(
        "max_memories = 50\n"
        "default_ttl_s = 100\n"
        'wal_fsync = "everysec"\n'
        'redis_url = "redis://toml-host:1/0"\n'
        "max_batch = 7\n"
    )
    return config


def test_defaults() -> None:
    settings = load_settings()
    assert settings.max_memories == 1000
    assert settings.default_ttl_s == 604_800
    assert settings.wal_fsync == "always"
    assert settings.wal_max_bytes == 1024**3
    assert settings.max_record_bytes == 64 * 1024
    assert settings.max_batch == 1000
    assert settings.backend == "auto"
    assert settings.redis_url == ""
    assert settings.key_prefix == ""
    assert settings.store_kind == "local"


def test_toml_file_beats_defaults(toml: Path) -> None:
    settings = load_settings(toml)
    assert settings.max_memories == 50
    assert settings.default_ttl_s == 100
    assert settings.wal_fsync == "everysec"
    assert settings.redis_url == "redis://toml-host:1/0"
    assert settings.store_kind == "redis"
    assert settings.max_batch == 7
    assert settings.max_record_bytes == 64 * 1024  # not in the file: the default


def test_legacy_variables_beat_the_toml_file(environ: pytest.MonkeyPatch, toml: Path) -> None:
    environ.setenv("MEMORY_MAX_SIZE", "70")
    environ.setenv("MEMORY_TTL", "60")
    environ.setenv("REDIS_URL", "redis://legacy-host:2/0")
    settings = load_settings(toml)
    assert settings.max_memories == 70
    assert settings.default_ttl_s == 60
    assert settings.redis_url == "redis://legacy-host:2/0"
    assert settings.wal_fsync == "everysec"  # only in the file


def test_memoryd_variables_beat_legacy_ones(environ: pytest.MonkeyPatch, toml: Path) -> None:
    environ.setenv("MEMORY_MAX_SIZE", "70")
    environ.setenv("MEMORYD_MAX_MEMORIES", "80")
    environ.setenv("MEMORY_TTL", "60")
    environ.setenv("MEMORYD_DEFAULT_TTL_S", "90")
    environ.setenv("REDIS_URL", "redis://legacy-host:2/0")
    environ.setenv("MEMORYD_REDIS_URL", "redis://new-host:3/0")
    environ.setenv("MEMORYD_WAL_FSYNC", "no")
    settings = load_settings(toml)
    assert settings.max_memories == 80
    assert settings.default_ttl_s == 90
    assert settings.redis_url == "redis://new-host:3/0"
    assert settings.wal_fsync == "no"


def test_cli_overrides_beat_everything(environ: pytest.MonkeyPatch, toml: Path) -> None:
    environ.setenv("MEMORYD_WAL_FSYNC", "no")
    environ.setenv("MEMORYD_REDIS_URL", "redis://env-host:3/0")
    environ.setenv("REDIS_URL", "redis://legacy-host:2/0")
    environ.setenv("MEMORYD_BACKEND", "redis")
    settings = load_settings(
        toml,
        wal_fsync="always",
        redis_url="redis://cli-host:4/0",
        backend="local",
        socket_path=Path("/tmp/cli.sock"),
    )
    assert settings.wal_fsync == "always"
    assert settings.redis_url == "redis://cli-host:4/0"
    assert settings.backend == "local"
    assert settings.store_kind == "local"
    assert settings.socket_path == Path("/tmp/cli.sock")


def test_cli_overrides_left_as_none_do_not_count(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("MEMORYD_WAL_FSYNC", "everysec")
    settings = load_settings(None, wal_fsync=None, redis_url=None, backend=None)
    assert settings.wal_fsync == "everysec"
    assert settings.backend == "auto"


@pytest.mark.parametrize(
    ("variables", "url"),
    [
        ({"REDIS_HOST": "r.example"}, "redis://r.example:6379/0"),
        ({"REDIS_PORT": "6380"}, "redis://localhost:6380/0"),
        ({"REDIS_DB": "3"}, "redis://localhost:6379/3"),
        (
            {"REDIS_HOST": "h", "REDIS_PORT": "1", "REDIS_DB": "2", "REDIS_PASSWORD": "pw"},
            "redis://:pw@h:1/2",
        ),
        (
            {"REDIS_HOST": "h", "REDIS_USERNAME": "user", "REDIS_PASSWORD": "pw"},
            "redis://user:pw@h:6379/0",
        ),
        ({"REDIS_HOST": "h", "REDIS_USERNAME": "user"}, "redis://user@h:6379/0"),
        (
            {"REDIS_HOST": "h", "REDIS_USERNAME": "a@b", "REDIS_PASSWORD": "p:w/@d%"},
            "redis://a%40b:p%3Aw%2F%40d%25@h:6379/0",
        ),
        (
            {"REDIS_HOST": "h", "REDIS_PORT": "1", "REDIS_URL": "redis://url-host:9/9"},
            "redis://url-host:9/9",
        ),
    ],
    ids=[
        "host",
        "port",
        "db",
        "host-port-db-password",
        "user-password",
        "user-only",
        "quoted",
        "url-beats-parts",
    ],
)
def test_legacy_redis_variables_build_the_url(
    environ: pytest.MonkeyPatch, variables: dict[str, str], url: str
) -> None:
    for name, value in variables.items():
        environ.setenv(name, value)
    settings = load_settings()
    assert settings.redis_url == url
    assert settings.store_kind == "redis"


def test_a_legacy_password_never_shows_in_the_masked_settings(
    environ: pytest.MonkeyPatch,
) -> None:
    environ.setenv("REDIS_HOST", "h")
    environ.setenv("REDIS_PASSWORD", "hunter2")
    masked = load_settings().masked()
    assert "hunter2" not in repr(masked)
    assert masked["redis_url"] == "redis://:***@h:6379/0"
    assert masked["store"] == "redis"


@pytest.mark.parametrize(
    "value", ["false", "False", "FALSE", "0", "no", "off", "false  # comment", " false #x"]
)
def test_enable_redis_false_means_the_local_backend(
    environ: pytest.MonkeyPatch, value: str
) -> None:
    environ.setenv("REDIS_URL", "redis://h:1/0")
    environ.setenv("ENABLE_REDIS", value)
    settings = load_settings()
    assert settings.backend == "local"
    assert settings.store_kind == "local"
    assert settings.redis_url == "redis://h:1/0"


@pytest.mark.parametrize("value", ["true", "True", "1", "yes", "true  # comment"])
def test_enable_redis_true_leaves_the_backend_alone(
    environ: pytest.MonkeyPatch, value: str
) -> None:
    environ.setenv("REDIS_URL", "redis://h:1/0")
    environ.setenv("ENABLE_REDIS", value)
    settings = load_settings()
    assert settings.backend == "auto"
    assert settings.store_kind == "redis"


def test_memoryd_backend_beats_enable_redis(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("REDIS_URL", "redis://h:1/0")
    environ.setenv("ENABLE_REDIS", "false")
    environ.setenv("MEMORYD_BACKEND", "redis")
    assert load_settings().store_kind == "redis"


def test_enable_redis_with_a_bad_value_names_it(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("ENABLE_REDIS", "perhaps")
    with pytest.raises(ConfigError, match="ENABLE_REDIS"):
        load_settings()


def test_legacy_sizes_map_to_settings(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("MEMORY_MAX_SIZE", "250")
    environ.setenv("MEMORY_TTL", "0")
    settings = load_settings()
    assert settings.max_memories == 250
    assert settings.default_ttl_s == 0


@pytest.mark.parametrize(
    ("backend", "redis_url", "kind"),
    [
        ("auto", "", "local"),
        ("auto", "redis://h:1/0", "redis"),
        ("auto", "unix:///tmp/redis.sock", "redis"),
        ("local", "redis://h:1/0", "local"),
        ("redis", "redis://h:1/0", "redis"),
        ("local", "", "local"),
    ],
)
def test_store_kind_resolution(
    environ: pytest.MonkeyPatch, backend: str, redis_url: str, kind: str
) -> None:
    environ.setenv("MEMORYD_BACKEND", backend)
    environ.setenv("MEMORYD_REDIS_URL", redis_url)
    assert load_settings().store_kind == kind


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("", ""),
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis://u:secret@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:secret@h:1/0", "redis://:***@h:1/0"),
        ("rediss://user:secret@h.example:6380/2", "rediss://user:***@h.example:6380/2"),
        ("redis://u:sec@ret@h:1/0", "redis://u:***@h:1/0"),
        ("redis://u@h:1/0", "redis://u@h:1/0"),
        ("unix://:secret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        (
            "redis+sentinel://:secret@s1:26379,s2:26380/mymaster/2?sentinel_password=secret",
            "redis+sentinel://:***@s1:26379,s2:26380/mymaster/2?sentinel_password=***",
        ),
        # Not a URL memoryd takes: nothing of it shows but a scheme of ours.
        ("redis://:secret@h:abc/0", "redis://***"),
        ("secret:whatever@h:1/0", "***"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "secret" not in mask_url(url)
    assert "ret@" not in mask_url(url)


def test_masked_settings_hide_the_password_only(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("MEMORYD_REDIS_URL", "redis://u:topsecret@h:1/0")
    settings = load_settings()
    assert settings.redis_url == "redis://u:topsecret@h:1/0"  # the real value is kept
    masked = settings.masked()
    assert "topsecret" not in repr(masked)
    assert masked["redis_url"] == "redis://u:***@h:1/0"
    assert masked["max_memories"] == 1000
    assert set(Settings.model_fields) <= set(masked)


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("MEMORYD_MAX_MEMORIES", "0", "max_memories"),
        ("MEMORYD_MAX_MEMORIES", "ten", "max_memories"),
        ("MEMORYD_WAL_FSYNC", "sometimes", "wal_fsync"),
        ("MEMORYD_BACKEND", "postgres", "backend"),
        ("MEMORYD_REDIS_URL", "http://h:1/0", "redis_url"),
        ("MEMORYD_KEY_PREFIX", "a{b}", "key_prefix"),
        ("MEMORYD_DEFAULT_TTL_S", "-5", "default_ttl_s"),
        ("MEMORYD_MAX_RECORD_BYTES", "10", "max_record_bytes"),
        ("MEMORYD_WAL_MAX_BYTES", "1000", "wal_max_bytes"),
        ("MEMORY_MAX_SIZE", "0", "max_memories"),
        ("MEMORY_TTL", "a week", "default_ttl_s"),
        ("REDIS_URL", "mysql://h", "redis_url"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_setting(
    environ: pytest.MonkeyPatch, variable: str, value: str, setting: str
) -> None:
    environ.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert setting in message
    assert "\n" not in message


def test_unknown_key_in_the_toml_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "memoryd.toml"
    config.write_text('colour = "blue"\nmax_memories = 5\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "colour" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_toml_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("max_memories = [1,\n")
    with pytest.raises(ConfigError, match="broken.toml"):
        load_settings(broken)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('max_memories = "many"\n')
    with pytest.raises(ConfigError, match="max_memories"):
        load_settings(wrong)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://u:pw@s1,s2:26380/mymaster/3?sentinel_username=su&sentinel_password=sp",
            {
                "topology": "sentinel",
                "hosts": (("s1", 26379), ("s2", 26380)),
                "service_name": "mymaster",
                "db": 3,
                "username": "u",
                "password": "pw",
                "sentinel_username": "su",
                "sentinel_password": "sp",
                "tls": False,
            },
        ),
        (
            "rediss+sentinel://s1:5000/m?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c&ssl_keyfile=/k",
            {
                "topology": "sentinel",
                "db": 0,
                "tls": True,
                "tls_options": {
                    "ssl_ca_certs": "/etc/ca.pem",
                    "ssl_certfile": "/c",
                    "ssl_keyfile": "/k",
                },
            },
        ),
        ("rediss://h:1/0?ssl_ca_certs=/ca", {"topology": "standalone", "tls": True}),
        ("redis://h/4", {"topology": "standalone", "hosts": (("h", 6379),), "db": 4}),
    ],
)
def test_redis_urls_of_every_topology_parse_whole(url: str, expected: dict[str, object]) -> None:
    parsed = parse_url(url)
    for name, value in expected.items():
        assert getattr(parsed, name) == value, name


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s1:26379", "needs the master's name"),
        ("redis+sentinel://s1:26379/m/x", "the db must be a whole number"),
        ("redis://h1:1,h2:2/0", "one host only"),
        ("redis+sentinel://s1/m?ssl_ca_certs=/ca", "unknown option 'ssl_ca_certs'"),
        ("redis://h:1/0?sentinel_password=x", "unknown option 'sentinel_password'"),
        ("redis+cluster://h1:1,h2:2/3", "takes no /db"),
        ("redis+sentinel://s1,:26379/m", "needs a host"),
    ],
)
def test_a_wrong_url_of_any_topology_names_its_problem(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError, match=re.escape(problem)):
        parse_url(url)


def test_a_cluster_url_is_taken_and_shown_without_its_password(
    environ: pytest.MonkeyPatch,
) -> None:
    environ.setenv("MEMORYD_REDIS_URL", "redis+cluster://u:s3cret@h1:7000,h2:7001")
    settings = load_settings()
    assert parse_url(settings.redis_url).hosts == (("h1", 7000), ("h2", 7001))
    assert masked(settings.redis_url) == "redis+cluster://u:***@h1:7000,h2:7001"
