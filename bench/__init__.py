"""Benchmarks of the Flash-GRPO engine (``python -m bench.iteration``)."""
