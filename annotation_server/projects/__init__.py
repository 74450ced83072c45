"""Multi-reader projects: assignments, blinded reads, agreement, consensus and adjudication (docs/projects.md).

`service.ProjectService` is the entry point; `blinding.blinding_guard` applies its rule on every API route."""
