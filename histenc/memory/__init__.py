"""Fitting a small card: ``offload`` (block swap with prefetch) and ``vram`` (the planner)."""
