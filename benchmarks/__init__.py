"""Benchmarks: every figure is a ratio to the raw forward pass measured in the same run."""
