"""`annotate-server audit ...`: check and read the audit trail of a data folder.

annotate-server audit verify [--studies DIR | --data-dir DIR]   exit 0 if the chain is intact, 1 at the first bad one
annotate-server audit show [--last N] [--action label] [--json]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from annotation_server.cli_support import StudiesOption, console, settings_from

audit_app = typer.Typer(help="The audit trail: who did what, when and from where (hash-chained, append-only).")

DataDirOption = Annotated[Path | None, typer.Option(help="The server's data folder (holds audit/audit.jsonl)")]


@audit_app.command("verify")
def audit_verify(data_dir: DataDirOption = None, studies: StudiesOption = None) -> None:
    """Check that no record was changed, removed or reordered (exit 1 and the first bad record if one was)."""
    from annotation_server.audit.log import audit_dir
    from annotation_server.audit.verify import verify_log

    folder = audit_dir(settings_from(data_dir=data_dir, studies=studies).data_dir)
    result = verify_log(folder)
    if result.ok:
        typer.echo(f"audit log OK: {result.message} ({folder})")
        return
    console.print(
        f"[red]audit log TAMPERED:[/red] {escape(result.message)} ({escape(str(folder))}); "
        f"the {result.records} records before it verify"
    )
    raise typer.Exit(1)


@audit_app.command("show")
def audit_show(
    data_dir: DataDirOption = None,
    studies: StudiesOption = None,
    last: Annotated[int, typer.Option(min=1, help="How many of the newest records")] = 20,
    action: Annotated[str | None, typer.Option(help="Only this action or prefix (e.g. label, auth.login)")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this user")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per line")] = False,
) -> None:
    """The newest records, newest first."""
    from annotation_server.audit.log import AuditLog

    log = AuditLog.for_data_dir(settings_from(data_dir=data_dir, studies=studies).data_dir)
    _, records = log.query(actor=actor, action=action, limit=last)
    for r in records:
        if as_json:
            typer.echo(json.dumps(r.as_dict(), sort_keys=True))
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.ts))
            typer.echo(f"{r.seq:>6} {when} {r.actor:<16} {r.address or '-':<15} {r.action:<18} {r.target or ''}")
