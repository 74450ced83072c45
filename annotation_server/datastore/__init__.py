"""Studies and their versioned labels."""

from annotation_server.datastore.base import Datastore
from annotation_server.datastore.local import LocalDatastore
from annotation_server.datastore.records import (
    FINAL_TAG,
    ORIGINAL_TAG,
    DatastoreStats,
    ImageRecord,
    LabelSource,
    LabelVersion,
    ScanReport,
)

__all__ = [
    "FINAL_TAG",
    "ORIGINAL_TAG",
    "Datastore",
    "DatastoreStats",
    "ImageRecord",
    "LabelSource",
    "LabelVersion",
    "LocalDatastore",
    "ScanReport",
]
