"""The ``memoryd`` command.  The only place that configures logging or exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import uvloop

from memoryd import __version__, daemon, permissions, render
from memoryd.alerts import Alerts
from memoryd.atomicfile import replaced_whole
from memoryd.config import Settings, load_settings, unknown_variables
from memoryd.errors import ConfigError, MemorydError
from memoryd.server import Server
from memoryd.tools import legacy, transfer
from memoryd.wal import inspect_wal
from memoryd_client import Client, errors, wire
from memoryd_client.paging import IncompleteAnswer

logger = logging.getLogger("memoryd")

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_FAILING = 0, 1, 2
EXIT_CONFIG = 78  # EX_CONFIG: systemd's Restart=on-failure should not spin on it forever
IMPORT_BATCH = 500
MAX_IMPORT_BATCH = wire.DEFAULT_MAX_BATCH
CONNECT_TIMEOUT_S = 3.0
TRANSFER_TIMEOUT_S = 60.0  # per call: a batch may wait for a full WAL to drain
PROGRESS_EVERY = 10_000
_STATE_EXIT = {"healthy": EXIT_HEALTHY, "degraded": EXIT_DEGRADED, "recovering": EXIT_DEGRADED}


def _parser() -> argparse.ArgumentParser:
    # Long on purpose: the whole command line in one place, as --help shows it.
    parser = argparse.ArgumentParser(prog="memoryd", description="Memory daemon for LLM agents.")
    parser.add_argument("--version", action="version", version=f"memoryd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon in the foreground")
    _add_config_flags(run)

    status = commands.add_parser("status", help="show the daemon's health")
    status.add_argument("--socket", type=Path, help="the daemon's socket (default: from config)")
    status.add_argument("--json", action="store_true", help="print the full snapshot as JSON")
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (3)")

    check = commands.add_parser("check-config", help="validate and print the effective config")
    _add_config_flags(check)

    alerts = commands.add_parser("alerts", help="damage kept for an operator: list or clear")
    alerts.add_argument("action", choices=("list", "clear"))
    alerts.add_argument("--data-dir", type=Path, help="the daemon's data_dir (default: config)")
    alerts.add_argument("--config", type=Path, help="TOML config file, for data_dir")

    legacy = commands.add_parser(
        "import-legacy", help="import TableRound's file store (data/memories/<agent>/...)"
    )
    legacy.add_argument("path", type=Path, help="the data/ or data/memories/ directory")
    legacy.add_argument("--socket", type=Path, help="the daemon's socket (default: from config)")
    legacy.add_argument(
        "--ttl-s",
        type=float,
        help="expiry of the imported records in seconds (default: the daemon's default_ttl_s;"
        " 0: never)",
    )
    legacy.add_argument("--dry-run", action="store_true", help="check every file, import nothing")

    export = commands.add_parser("export", help="write records as JSON Lines (a backup)")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--agent", help="one agent's records")
    which.add_argument("--prefix", help="the records of every agent whose id starts with this")
    which.add_argument("--all", action="store_true", help="every record")
    export.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    export.add_argument(
        "--mode",
        type=_file_mode,
        default=permissions.FILE_MODE,
        help=f"permission bits of the -o file, octal ({permissions.FILE_MODE:04o}: yours alone)",
    )
    export.add_argument("--socket", type=Path, help="the daemon's socket (default: from config)")

    load = commands.add_parser("import", help="read records from JSON Lines (an export)")
    load.add_argument("input", help="the file to read, or - for stdin")
    load.add_argument("--socket", type=Path, help="the daemon's socket (default: from config)")
    load.add_argument(
        "--batch",
        type=_batch_size,
        default=IMPORT_BATCH,
        help=f"records per add_many, 1-{MAX_IMPORT_BATCH} ({IMPORT_BATCH})",
    )

    wal = commands.add_parser("wal", help="look at the write-ahead log")
    wal_commands = wal.add_subparsers(dest="wal_command", required=True)
    inspect = wal_commands.add_parser("inspect", help="segments, records, checkpoint, damage")
    inspect.add_argument("--data-dir", type=Path, help="the daemon's data_dir (default: config)")
    inspect.add_argument("--config", type=Path, help="TOML config file, for data_dir")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _batch_size(text: str) -> int:
    size = int(text)
    if not 1 <= size <= MAX_IMPORT_BATCH:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_IMPORT_BATCH}, not {size}")
    return size


def _file_mode(text: str) -> int:
    # Octal, as chmod(1) reads it: 0640, 640 or 0o640.
    try:
        mode = int(text.strip().lower().removeprefix("0o"), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an octal file mode such as 0600, not {text!r}"
        ) from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"must be an octal file mode 0000-0777, not {text!r}")
    return mode


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--socket-path", type=Path, help="overrides socket_path")
    parser.add_argument("--data-dir", type=Path, help="overrides data_dir")
    parser.add_argument("--backend", choices=("auto", "redis", "local"), help="overrides backend")
    parser.add_argument("--redis-url", help="overrides redis_url")
    parser.add_argument(
        "--wal-fsync", choices=("always", "everysec", "no"), help="overrides wal_fsync"
    )
    parser.add_argument("--log-level", help="overrides log_level")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        socket_path=args.socket_path,
        data_dir=args.data_dir,
        backend=args.backend,
        redis_url=args.redis_url,
        wal_fsync=args.wal_fsync,
        log_level=args.log_level,
    )


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("memoryd")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def cmd_run(args: argparse.Namespace) -> int:
    # Whatever a library or a later change creates without an explicit mode stays private too.
    os.umask(permissions.DAEMON_UMASK)
    settings = _settings(args)
    _configure_logging(settings.log_level)
    for warning in unknown_variables():
        logger.warning("%s", warning)
    server = Server(daemon.build(settings), reload=lambda: _settings(args))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(server.serve())
        except ConfigError:
            raise
        except MemorydError as exc:
            logger.critical("memoryd stopped: %s", exc)
            return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    for warning in unknown_variables():
        print(f"memoryd: warning: {warning}", file=sys.stderr)
    for name, value in settings.masked().items():
        print(f"{name} = {json.dumps(value)}")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    alerts = Alerts(args.data_dir or load_settings(args.config).data_dir)
    if args.action == "clear":
        print(f"cleared {alerts.clear()} alerts")
        return EXIT_HEALTHY
    for alert in alerts.entries():
        print(render.alert_line(alert))
    return EXIT_HEALTHY


def cmd_wal(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or load_settings(args.config).data_dir
    wal_dir = daemon.wal_dir(data_dir)
    if not wal_dir.is_dir():
        print(f"memoryd: no WAL at {wal_dir}", file=sys.stderr)
        return EXIT_FAILING
    report = inspect_wal(wal_dir)
    print(json.dumps(report, indent=2) if args.json else render.wal_report(report))
    return EXIT_HEALTHY


def _socket_path(args: argparse.Namespace) -> Path | None:
    """``--socket``, else the configured one, else the client's default (None)."""
    if args.socket is not None:
        return Path(args.socket)
    try:
        return load_settings().socket_path
    except ConfigError:
        return None


def cmd_status(args: argparse.Namespace) -> int:
    socket_path = _socket_path(args)
    try:
        with Client(socket_path, timeout_s=args.timeout) as client:
            snapshot = client.status()
    except (errors.MemorydError, OSError) as exc:
        if args.json:
            print(json.dumps({"state": "unreachable", "error": str(exc)}))
        else:
            print(f"memoryd: unreachable at {socket_path or 'the default socket'}: {exc}")
        return EXIT_FAILING
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
    else:
        print(render.status_report(snapshot))
    code = _STATE_EXIT.get(str(snapshot.get("state")), EXIT_FAILING)
    # Damage an operator has not cleared yet is worth a page even when healthy.
    return max(code, EXIT_DEGRADED) if snapshot.get("alerts") else code


def _daemon(args: argparse.Namespace) -> Client:
    """A client of the daemon, found at once or not at all (then MemorydError/OSError)."""
    client = Client(_socket_path(args), timeout_s=TRANSFER_TIMEOUT_S)
    try:
        client.ping(timeout_s=CONNECT_TIMEOUT_S)
    except BaseException:
        client.close()
        raise
    return client


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Rate:
    """A progress line on stderr every PROGRESS_EVERY records, with the rate so far."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown = 0

    def update(self, records: int) -> None:
        if records - self.shown >= PROGRESS_EVERY:
            self.shown = records
            rate = records / max(time.monotonic() - self.started, 1e-9)
            _progress(f"  {records} records ({rate:.0f}/s)")


def cmd_import_legacy(args: argparse.Namespace) -> int:
    root = legacy.memories_root(args.path)
    if not root.is_dir():
        print(f"memoryd: {args.path} is not a directory", file=sys.stderr)
        return EXIT_FAILING
    report = legacy.LegacyImport()
    try:
        with _daemon(args) as client:
            legacy.import_files(
                client,
                root,
                report,
                now_s=time.time(),
                ttl_s=args.ttl_s,
                batch=IMPORT_BATCH,
                dry_run=args.dry_run,
                on_agent=lambda agent_id, records: _progress(f"  {agent_id}: {records} records"),
                on_skip=lambda path, problem: _progress(f"  skipped {path}: {problem}"),
            )
    except (errors.MemorydError, OSError) as exc:
        print(f"memoryd: import stopped: {exc} (running it again is safe)", file=sys.stderr)
        return EXIT_FAILING
    verb = "checked" if args.dry_run else "imported"
    print(
        f"{verb} {report.records} records of {len(report.agents)} agents from {report.files} "
        f"files; skipped {len(report.skipped)} files"
    )
    for path, problem in report.skipped:
        print(f"  skipped {path}: {problem}")
    return EXIT_DEGRADED if report.skipped else EXIT_HEALTHY


@contextlib.contextmanager
def _output(name: str, mode: int) -> Iterator[TextIO]:
    """stdout for ``-``; else a file with permission bits ``mode`` (whatever the umask)
    that appears, fsynced, only once whole (memoryd.atomicfile)."""
    if name == "-":
        yield sys.stdout
        return
    with replaced_whole(Path(name), mode=mode, temp_suffix=".partial") as binary:
        text = io.TextIOWrapper(binary, encoding="utf-8")
        try:
            yield text
        finally:
            text.flush()
            text.detach()  # the binary file is replaced_whole's to close


def _skipped(agent_id: str, record_id: str | None, why: str) -> None:
    # Names, never content: an export's stderr ends up in logs.
    what = f"record {record_id}" if record_id is not None else "the rest of the records"
    _progress(f"  skipped {what} of agent {agent_id}: {why}")


def cmd_export(args: argparse.Namespace) -> int:
    report = transfer.ExportReport()
    rate = _Rate()
    try:
        with _daemon(args) as client, _output(args.output, args.mode) as output:
            # A store that only refuses writes (OOM, READONLY) still answers reads.
            if not client.status()["store"]["reachable"]:
                raise IncompleteAnswer("the store is unreachable: an export now would miss records")
            if args.agent is not None:
                agent_ids: Iterable[str] = [args.agent]
            else:
                agent_ids = transfer.agents_under(client, "" if args.all else args.prefix)
            for line in transfer.export_lines(client, agent_ids, report, on_skip=_skipped):
                output.write(line + "\n")
                rate.update(report.records)
    except (errors.MemorydError, OSError) as exc:
        print(f"memoryd: export stopped after {report.records} records: {exc}", file=sys.stderr)
        return EXIT_FAILING
    if report.skipped:
        _progress(
            f"exported {report.records} records; skipped {len(report.skipped)} "
            "(listed above: not in the file)"
        )
        return EXIT_DEGRADED
    _progress(f"exported {report.records} records")
    return EXIT_HEALTHY


def cmd_import(args: argparse.Namespace) -> int:
    report = transfer.ImportReport()
    rate = _Rate()
    try:
        source = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"memoryd: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILING
    try:
        with _daemon(args) as client:
            transfer.import_lines(
                client,
                source,
                report,
                batch=args.batch,
                now_s=time.time(),
                on_batch=lambda done: rate.update(done.records),
            )
    except (errors.MemorydError, OSError) as exc:
        print(
            f"memoryd: import stopped after {report.records} records: {exc} "
            "(running it again is safe)",
            file=sys.stderr,
        )
        return EXIT_FAILING
    finally:
        if source is not sys.stdin:
            source.close()
    print(
        f"imported {report.records} records of {len(report.agents)} agents; "
        f"{report.expired} already expired, {len(report.bad_lines)} bad lines"
    )
    for number, reason in report.bad_lines[:20]:
        print(f"  line {number}: {reason}")
    return EXIT_DEGRADED if report.bad_lines else EXIT_HEALTHY


COMMANDS = {
    "run": cmd_run,
    "import-legacy": cmd_import_legacy,
    "export": cmd_export,
    "import": cmd_import,
    "status": cmd_status,
    "check-config": cmd_check_config,
    "wal": cmd_wal,
    "alerts": cmd_alerts,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"memoryd: bad configuration: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    except BrokenPipeError:
        # `memoryd status | head`: the reader left; no traceback for that.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_HEALTHY
    sys.exit(code)
