"""Studies built on the library: offline data, models, the training runner, the study grid, the
design-space studies, the Gaussian toy and the benchmarks (docs/architecture.md)."""
