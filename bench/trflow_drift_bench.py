"""Drift of a 60-second storyboard video on the tiny Wan fixtures, with and without T-RFlow.

Run:  .cache/hosts/0.3.75/venv/bin/python bench/trflow_drift_bench.py [--out bench/results/trflow_drift_cpu.txt]
          [--seconds 60] [--steps 6]

Starts the real ComfyUI host (--cpu), runs the shared storyboard workflow once per sampler (stock
euler, T-RFlow [0, 0.7], T-RFlow [0.3, 0.7]), decodes every video to IMAGE and feeds it to the
Drift Report node; writes each report's drift deltas and the wall time. The fixtures are untrained,
so the numbers only show that the pipeline runs end to end and that the window changes the output.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import host as hostlib  # noqa: E402
from scripts.fixtures import write_fixtures  # noqa: E402

WORKFLOW = REPO / "workflows" / "api" / "wan21_t2v_storyboard_window.json"
VARIANTS = {"euler": None, "trflow [0, 0.7]": (0.0, 0.7), "trflow [0.3, 0.7]": (0.3, 0.7)}
MEASURES = ["clarity", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "af"]


def prompt_for(window, seconds: float, steps: int) -> dict:
    prompt = json.loads(WORKFLOW.read_text())
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "HistEncLongVideoSampler")
    vae = next(k for k, v in prompt.items() if v["class_type"] == "VAELoader")
    for k in [k for k, v in prompt.items() if v["class_type"] in ("HistEncDecodeLongVideoToVideo", "SaveVideo")]:
        del prompt[k]
    prompt[sampler]["inputs"].update({"seconds": seconds, "steps": steps})
    if window is not None:
        prompt["100"] = {
            "class_type": "HistEncTRFlowSampler",
            "inputs": {"a": window[0], "b": window[1], "progress": "sigma"},
        }
        prompt[sampler]["inputs"]["sampler"] = ["100", 0]
    fps = prompt[sampler]["inputs"]["fps"]
    prompt["101"] = {
        "class_type": "HistEncDecodeLongVideo",
        "inputs": {"vae": [vae, 0], "latent": [sampler, 0], "chunk_frames": 16, "warmup_frames": 2},
    }
    prompt["102"] = {
        "class_type": "HistEncDriftReport",
        "inputs": {
            "images": ["101", 0],
            "fps": fps,
            "section_frames": prompt[sampler]["inputs"]["section_frames"],
            "section_unit": "latent frames",
            "width": 960,
            "panel_height": 150,
        },
    }
    prompt["103"] = {"class_type": "PreviewAny", "inputs": {"source": ["102", 1]}}
    return prompt


def table_text(entry: dict) -> str:
    """The Drift Report table as shown by the PreviewAny node."""
    ui = entry["outputs"]["103"]
    text = ui.get("text") or next(iter(ui.values()))
    return text[0] if isinstance(text, list) else str(text)


def deltas(table: str) -> dict[str, float]:
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in MEASURES:
            out[cells[0]] = float(cells[4])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "trflow_drift_cpu.txt"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    lines = [
        f"# T-RFlow drift benchmark ({platform.processor() or platform.machine()}, CPU only, tiny untrained Wan 2.1 "
        "fixture)",
        f"# {args.seconds:g} s storyboard video, {args.steps} steps/section, shift 8, workflow {WORKFLOW.name}",
        f"# command: .cache/hosts/0.3.75/venv/bin/python bench/trflow_drift_bench.py --seconds {args.seconds:g} "
        f"--steps {args.steps}",
        "",
    ]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = hostlib.make_base(Path(tmp) / "host")
        models = Path(tmp) / "models"
        write_fixtures(models)
        for sub in ("diffusion_models", "vae"):
            for f in (models / sub).iterdir():
                (base / "models" / sub / f.name).symlink_to(f)
        with hostlib.Server(base) as server:
            for name, window in VARIANTS.items():
                t0 = time.time()
                entry = server.run(prompt_for(window, args.seconds, args.steps), timeout=1800)
                wall = time.time() - t0
                table = table_text(entry)
                results[name] = (deltas(table), wall)
                lines += [f"## {name}  (wall {wall:.1f} s)", table, ""]
                print(f"{name}: {wall:.1f} s", flush=True)
    header = "| variant | " + " | ".join(MEASURES) + " | wall s |"
    lines += [
        "## drift delta |first 15% - last 15%| per measure (lower = less drift)",
        header,
        "|" + "---|" * (len(MEASURES) + 2),
    ]
    for name, (d, wall) in results.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{d.get(m, float('nan')):.4g}" for m in MEASURES) + f" | {wall:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
