"""Small, self-contained example models with known mechanisms, trained in seconds on a
CPU and cached, for the demo and the tutorials (no downloads needed)."""
