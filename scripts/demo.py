"""Run the bundled demo end to end on the embedded host and print the path of the mp4 it wrote.

    python3 scripts/demo.py [workflow.json]

Creates the project's environment and host on first use (see scripts/host.py), generates the tiny
Wan fixtures, starts ComfyUI headless on 127.0.0.1, queues the API-format workflow and waits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import host  # noqa: E402


def main() -> int:
    host.reexec_in_venv()
    from scripts.fixtures import write_fixtures

    workflow = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else host.REPO / "workflows" / "api" / "wan21_t2v_storyboard_window.json"
    )
    base = host.make_base(host.CACHE / "demo")
    write_fixtures(base / "models")
    prompt = json.loads(workflow.read_text())
    with host.Server(base) as server:
        print(f"[demo] ComfyUI is up at {server.url}; running {workflow.name}", flush=True)
        entry = server.run(prompt, timeout=1800)
    videos = [p for p in host.output_files(entry, base) if p.suffix in (".mp4", ".webm")]
    if not videos:
        print("[demo] the workflow finished but wrote no video; see " + str(base / "server.log"), file=sys.stderr)
        return 1
    for path in videos:
        print(path)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except host.HostError as e:
        sys.exit(f"error: {e}")
