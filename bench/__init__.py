"""taskmedic benchmarks: `python -m bench [exporter|healer|logs]` (see bench/README.md)."""
