"""`annotate-server users ...`: the accounts that may log in when auth is on (ANNOTATE_AUTH_ENABLED=true).

annotate-server users add NAME --role annotator [--password-stdin]
annotate-server users list [--json]
annotate-server users passwd NAME [--password-stdin]
annotate-server users role NAME reviewer
annotate-server users remove NAME

Each takes the server's `--studies` (or `--data-dir`) to find its data folder. They edit
`<data dir>/auth/users.sqlite` directly, so they work with or without a running server, and a running server
sees the change on the next request. Passwords are prompted for (hidden, twice) or read from
stdin; they are never printed or accepted as an argument (which would land in shell history).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from annotation_server.auth.roles import Role
from annotation_server.cli_support import StudiesOption, cli_actor, cli_audit, console, or_exit, settings_from

if TYPE_CHECKING:
    from annotation_server.auth.users import UserStore

users_app = typer.Typer(help="User accounts for logins (when ANNOTATE_AUTH_ENABLED=true) and their roles.")

NameArg = Annotated[str, typer.Argument(help="user name (what they type at login)")]
DataDirOption = Annotated[Path | None, typer.Option(help="The server's data folder (holds auth/users.sqlite)")]
StdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin (for scripts)")
]
ROLE_HELP = "user (read), annotator (+ infer, save labels), reviewer (+ approve for FL), admin (+ train, delete)"


def _store(data_dir: Path | None, studies: str | None) -> UserStore:
    from annotation_server.auth.service import open_user_store

    return open_user_store(settings_from(data_dir=data_dir, studies=studies))


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if not password:
            console.print("[red]error:[/red] no password on stdin: pipe one line, e.g. `printf '%s\\n' \"$PW\" |`")
            raise typer.Exit(2)
        return password
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_app.command("add")
def users_add(
    name: NameArg,
    role: Annotated[Role, typer.Option(help=ROLE_HELP)] = Role.annotator,
    password_stdin: StdinOption = False,
    data_dir: DataDirOption = None,
    studies: StudiesOption = None,
) -> None:
    """Add a user with a role (roles include the ones below them)."""
    from annotation_server.auth.users import check_username

    or_exit(lambda: check_username(name))  # before asking for a password
    store = _store(data_dir, studies)
    if store.get(name) is not None:
        console.print(f"[red]error:[/red] user '{name}' already exists; use `users passwd` or `users role`")
        raise typer.Exit(2)
    password = _password(password_stdin)
    user = or_exit(lambda: store.add(name, role.value, password))
    cli_audit(data_dir, studies).record("user.add", cli_actor(), None, user.username, role=user.role.value)
    typer.echo(f"added user '{user.username}' with role {user.role.value} ({store.path})")


@users_app.command("list")
def users_list(
    data_dir: DataDirOption = None,
    studies: StudiesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Users and their roles (never passwords)."""
    store = _store(data_dir, studies)
    users = store.list()
    if as_json:
        rows = [{"username": u.username, "role": u.role.value, "created_ts": u.created_ts} for u in users]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not users:
        console.print(f"no users in {store.path}; add one with `annotate-server users add NAME --role admin`")
        return
    table = Table(title=f"users ({store.path})")
    for column in ("name", "role", "created", "changed"):
        table.add_column(column)
    for u in users:
        when = (time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) for ts in (u.created_ts, u.updated_ts))
        table.add_row(u.username, u.role.value, *when)
    Console().print(table)


@users_app.command("passwd")
def users_passwd(
    name: NameArg, password_stdin: StdinOption = False, data_dir: DataDirOption = None, studies: StudiesOption = None
) -> None:
    """Set a new password; the user's existing tokens stop working at once."""
    store = _store(data_dir, studies)
    if store.get(name) is None:  # say so before asking for a password nobody will use
        console.print(f"[red]error:[/red] no user named '{name}'; `annotate-server users list` shows who exists")
        raise typer.Exit(2)
    password = _password(password_stdin)
    or_exit(lambda: store.set_password(name, password))
    cli_audit(data_dir, studies).record("user.passwd", cli_actor(), None, name)
    typer.echo(f"password of '{name}' changed; their open logins must log in again")


@users_app.command("role")
def users_role(
    name: NameArg,
    role: Annotated[Role, typer.Argument(help=ROLE_HELP)],
    data_dir: DataDirOption = None,
    studies: StudiesOption = None,
) -> None:
    """Change a user's role (takes effect on their next request)."""
    store = _store(data_dir, studies)
    before = store.get(name)
    user = or_exit(lambda: store.set_role(name, role.value))
    cli_audit(data_dir, studies).record(
        "user.role", cli_actor(), None, user.username, role=user.role.value, was=before.role.value if before else None
    )
    typer.echo(f"'{user.username}' now has role {user.role.value}")


@users_app.command("remove")
def users_remove(name: NameArg, data_dir: DataDirOption = None, studies: StudiesOption = None) -> None:
    """Remove a user; their tokens stop working at once. Labels they saved keep their name as author."""
    store = _store(data_dir, studies)
    or_exit(lambda: store.remove(name))
    cli_audit(data_dir, studies).record("user.remove", cli_actor(), None, name)
    typer.echo(f"removed user '{name}'")
