"""pgqueue's benchmark harness: ``python -m bench`` (see bench/README.md). Not collected by pytest."""
