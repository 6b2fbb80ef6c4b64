"""Test configuration: deterministic hypothesis runs without per-example deadlines."""

from hypothesis import settings

settings.register_profile("lpsgld", deadline=None, derandomize=True, max_examples=200)
settings.load_profile("lpsgld")
