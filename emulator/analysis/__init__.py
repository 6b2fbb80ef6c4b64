"""Exact analysis of the spec: output distributions by enumeration, the Markov-chain solver, and the
float64 SGLD reference (docs/architecture.md)."""
