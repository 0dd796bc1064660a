"""`python -m service serve | bot | migrate | check | avatars | generations | events | ...`."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import logs
from service.cli_output import print_json, print_rows
from service.jobs import generation
from service.operator_events import add_commands as add_events_commands
from service.operator_generations import add_commands as add_generations_commands
from service.outbox.states import NotificationState
from service.settings import Settings, SettingsError

T = TypeVar("T")
Command = Callable[[argparse.Namespace, Settings], int]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the webhook service (gunicorn) and its dispatcher")
    commands.add_parser("bot", help="run the Telegram bot (long polling)")
    commands.add_parser("migrate", help="bring the database schema up to date")
    commands.add_parser("check", help="validate settings and reach the database")

    avatars = commands.add_parser("avatars", help="inspect or register avatars").add_subparsers(
        dest="action", required=True
    )
    attach = avatars.add_parser("attach", help="register a training started outside the bot")
    attach.add_argument("--telegram-id", type=int, required=True)
    attach.add_argument("--name", required=True)
    attach.add_argument("--training-type", choices=("portrait", "style"), required=True)
    attach.add_argument("--request-id", required=True)
    show = avatars.add_parser("show", help="one avatar by FAL request id")
    show.add_argument("--request-id", required=True)
    show.add_argument("--json", action="store_true", help="print JSON (the only format)")
    listing = avatars.add_parser("list", help="all avatars, optionally by status")
    listing.add_argument(
        "--status", choices=("draft", "training", "completed", "failed", "cancelled")
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    notes = commands.add_parser("notifications", help="inspect or re-queue notifications")
    note_actions = notes.add_subparsers(dest="action", required=True)
    note_list = note_actions.add_parser("list", help="notifications, optionally by state")
    note_list.add_argument("--state", choices=[s.value for s in NotificationState])
    note_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    retry = note_actions.add_parser(
        "retry", help="re-queue one notification, all failed or all uncertain ones"
    )
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=int)
    for every in (NotificationState.FAILED, NotificationState.UNCERTAIN):
        target.add_argument(
            f"--{every.value}", action="store_true", help=f"every notification in '{every}'"
        )

    backup = commands.add_parser("backup", help="back up the database, or restore a backup")
    backup.add_argument("action", choices=("create", "restore"))
    backup.add_argument("file", type=Path, help="the backup file (written, or read)")
    add_events_commands(commands)
    add_generations_commands(commands)
    commands.add_parser(
        "maintenance",
        help="prune events older than EVENTS_RETENTION_DAYS and delivered notifications older "
        "than NOTIFICATIONS_RETENTION_DAYS, in small batches (run daily by a systemd timer)",
    ).add_argument("--batch", type=int, default=1000, help="rows per transaction (default 1000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    generation.set_quota(settings.generations_per_day)  # "photos left" in what events write
    command: Callable[[argparse.Namespace, Settings], int] = {
        "serve": _serve,
        "bot": _bot,
        "migrate": _migrate,
        "check": _check,
        "avatars": _avatars,
        "notifications": _notifications,
        "backup": _backup,
        "events": _events,
        "generations": _generations,
        "maintenance": _maintenance,
    }[args.command]
    return command(args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from service.store import migrate
    from service.web import server

    problem = migrate.schema_problem(settings.database_url)
    if problem:
        print(f"cannot start: {problem}", file=sys.stderr)
        return 3
    server.serve(settings)
    return 0


def _bot(args: argparse.Namespace, settings: Settings) -> int:
    from service.bot import run

    return run(settings)


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from service.store import migrate

    try:
        revision = migrate.upgrade(settings.database_url)
    except Exception as exc:
        print(f"migration failed: {_first_line(exc)}", file=sys.stderr)
        return 1
    print(f"database is at revision {revision}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from service.store import migrate

    problem = migrate.schema_problem(settings.database_url)
    problems = [problem] if problem else []
    if not settings.telegram_configured:
        print("warning: TELEGRAM_TOKEN is empty: notifications will stay pending", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print("configuration ok, database reachable and migrated", file=sys.stderr)
    return 1 if problems else 0


def _with_sessions(
    settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]
) -> T:
    from service.store.engine import create_engine, sessionmaker

    async def go() -> T:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await work(sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _run_db(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """`work` in one transaction (retried on contention) against the configured database."""
    from service.store.engine import run_transaction

    return _with_sessions(settings, lambda sessions: run_transaction(sessions, work))


def _refusals(command: Command) -> Command:
    """An operator command whose NotFound / Conflict is a message on stderr and exit 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from service import operator

        try:
            return command(args, settings)
        except (operator.NotFound, operator.Conflict) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


@_refusals
def _avatars(args: argparse.Namespace, settings: Settings) -> int:
    from service import operator

    if args.action == "attach":
        attached = (args.telegram_id, args.name, args.training_type, args.request_id)
        print_json(_run_db(settings, lambda s: operator.attach(s, *attached)))
    elif args.action == "show":
        print_json(_run_db(settings, lambda s: operator.show(s, args.request_id)))
    else:
        rows = _run_db(settings, lambda s: operator.list_avatars(s, args.status))
        columns = ("id", "telegram_id", "status", "progress", "fal_request_id", "name")
        print_rows(rows, columns, as_json=args.json)
    return 0


@_refusals
def _notifications(args: argparse.Namespace, settings: Settings) -> int:
    from service import operator

    if args.action == "list":
        rows = _run_db(settings, lambda s: operator.list_notifications(s, args.state))
        columns = ("id", "chat_id", "kind", "state", "attempts", "last_error")
        print_rows(rows, columns, as_json=args.json)
    else:
        count = _run_db(
            settings,
            lambda s: operator.retry_notifications(s, args.id, args.failed, args.uncertain),
        )
        print(f"re-queued {count} notification(s)", file=sys.stderr)
    return 0


@_refusals
def _events(args: argparse.Namespace, settings: Settings) -> int:
    from service import operator_events as ev

    if args.action == "list":
        if args.outcome in ev.NOT_STORED:
            print("note: duplicates are answered 200 and never stored", file=sys.stderr)
        filters = (args.outcome, args.request_id, args.since, args.limit)
        rows = _run_db(settings, lambda s: ev.list_events(s, *filters))
        print_rows(rows, ev.TABLE_COLUMNS, as_json=args.json)
    elif args.action == "show":
        shown = _run_db(settings, lambda s: ev.show_event(s, args.id))
        print_json(shown) if args.json else print(ev.render(shown))
    else:
        ids = [args.id] if args.id is not None else _run_db(settings, ev.unmatched_ids)
        replays = _with_sessions(settings, lambda sessions: ev.replay_each(sessions, ids))
        for replayed in replays:
            print(replayed.line, file=sys.stderr if replayed.failed else sys.stdout)
        if args.unmatched:
            applied = sum(r.applied for r in replays)
            print(f"applied {applied} of {len(ids)} unmatched event(s)", file=sys.stderr)
        return 1 if any(r.failed for r in replays) else 0
    return 0


@_refusals
def _generations(args: argparse.Namespace, settings: Settings) -> int:
    from service import operator_generations as gens

    if args.action == "list":
        rows = _run_db(settings, lambda s: gens.list_generations(s, args.status, args.limit))
        print_rows(rows, gens.TABLE_COLUMNS, as_json=args.json)
    else:
        print_json(_run_db(settings, lambda s: gens.show_generation(s, args.id)))
    return 0


def _maintenance(args: argparse.Namespace, settings: Settings) -> int:
    from service.store import migrate, retention

    if problem := migrate.schema_problem(settings.database_url):
        print(f"cannot run: {problem}", file=sys.stderr)
        return 3
    days = (settings.events_retention_days, settings.notifications_retention_days)
    report = _with_sessions(settings, lambda ss: retention.prune(ss, *days, batch=args.batch))
    # One JSON line: journald keeps it with the timer's run.
    print(json.dumps(report.summary()))
    return 0


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    from service.store import backup

    try:
        if args.action == "create":
            backup.create(settings.database_url, args.file)
        else:
            backup.restore(settings.database_url, args.file)
    except backup.BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    done = "written to" if args.action == "create" else "restored from"
    print(f"backup {done} {args.file}", file=sys.stderr)
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
