"""Benchmarks for the coordinator and the node; see bench/README.md."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout the benchmarks belong to
