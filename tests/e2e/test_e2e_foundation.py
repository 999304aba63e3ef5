"""End to end through a real ComfyUI server: stock loaders + the pack's context nodes + SaveVideo."""

import json
from pathlib import Path

from scripts.host import output_files
from tests.helpers import frame_count

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"


def test_sliding_window_workflow_writes_an_mp4(host):
    prompt = json.loads((WORKFLOWS / "api" / "demo_sliding_window.json").read_text())
    entry = host.run(prompt, timeout=300)
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    assert len(videos) == 1 and videos[0].is_file()
    assert frame_count(videos[0]) == 9  # 3 latent frames -> 1 + 4 * 2 video frames


def test_object_info_lists_every_pack_node_with_tooltips(host, pack):
    info = host.get("/object_info")
    ours = {cls.GET_SCHEMA().node_id for cls in pack.histenc_nodes.node_list()}
    # a feature module that fails to import is only logged, on the host and in-process alike: the ledger of
    # landed ids is what both must hold
    ledger = {
        line.strip()
        for line in (REPO / "histenc_nodes" / "node_ids.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert ours == ledger and ledger <= set(info), sorted(ledger - ours | ledger - set(info))
    for node_id in ours:
        spec = info[node_id]
        assert spec["category"].startswith("histenc")
        for section in ("required", "optional"):
            for name, item in spec["input"].get(section, {}).items():
                assert len(item) > 1 and item[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_a_bad_input_fails_the_prompt_not_the_server(host):
    prompt = json.loads((WORKFLOWS / "api" / "demo_sliding_window.json").read_text())
    prompt["5"]["inputs"]["width"] = 80  # the window's history is 64 wide, the section 80
    prompt["14"] = {
        "class_type": "EmptyHunyuanLatentVideo",
        "inputs": {"width": 64, "height": 64, "length": 9, "batch_size": 1},
    }
    prompt["6"]["inputs"]["latent_image"] = ["14", 0]
    entry = host.wait(host.queue(prompt), timeout=300)
    assert entry["status"]["status_str"] == "error"
    text = json.dumps(entry["status"]["messages"])
    assert "history is 8x8 latent pixels but the section is 10x8" in text
    assert host.get("/system_stats")  # still serving
