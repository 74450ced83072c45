"""`python -m annotation_server` is the same as `annotate-server`."""

from annotation_server.cli import main

main()
