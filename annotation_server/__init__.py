"""annotation-server: AI-assisted annotation of 3D medical images over the MONAI Label protocol."""

__version__ = "0.1.0"
