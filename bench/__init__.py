"""Benchmarks for the coordinator and the node; see bench/README.md."""
