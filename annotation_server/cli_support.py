"""What every `annotate-server` command shares: the stderr console, settings from options, and turning a
domain error into a red message and exit code 2 (the user's input was wrong) instead of a traceback.

Kept apart from `cli.py` so that subcommand modules (`federated/job_cli.py`) can use it without an
import cycle; nothing heavy is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from annotation_server.errors import AnnotationServerError

T = TypeVar("T")
console = Console(stderr=True, soft_wrap=True)

# Commands that read a deployment's data folder (registry, users) find it as the server does: from `--data-dir`,
# else from the server's `--studies` (each studies folder or PACS URL has its own data folder).
StudiesOption = Annotated[
    str | None,
    typer.Option(
        "--studies",
        help="The server's --studies (folder or DICOMweb URL): selects its data folder when --data-dir is not given",
    ),
]


def settings_from(**overrides: Any) -> Any:
    """Settings from command-line values; None means 'not given' (environment and defaults apply)."""
    from annotation_server.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def cli_actor() -> str:
    """Who runs a CLI command, for the audit trail: the operating-system account (the CLI has no login)."""
    import getpass

    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "unknown (cli)"


def cli_audit(data_dir: Any, studies: Any = None) -> Any:
    """The audit log of the data folder a CLI command acts on (`--data-dir`, else the one of `--studies`)."""
    from annotation_server.audit.log import AuditLog

    return AuditLog.for_data_dir(settings_from(data_dir=data_dir, studies=studies).data_dir)


def or_exit(action: Callable[[], T]) -> T:
    try:
        return action()
    except AnnotationServerError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def load_app_or_exit(name: str) -> Any:
    from annotation_server.app_spec import load_app

    return or_exit(lambda: load_app(name))
