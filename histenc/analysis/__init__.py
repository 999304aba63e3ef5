"""Measuring a video: ``metrics`` (drift, quality, AF), ``report`` (the drift report), ``cli_report`` (its CLI)."""
