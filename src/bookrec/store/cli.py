"""CLI commands of bookrec.store: ``bookrec store status`` and ``bookrec store rollback``."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(help="Inspect the recommendation store and roll back a published version.", no_args_is_help=True)

StoreOption = Annotated[
    Optional[str],
    typer.Option("--store", help="Store URL (default: BOOKREC_STORE_URL / REDIS_URL, else sqlite:///var/bookrec.sqlite3)"),
]


def _open(url: str | None):
    from bookrec.config import get_settings
    from bookrec.exitcodes import USAGE
    from bookrec.store import StoreError, open_store_from_settings, parse_store_url

    try:
        parse_store_url(url or get_settings().store_url)
    except StoreError as exc:
        _fail(str(exc), code=USAGE)
    try:
        return open_store_from_settings(url=url)
    except StoreError as exc:
        _fail(str(exc))


def _fail(message: str, code: int | None = None) -> None:
    """A store that does not answer, or refuses the operation, unless `code` says otherwise."""
    from bookrec.exitcodes import FAILURE, fail

    fail(message, code=FAILURE if code is None else code)


def _sqlite_file(url: str | None) -> Path | None:
    """The absolute path of the SQLite file the store URL names, None for another backend."""
    from bookrec.config import get_settings
    from bookrec.store import parse_store_url

    parsed = parse_store_url(url or get_settings().store_url)
    return None if parsed.path is None else parsed.path.expanduser().resolve()


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bytes(n: Any) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"  # pragma: no cover


@app.command()
def status(
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON")] = False,
) -> None:
    """Show the published versions (users, books, bytes), the current and previous pointers and memory use."""
    from rich.markup import escape
    from rich.table import Table

    from bookrec.logging import console as make_console

    from bookrec.store import StoreError

    st = _open(store)
    try:
        info = st.status()
    except StoreError as exc:
        _fail(str(exc))
    finally:
        st.close()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    console = make_console()
    console.print(f"store: [bold]{escape(info['url'])}[/] ({info['backend']})")
    path = _sqlite_file(store)
    if path is not None:
        # sqlite:///var/x is relative to the working directory: show which file that is from here.
        console.print(f"file:     {escape(str(path))}", highlight=False)
    if info.get("note"):
        # An empty table alone reads like an empty store; a mistyped path is the likelier cause.
        console.print(f"[yellow]note:[/] {escape(str(info['note']))}", highlight=False)
    console.print(f"current:  {info['current'] or '(nothing published)'}")
    console.print(f"previous: {info['previous'] or '(none)'}")
    table = Table(title="versions")
    for column in ("version", "published", "users", "books", "blobs", "bytes", ""):
        table.add_column(
            column, justify="right" if column in ("users", "books", "blobs", "bytes") else "left", no_wrap=True
        )
    for v in info["versions"]:
        mark = "current" if v["current"] else "previous" if v["previous"] else "stale"
        table.add_row(
            v["version"], _when(v["published_at"]), f"{v['users']:,}", f"{v['books']:,}", str(v["blobs"]),
            _bytes(v["bytes"]), mark,
        )
    if info["versions"]:
        console.print(table)
    else:
        console.print("versions: (none)")
    if info["pending"]:
        console.print(f"pending (being written, or left by a killed publisher): {', '.join(info['pending'])}")
    memory = info["memory"]
    console.print(f"memory: {_bytes(memory.get('used_memory'))} used ({memory['backend']})")


@app.command()
def rollback(
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the pointers before and after as JSON")] = False,
) -> None:
    """Serve the previous version again (swaps the current and previous pointers; run again to undo)."""
    from bookrec.store import StoreError

    st = _open(store)
    try:
        before = st.current_version()
        after = st.rollback()
    except StoreError as exc:
        _fail(str(exc))
    finally:
        st.close()
    if as_json:
        typer.echo(json.dumps({"current": after, "previous": before}, indent=2))
        return
    typer.echo(f"rolled back: current is now {after} (was {before}; run `bookrec store rollback` again to undo)")
