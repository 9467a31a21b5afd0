"""`flowdppo db upgrade|current`: create or migrate the database named by DATABASE_URL (or --url)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="Database schema: upgrade to the latest migration, show the revision.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_sub.add_parser("upgrade", help="Apply migrations (creates the schema on an empty database).")
    upgrade.add_argument("--url", help="Database URL (default: DATABASE_URL, else sqlite under DATA_DIR).")
    upgrade.add_argument("--revision", default="head", help="Target revision (default: head).")
    upgrade.set_defaults(handler=_upgrade)
    current = db_sub.add_parser("current", help="Print the database's migration revision.")
    current.add_argument("--url", help="Database URL (default: DATABASE_URL, else sqlite under DATA_DIR).")
    current.set_defaults(handler=_current)


def _url(args: argparse.Namespace) -> str:
    from store.settings import PlatformSettings

    return args.url or PlatformSettings().DATABASE_URL


def _upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from store.migrate import upgrade

    url = _url(args)
    upgrade(url, args.revision)
    print(f"database at {make_url(url).render_as_string(hide_password=True)} is at revision {args.revision}")
    return 0


def _current(args: argparse.Namespace) -> int:
    from store.migrate import current_revision

    print(current_revision(_url(args)) or "empty (no migrations applied)")
    return 0
