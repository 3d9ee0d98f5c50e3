"""How the CLI talks to people (rich tables, colours) and to scripts (`--json`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from modelport.client import ApiError, Client

console = Console(soft_wrap=True)
err_console = Console(stderr=True)

STATUS_STYLE = {
    "running": "green",
    "published": "green",
    "ready": "green",
    "deploying": "yellow",
    "publishing": "yellow",
    "starting": "yellow",
    "stopping": "yellow",
    "draining": "yellow",
    "concerning": "red",
    "notReady": "red",
    "crashed": "red",
    "failed": "bold red",
    "stopped": "dim",
}


def styled(status: str | None) -> str:
    if not status:
        return ""
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)


def fail(code: str | None, message: str, hint: str | None = None) -> NoReturn:
    err_console.print(f"[bold red]Error[/] [red]{code or ''}[/] {message}")
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}")
    raise typer.Exit(1)


_HINTS = {
    "ModelArts.0201": "Is the platform running? Start it with `modelport up`.",
    "ModelArts.0202": "Your token expired; run the command again.",
    "ModelArts.3502": "List services with `modelport service list`.",
    "ModelArts.3001": "List models with `modelport model list`.",
    "MP.0001": "Start the platform with `modelport up` first.",
    "ModelArts.0108": "Your role in this project does not allow it; a project admin can change it "
    "(`modelport project add-member PROJECT USER --role developer`).",
    "ModelArts.0210": "You are not a member of that project; see `modelport project list`.",
    "ModelArts.0206": "Check MODELPORT_ACCESS_KEY / MODELPORT_SECRET_KEY (`modelport credentials list`).",
    "ModelArts.4206": "The service is over its QPS limit; retry later or raise it with `modelport service set-qps`.",
    "MP.0429": "Too many failed logins; wait and check the password.",
}


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn SDK and connection errors into one readable line and exit code 1."""
    import httpx

    try:
        yield
    except ApiError as exc:
        fail(exc.error_code, exc.message, _HINTS.get(exc.error_code or ""))
    except httpx.ConnectError as exc:
        fail(
            "MP.0002",
            f"Cannot reach the platform ({exc}).",
            "Start it with `modelport up` or check MODELPORT_API_URL.",
        )


def client() -> Client:
    with api_errors():
        return Client.from_credentials()


def run(fn: Callable[[], Any]) -> Any:
    with api_errors():
        return fn()
