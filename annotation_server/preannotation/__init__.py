"""Automatic pre-annotation of series new in the PACS: rules from the app, a persisted state, the watcher."""

from annotation_server.preannotation.rules import PreannotationRules

__all__ = ["PreannotationRules"]
