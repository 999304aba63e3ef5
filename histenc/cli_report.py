"""``python -m histenc.cli_report`` keeps working: the report CLI lives in ``histenc.analysis.cli_report``."""

from .analysis.cli_report import main

if __name__ == "__main__":
    raise SystemExit(main())
