"""Classic (weight-free) segmentation tools."""
