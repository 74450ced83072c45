"""Choosing what to annotate next (and, later, learning from what was annotated)."""
