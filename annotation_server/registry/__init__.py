"""Model versions: every trained or imported model is an immutable, numbered version with provenance."""

from annotation_server.registry.records import ModelVersion, RegistryEvent, VersionSource, VersionStatus
from annotation_server.registry.registry import ModelRegistry

__all__ = ["ModelRegistry", "ModelVersion", "RegistryEvent", "VersionSource", "VersionStatus"]
