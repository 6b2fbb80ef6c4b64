"""Executing the spec on arrays: the numpy engine (the readable reference), the torch engine (CPU and
CUDA), the BFP engines, and the golden vectors computed with them (docs/architecture.md)."""
