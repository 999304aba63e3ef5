"""``python -m histenc.vram`` keeps working: the planner lives in ``histenc.memory.vram``."""

from .memory.vram import main

if __name__ == "__main__":
    raise SystemExit(main())
