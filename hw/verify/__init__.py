"""Verifying hardware against the golden model: amaranth.sim host driver, vectorized exhaustive evaluation."""
