"""The docs and example configs say what the code does: every setting, method and error code.

Fast: reads files and imports modules, starts no daemon.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from memoryd.config import ENV_PREFIX, Settings, load_settings
from memoryd_client import wire

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
EXAMPLE_TOML = ROOT / "config" / "memoryd.toml"
DEV_TOML = ROOT / "config" / "dev.toml"
SERVICE_PY = ROOT / "memoryd" / "handlers.py"

# Defaults the example cannot write (a path that depends on the user, "unset"):
# it shows them commented out.
COMMENTED_OUT_OK = frozenset({"socket_path", "data_dir", "redis_min_replicas"})

SETTINGS = sorted(Settings.model_fields)


def service_methods() -> list[str]:
    """The keys of ``self.methods = {...}`` in ``Handlers.__init__``, read from the source."""
    tree = ast.parse(SERVICE_PY.read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.AnnAssign | ast.Assign):
            continue
        targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr == "methods"
                and isinstance(node.value, ast.Dict)
            ):
                return [ast.literal_eval(key) for key in node.value.keys if key is not None]
    raise AssertionError("no `self.methods = {...}` found in memoryd/handlers.py")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MEMORYD_* or legacy variable of the test's environment leaks into the settings."""
    import os

    legacy = {"MEMORY_MAX_SIZE", "MEMORY_TTL", "REDIS_URL", "ENABLE_REDIS"}
    legacy |= {"REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_USERNAME"}
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name in legacy:
            monkeypatch.delenv(name)


def test_service_methods_are_found() -> None:
    methods = service_methods()
    assert {"hello", "add", "get", "status"} <= set(methods)


@pytest.mark.parametrize("name", SETTINGS)
def test_setting_is_in_the_example_toml(name: str) -> None:
    text = EXAMPLE_TOML.read_text()
    keys = tomllib.loads(text)
    if name in keys:
        return
    commented = re.search(rf"^#\s*{re.escape(name)}\s*=", text, re.MULTILINE)
    assert name in COMMENTED_OUT_OK and commented, f"{name} missing from config/memoryd.toml"


@pytest.mark.parametrize("name", SETTINGS)
def test_setting_is_in_configuration_md(name: str) -> None:
    env = ENV_PREFIX + name.upper()
    row = re.compile(rf"^\|\s*`{re.escape(name)}`\s*\|\s*`{re.escape(env)}`\s*\|", re.MULTILINE)
    assert row.search(CONFIGURATION_MD.read_text()), (
        f"docs/configuration.md has no table row `{name}` | `{env}`"
    )


@pytest.mark.parametrize(
    "name",
    [
        name
        for name, field in Settings.model_fields.items()
        if field.annotation in (int, float) and name != "socket_mode"
    ],
)
def test_numeric_default_in_configuration_md(name: str) -> None:
    default = Settings.model_fields[name].default
    row = re.search(
        rf"^\|\s*`{re.escape(name)}`\s*\|[^|]*\|([^|]*)\|",
        CONFIGURATION_MD.read_text(),
        re.MULTILINE,
    )
    assert row, name
    assert row.group(1).strip().split()[0] == str(default), (
        f"docs/configuration.md: default of {name} is {default}, not {row.group(1).strip()!r}"
    )


def test_example_toml_holds_every_default(clean_env: None) -> None:
    example = load_settings(EXAMPLE_TOML)
    defaults = load_settings()
    assert example.model_dump() == defaults.model_dump()


@pytest.mark.parametrize("path", [EXAMPLE_TOML, DEV_TOML], ids=lambda p: p.name)
def test_config_file_loads(path: Path, clean_env: None) -> None:
    load_settings(path)


@pytest.mark.parametrize("method", service_methods())
def test_method_is_in_protocol_md(method: str) -> None:
    pattern = re.compile(
        rf"^(###\s+{re.escape(method)}\s*$|\|\s*`{re.escape(method)}`\s*\|)", re.MULTILINE
    )
    assert pattern.search(PROTOCOL_MD.read_text()), (
        f"docs/protocol.md has no heading or table row for {method}"
    )


@pytest.mark.parametrize("code", sorted(wire.ERROR_CODES))
def test_error_code_is_in_protocol_md(code: str) -> None:
    row = re.compile(rf"^\|\s*`{re.escape(code)}`\s*\|", re.MULTILINE)
    assert row.search(PROTOCOL_MD.read_text()), f"docs/protocol.md has no table row for {code}"


ARCHITECTURE_MD = ROOT / "docs" / "architecture.md"
MODULES = sorted(
    path.relative_to(ROOT / "memoryd")
    for path in (ROOT / "memoryd").rglob("*.py")
    if path.name not in ("__init__.py", "__main__.py")
)


@pytest.mark.parametrize("module", MODULES, ids=str)
def test_every_module_is_in_architecture_md(module: Path) -> None:
    assert f"{module.name}`" in ARCHITECTURE_MD.read_text(), (
        f"memoryd/{module} is not named in docs/architecture.md"
    )
