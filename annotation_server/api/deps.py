"""FastAPI dependencies that hand routers the services living on `app.state`."""

from __future__ import annotations

from fastapi import Request

from annotation_server.datastore import Datastore
from annotation_server.inference.engine import InferenceService
from annotation_server.learning.active_learning import ActiveLearningService
from annotation_server.services import Services
from annotation_server.sessions import SessionStore


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_datastore(request: Request) -> Datastore:
    return get_services(request).datastore


def get_inference(request: Request) -> InferenceService:
    return get_services(request).inference


def get_sessions(request: Request) -> SessionStore:
    return get_services(request).sessions


def get_active_learning(request: Request) -> ActiveLearningService:
    return get_services(request).active_learning
