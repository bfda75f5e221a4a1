"""Benchmarks against what users would use instead; ``python -m benchmarks --help``."""
