"""The audit trail: who did what, when, from where, as an append-only, hash-chained log.

log.py is the log itself (`AuditLog`, one per data folder, on `Services.audit`), verify.py checks a log
file, context.py is the per-request view routers record through, cli.py is `annotate-server audit ...`.
Light imports only: the CLI loads this package.
"""

from annotation_server.audit.log import AuditLog, AuditRecord, audit_dir

__all__ = ["AuditLog", "AuditRecord", "audit_dir"]
