"""MONAI Label sessions: images a client uploads for interactive work without adding them to the datastore."""

from annotation_server.sessions.store import SessionInfo, SessionStore

__all__ = ["SessionInfo", "SessionStore"]
