"""PACS support over DICOMweb: a datastore backed by a PACS, and DICOM SEG output for labels and results."""

from annotation_server.dicomweb.client import PacsAuth, PacsClient
from annotation_server.dicomweb.datastore import DicomWebDatastore
from annotation_server.dicomweb.seg import SegOrigin, build_seg, decode_seg

__all__ = ["DicomWebDatastore", "PacsAuth", "PacsClient", "SegOrigin", "build_seg", "decode_seg"]
