"""Apps shipped with annotation-server (installed as the `annotation_apps` package)."""
