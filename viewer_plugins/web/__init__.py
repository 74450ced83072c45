"""The browser viewer's static files, served by the server at /viewer/ (installed as `annotation_viewer`)."""
