"""Settings: command-line flags > ``MEMORYD_*`` environment > the original
system's variables > TOML file > defaults.

The original TableRound variables (``REDIS_HOST``, ``ENABLE_REDIS``,
``MEMORY_MAX_SIZE``...) are honoured so that its deployments keep working;
a ``MEMORYD_*`` variable always wins over its legacy counterpart.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from memoryd.errors import ConfigError
from memoryd.redis_url import RedisUrl
from memoryd.redis_url import masked as masked_url
from memoryd.redis_url import parse as parse_url
from memoryd_client import peer, wire

ENV_PREFIX = "MEMORYD_"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/memoryd")
    return Path.home() / ".local" / "share" / "memoryd"


class Settings(BaseSettings):
    """Every knob of the daemon.  ``config/memoryd.toml`` documents each one."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    # Where clients connect and where state lives.
    socket_path: Path = Field(default_factory=lambda: Path(wire.default_socket_path()))
    # The socket is the door agents come in by: group members may use it (the contract's 0660).
    socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    data_dir: Path = Field(default_factory=_default_data_dir)

    # The store.
    backend: Literal["auto", "redis", "local"] = "auto"
    redis_url: str = ""
    redis_pool_size: int = Field(default=32, ge=1, le=10_000)
    redis_socket_timeout_s: float = Field(default=1.0, gt=0, le=300)
    redis_connect_timeout_s: float = Field(default=1.0, gt=0, le=300)
    redis_retries: int = Field(default=2, ge=0, le=20)
    key_prefix: str = Field(default="", max_length=64)
    # Replicas a write must reach (WAIT) before the WAL lets it go; None: every
    # replica the master reports, on a Sentinel set at least one (RedisStore.durability).
    redis_min_replicas: int | None = Field(default=None, ge=0, le=100)

    # Records.
    max_memories: int = Field(default=1000, ge=1, le=10_000_000)
    default_ttl_s: int = Field(default=604_800, ge=0)
    max_record_bytes: int = Field(default=64 * KiB, ge=256, le=64 * MiB)
    max_batch: int = Field(default=wire.DEFAULT_MAX_BATCH, ge=1, le=100_000)
    sweep_interval_s: float = Field(default=60.0, gt=0)

    # The write-ahead log.
    wal_fsync: Literal["always", "everysec", "no"] = "always"
    wal_max_bytes: int = Field(default=1 * GiB, ge=1 * MiB)
    # Past this little free space under data_dir, writes get wal_full too.
    min_free_disk_bytes: int = Field(default=64 * MiB, ge=0)
    wal_segment_bytes: int = Field(default=64 * MiB, ge=4 * KiB, le=1 * GiB)
    checkpoint_interval_s: float = Field(default=1.0, gt=0, le=3600)
    flush_batch_max: int = Field(default=512, ge=1, le=100_000)
    # Bounded in bytes too, so one batch never outlasts redis_socket_timeout_s.
    flush_batch_max_bytes: int = Field(default=4 * MiB, ge=64 * KiB, le=256 * MiB)
    # Applied writes the store has not confirmed durable (no persistence, AOF
    # once a second) stay in the WAL within these bounds, to be applied again if
    # the store loses them (memoryd.durability).  At most a day: the stores keep
    # the numbers that make applying again safe that long (APPLIED_KEPT_S).
    wal_retain_bytes: int = Field(default=256 * MiB, ge=0)
    wal_retain_s: float = Field(default=3600.0, ge=0, le=86_400)

    # The read cache (memoryd.cache): answers reads from memory where it is
    # exact, and anything it holds while the store is down.
    read_cache_per_agent: int = Field(default=32, ge=0, le=10_000)
    read_cache_records: int = Field(default=20_000, ge=0, le=10_000_000)

    # Connections and requests.
    max_message_bytes: int = Field(default=wire.DEFAULT_MAX_MESSAGE_BYTES, ge=4 * KiB, le=512 * MiB)
    max_connections: int = Field(default=1024, ge=1)
    max_connections_per_uid: int = Field(default=256, ge=1)
    # Once a message has started, all of it must arrive within this.
    message_timeout_s: float = Field(default=10.0, gt=0)
    # A connection with nothing received and nothing running for this long is closed (0: never).
    idle_timeout_s: float = Field(default=300.0, ge=0)
    max_inflight_per_connection: int = Field(default=128, ge=1, le=100_000)
    request_timeout_s: float = Field(default=10.0, gt=0)
    # How long a read waits for the agent's own writes to reach a healthy store
    # before laying them over the store's answer instead.
    read_barrier_timeout_s: float = Field(default=0.05, ge=0, le=10)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    SECRET_FIELDS: ClassVar[frozenset[str]] = frozenset({"redis_url"})

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: object) -> object:
        # A mode written as text is octal, as chmod(1) reads it: "0660", "0o660".
        if isinstance(value, str):
            try:
                return int(value.strip().lower().removeprefix("0o"), 8)
            except ValueError:
                raise ValueError("must be an octal file mode such as 0660") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _whole_url(cls, value: str) -> str:
        if value:
            parse_url(value)  # a RedisUrlError is a ValueError, naming the part
        return value

    @field_validator("data_dir")
    @classmethod
    def _directory(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _no_hash_tag(cls, value: str) -> str:
        if any(char in value for char in "{}*?[] "):
            raise ValueError("must not contain braces, wildcards or spaces")
        return value

    @property
    def store_kind(self) -> Literal["redis", "local"]:
        if self.backend == "auto":
            return "redis" if self.redis_url else "local"
        return self.backend

    @property
    def redis(self) -> RedisUrl:
        """The parsed redis_url (checked when the settings were read)."""
        return parse_url(self.redis_url)

    def masked(self) -> dict[str, Any]:
        """Every setting, with passwords masked, as check-config prints them."""
        values = self.model_dump(mode="json")
        values["redis_url"] = mask_url(self.redis_url)
        values["socket_mode"] = f"0{self.socket_mode:o}"
        values["store"] = self.store_kind
        return values

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            LegacyEnvSource(settings_cls),
            TomlConfigSettingsSource(settings_cls),
        )


_LEGACY_REDIS_PARTS = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_USERNAME")


def _legacy_bool(raw: str) -> bool:
    # The original system lost a release to `ENABLE_REDIS=true  # comment`.
    word = raw.split("#", 1)[0].strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"ENABLE_REDIS: expected true or false, got {raw!r}")


class LegacyEnvSource(PydanticBaseSettingsSource):
    """The environment variables of the original TableRound system."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ below does the work.

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        # An exported but empty variable counts as unset, as in a shell script.
        env = {name: value for name, value in os.environ.items() if value.strip()}
        if "MEMORY_MAX_SIZE" in env:
            values["max_memories"] = env["MEMORY_MAX_SIZE"]
        if "MEMORY_TTL" in env:
            values["default_ttl_s"] = env["MEMORY_TTL"]
        if "REDIS_URL" in env:
            values["redis_url"] = env["REDIS_URL"]
        elif any(name in env for name in _LEGACY_REDIS_PARTS):
            values["redis_url"] = _url_from_parts(env)
        if "ENABLE_REDIS" in env and not _legacy_bool(env["ENABLE_REDIS"]):
            values["backend"] = "local"
        return values


def _url_from_parts(env: dict[str, str]) -> str:
    host = env.get("REDIS_HOST", "localhost")
    port = env.get("REDIS_PORT", "6379").strip()
    db = env.get("REDIS_DB", "0").strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"REDIS_PORT: must be a number from 1 to 65535, not {port[:20]!r}")
    if not db.isdigit():
        raise ConfigError(f"REDIS_DB: must be a whole number, not {db[:20]!r}")
    if not host.strip() or any(char in host for char in "/?#@ "):
        raise ConfigError("REDIS_HOST: must be a host name or address")
    user = env.get("REDIS_USERNAME", "")
    password = env.get("REDIS_PASSWORD", "")
    auth = ""
    if user or password:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    return f"redis://{auth}{host}:{port}/{db}"


def mask_url(url: str) -> str:
    """The URL without its secrets, for logs and status."""
    return masked_url(url)


# Variables with the prefix that belong to the client library, not to the daemon.
CLIENT_VARIABLES = frozenset({wire.SOCKET_PATH_ENV, peer.SERVER_UID_ENV})


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """``MEMORYD_*`` variables that name no setting (typos), each with a hint."""
    environ = dict(os.environ) if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | CLIENT_VARIABLES
    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            found.append(f"{name} is not a memoryd setting{hint}; it is ignored")
    return found


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, or raise ConfigError with one line naming the setting."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file}: not found")
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        settings_cls = type(
            "Settings",
            (Settings,),
            {"model_config": {**Settings.model_config, "toml_file": config_file}},
        )
    try:
        settings = settings_cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"config file {config_file}: {exc}") from exc
    return settings


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    if error["type"] == "extra_forbidden":
        return f"{name}: unknown setting"
    return f"{name} ({ENV_PREFIX}{name.upper()}): {error['msg']}"
