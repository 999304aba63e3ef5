"""The house layout: histenc works without ComfyUI; the pack registers its nodes the V3 way."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_histenc_imports_and_runs_without_comfyui():
    code = (
        "import sys, importlib.util\n"
        "assert importlib.util.find_spec('comfy') is None, 'comfy is importable here'\n"
        "import histenc, histenc.dit.wan, histenc.window, torch\n"
        "from histenc.dit.rope import RopeND\n"
        "from histenc.dit.rope import box_rope\n"
        "r = box_rope(RopeND.for_head_dim(12), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.long))\n"
        "assert r.shape == (1, 2, 1, 6, 2, 2)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'nodes')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_pack_registers_v3_nodes_with_permanent_prefixed_ids(pack):
    import asyncio

    ext = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(ext.get_node_list())
    ids = [n.GET_SCHEMA().node_id for n in nodes]
    assert len(ids) == len(set(ids))
    assert all(i.startswith("HistEnc") for i in ids)
    assert {"HistEncSlidingWindow", "HistEncApplyContext"} <= set(ids)
    assert pack.WEB_DIRECTORY == "./web"


def test_every_landed_node_id_still_loads_and_every_node_is_recorded(pack):
    ledger = {
        l.strip()
        for l in (REPO / "histenc_nodes" / "node_ids.txt").read_text().splitlines()
        if l.strip() and not l.startswith("#")
    }
    ids = {n.GET_SCHEMA().node_id for n in pack.histenc_nodes.node_list()}
    assert ledger - ids == set(), f"node ids that landed but no longer load: {sorted(ledger - ids)}"
    assert ids - ledger == set(), f"record new node ids in histenc_nodes/node_ids.txt: {sorted(ids - ledger)}"


def test_the_pack_logs_the_host_version_and_whether_it_is_tested(pack, monkeypatch):
    import comfyui_version

    nodes = pack.histenc_nodes
    assert comfyui_version.__version__ in nodes.tested_versions() == ["0.3.75", "0.33.0"]
    assert nodes.host_note() == f"histenc: ComfyUI {comfyui_version.__version__}, a tested host."
    monkeypatch.setattr(comfyui_version, "__version__", "0.99.0")
    assert nodes.host_note().startswith("histenc: ComfyUI 0.99.0 is not one of the tested hosts (0.3.75, 0.33.0)")
