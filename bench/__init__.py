"""Benchmark harness: `python bench/run.py --help`."""
