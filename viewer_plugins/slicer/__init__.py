"""The 3D Slicer extension's files, installed as package data so `annotate-server slicer-extension` can write them
out from a wheel. Slicer itself never imports this file (it loads `AnnotationServer/` as a module path)."""
