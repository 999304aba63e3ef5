"""Shared workflows in both formats: the API twin the tests queue and the UI file users load.

ComfyUI's frontend loads UI-format (litegraph, version 0.4) workflows; the server runs API-format
prompts. The pack keeps each workflow as an API twin in ``workflows/api/<name>.json`` (the graph,
tested on a real host) and a UI file ``workflows/<name>.json`` made from it, so the two can be
checked to describe the same graph. The frontend keeps widget values as a plain list in the order
of the node's inputs (``input_order`` of /object_info), with extra values for the widgets it adds
itself (the seed's "control after generate" and the image upload button); this module mirrors that,
always against the /object_info of the host at hand.

Hosts differ (0.3.75 and 0.33 are tested): a newer host may turn inputs into a dynamic combo whose
chosen option adds widgets right after it (0.33's SaveVideo: ``format`` then ``format.codec``), and may
add optional inputs. The newer frontend loads an older file by position and gives every widget the
file does not reach its default, so one UI file serves both: the twins name inputs as the oldest host
does, a nested widget takes the twin's value of its plain name (``codec``), and widgets the twin does
not give are left off the end. ``host_prompt`` is a twin as the host at hand's frontend queues it.

    python scripts/workflows.py                      # start the demo host, regenerate every UI file
    python scripts/workflows.py --object-info F.json # use a saved /object_info instead of a host
    python scripts/workflows.py --new NAME --notes notes.md   # first UI file for workflows/api/NAME.json

Regenerating keeps the text of each UI file's Note node; everything else follows the API twin, and
gives the same file against either tested host.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.frontend_widgets import (  # noqa: E402
    MISSING,
    Slot,
    WorkflowError,
    _options,
    default_value,
    extra_values,
    input_type,
    is_link,
    node_info,
    slots,
    twin_value,
)

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
NOTE_TYPES = {"Note", "MarkdownNote"}
OPTIONAL_SHAPE = 7  # litegraph's hollow socket for optional inputs
# Display widgets the frontend adds and sends with the prompt but never saves; the node does not
# define them and the server ignores them, so API twins leave them out.
FRONTEND_DISPLAY_INPUTS = {"PreviewAny": {"preview"}}

# Download sources the frontend offers for missing model files (as the stock Wan templates list them).
MODEL_SOURCES = {
    "wan2.1_t2v_1.3B_fp16.safetensors": ("diffusion_models", "Wan_2.1_ComfyUI_repackaged"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": ("text_encoders", "Wan_2.1_ComfyUI_repackaged"),
    "wan_2.1_vae.safetensors": ("vae", "Wan_2.1_ComfyUI_repackaged"),
    "wan2.2_ti2v_5B_fp16.safetensors": ("diffusion_models", "Wan_2.2_ComfyUI_Repackaged"),
    "wan2.2_vae.safetensors": ("vae", "Wan_2.2_ComfyUI_Repackaged"),
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": ("diffusion_models", "Wan_2.2_ComfyUI_Repackaged"),
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": ("diffusion_models", "Wan_2.2_ComfyUI_Repackaged"),
    "wan2.1_i2v_480p_14B_fp16.safetensors": ("diffusion_models", "Wan_2.1_ComfyUI_repackaged"),
    "clip_vision_h.safetensors": ("clip_vision", "Wan_2.1_ComfyUI_repackaged"),
}


# --- API -> UI --------------------------------------------------------------------------------------


def _ui_ids(api: dict) -> dict[str, int]:
    if all(k.isdigit() for k in api):
        return {k: int(k) for k in api}
    return {k: i + 1 for i, k in enumerate(api)}


def _depths(api: dict) -> dict[str, int]:
    """Longest chain of links from a source node: the column a node goes in."""
    depth: dict[str, int] = {}

    def visit(key: str, seen: tuple = ()) -> int:
        if key in seen:
            raise WorkflowError(f"node {key} is part of a cycle; a workflow must be a DAG.")
        if key not in depth:
            sources = [v[0] for v in api[key]["inputs"].values() if is_link(v)]
            for s in sources:
                if s not in api:
                    raise WorkflowError(f"node {key} links to node {s}, which the workflow does not have.")
            depth[key] = 1 + max((visit(s, seen + (key,)) for s in sources), default=-1)
        return depth[key]

    for key in api:
        visit(key)
    return depth


def _size(outputs: int, sockets: int, widgets: list) -> list[int]:
    """Roughly the size the frontend gives a node: wide for text boxes, one row per socket and widget."""
    multiline = [spec for _, spec in widgets if _options(spec).get("multiline")]
    rows = max(sockets, outputs) * 22 + 30
    rows += sum(26 * (1 + len(extra_values(n, s))) for n, s in widgets if not _options(s).get("multiline"))
    rows += 130 * len(multiline)
    return [440 if multiline else 320, rows + 10]


def _note_node(node_id: int, text: str, pos: list[int]) -> dict:
    lines = sum(1 + len(line) // 60 for line in text.splitlines())
    return {
        "id": node_id,
        "type": "Note",
        "pos": pos,
        "size": [440, 40 + 17 * lines],
        "flags": {},
        "order": 0,
        "mode": 0,
        "inputs": [],
        "outputs": [],
        "title": "Settings for 6, 8 and 12 GB cards",
        "properties": {},
        "widgets_values": [text],
        "color": "#432",
        "bgcolor": "#653",
    }


def _model_property(values: list) -> list:
    models = []
    for value in values:
        if isinstance(value, str) and value in MODEL_SOURCES:
            folder, repo = MODEL_SOURCES[value]
            url = f"https://huggingface.co/Comfy-Org/{repo}/resolve/main/split_files/{folder}/{value}"
            models.append({"name": value, "url": url, "directory": folder})
    return models


def _node_view(key: str, item: dict, info: dict) -> tuple[list, list]:
    """One twin node as the frontend lays it out: [(slot, twin value or MISSING)] and the widget values.

    Widgets the twin does not give are left off the end of the values (the frontend gives them their
    defaults), so a widget only a newer host has leaves the file as the oldest host writes it.
    """
    used: set = set()
    raw: dict[str, object] = {}

    def value_of(slot: Slot):
        value = raw[slot.name] = twin_value(item["inputs"], used, slot)
        if value is MISSING and not slot.optional:
            raise WorkflowError(
                f"node {key} ({item['class_type']}) does not give input {slot.name}; add it to the API twin."
            )
        return default_value(slot.spec) if value is MISSING or is_link(value) else value

    walked = []
    for slot, value in slots(info, value_of):
        if not slot.widget:
            raw[slot.name] = twin_value(item["inputs"], used, slot)
        walked.append((slot, value))
    unknown = sorted(set(item["inputs"]) - used)
    if unknown:
        raise WorkflowError(f"node {key} ({item['class_type']}) has inputs {unknown} that the node does not define.")
    widgets = [(slot, value) for slot, value in walked if slot.widget]
    while widgets and raw[widgets[-1][0].name] is MISSING:
        widgets.pop()
    kept = {slot.name for slot, _ in widgets}
    values = [v for slot, value in widgets for v in (value, *extra_values(slot.plain, slot.spec))]
    return [(slot, raw[slot.name]) for slot, _ in walked if not slot.widget or slot.name in kept], values


def api_to_ui(api_prompt: dict, object_info: dict, notes: str, name: str = "workflow") -> dict:
    """A UI-format workflow of the API prompt, laid out left to right by depth, with a Note holding ``notes``."""
    ids, depth = _ui_ids(api_prompt), _depths(api_prompt)
    order = sorted(api_prompt, key=lambda k: (depth[k], ids[k]))
    nodes, links, widgets = {}, [], {}
    for key in sorted(api_prompt, key=lambda k: ids[k]):
        item = api_prompt[key]
        info = node_info(object_info, item["class_type"], f"node {key}")
        view, values = _node_view(key, item, info)
        sockets, linked_widgets = [], []
        for slot, value in view:
            entry = {"name": slot.name, "type": input_type(slot.spec), "link": None}
            if slot.declared_optional:
                entry = {"name": slot.name, "shape": OPTIONAL_SHAPE, "type": input_type(slot.spec), "link": None}
            if is_link(value):
                links.append([len(links) + 1, ids[value[0]], value[1], ids[key], None, None])
                entry["link"] = len(links)
            if not slot.widget:
                sockets.append(entry)
            elif is_link(value):
                linked_widgets.append({**entry, "widget": {"name": slot.name}})
        inputs = sockets + linked_widgets
        for slot_index, entry in enumerate(inputs):
            if entry["link"] is not None:
                links[entry["link"] - 1][4] = slot_index
        outputs = [
            {"name": out_name, "type": "COMBO" if isinstance(t, list) else t, "links": [], "slot_index": i}
            for i, (t, out_name) in enumerate(zip(info["output"], info["output_name"]))
        ]
        properties = {"Node name for S&R": item["class_type"]}
        models = _model_property(values)
        if models:
            properties["models"] = models
        widgets[key] = [(slot.name, slot.spec) for slot, _ in view if slot.widget]
        nodes[key] = {
            "id": ids[key],
            "type": item["class_type"],
            "pos": [0, 0],
            "size": [0, 0],
            "flags": {},
            "order": order.index(key) + 1,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": properties,
            "widgets_values": values,
        }
    by_id = {n["id"]: n for n in nodes.values()}
    for link in links:
        source = by_id[link[1]]
        if link[2] >= len(source["outputs"]):
            raise WorkflowError(
                f"node {link[1]} ({source['type']}) has no output {link[2]}; it has {len(source['outputs'])}."
            )
        link[5] = source["outputs"][link[2]]["type"]
        source["outputs"][link[2]]["links"].append(link[0])
    for key, node in nodes.items():
        if object_info[node["type"]].get("output_node"):
            # newer hosts give some output nodes (SaveVideo, PreviewAny) pass-through outputs; their frontend
            # adds the slots a file leaves out, so output nodes list only the outputs up to the last linked one
            while node["outputs"] and not node["outputs"][-1]["links"]:
                node["outputs"].pop()
        for out in node["outputs"]:
            out["links"] = out["links"] or None
        node["size"] = _size(len(node["outputs"]), len(node["inputs"]), widgets[key])
    note_id = max(ids.values()) + 1
    _layout(nodes, depth)
    all_nodes = [_note_node(note_id, notes, [-460, 40])] + [nodes[k] for k in sorted(nodes, key=lambda k: ids[k])]
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"histenc/workflows/{name}")),
        "revision": 0,
        "last_node_id": note_id,
        "last_link_id": len(links),
        "nodes": all_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.65, "offset": [520, 60]}},
        "version": 0.4,
    }


def _layout(nodes: dict, depth: dict, gap: int = 50) -> None:
    """Columns by depth, left to right (the Note stands left of the first column)."""
    x = 40
    for column in range(max(depth.values(), default=-1) + 1):
        members = [k for k in nodes if depth[k] == column]
        y = 40
        for key in sorted(members, key=lambda k: nodes[k]["id"]):
            nodes[key]["pos"] = [x, y]
            y += nodes[key]["size"][1] + gap
        x += max(nodes[k]["size"][0] for k in members) + 80


# --- UI -> API --------------------------------------------------------------------------------------


def ui_to_api(ui_workflow: dict, object_info: dict) -> dict:
    """The API prompt the frontend would queue for this UI workflow (notes dropped, widget values by name).

    Values are read by position, as the frontend does; where they run out, optional inputs and those a
    dynamic combo adds take their defaults (a file saved before the host had them), any other is an error.
    """
    links = {link[0]: link for link in ui_workflow.get("links", [])}
    api = {}
    for node in sorted(ui_workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] in NOTE_TYPES:
            continue
        where = f"node {node['id']}"
        if node.get("mode", 0) != 0:
            raise WorkflowError(f"{where} ({node['type']}) is muted or bypassed; enable it or delete it.")
        info = node_info(object_info, node["type"], where)
        values = node.get("widgets_values") or []
        if not isinstance(values, list):
            raise WorkflowError(f"{where} ({node['type']}) keeps its widget values as a dict, which is not supported.")
        linked = {}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links.get(entry["link"])
                if link is None:
                    raise WorkflowError(
                        f"{where} input {entry['name']} refers to link {entry['link']}, which is missing."
                    )
                linked[entry["name"]] = [str(link[1]), link[2]]
        at = 0

        def value_of(slot: Slot):
            nonlocal at
            if at >= len(values):
                if slot.optional:
                    return default_value(slot.spec)
                raise WorkflowError(
                    f"{where} ({node['type']}) has {len(values)} widget values; input "
                    f"{slot.name} has none. Re-save the workflow with this ComfyUI."
                )
            value = values[at]
            at += 1 + len(extra_values(slot.plain, slot.spec))
            return value

        inputs = {}
        for slot, value in slots(info, value_of):
            if slot.widget:
                inputs[slot.name] = value
            if slot.name in linked:
                inputs[slot.name] = linked.pop(slot.name)
        if linked:
            raise WorkflowError(
                f"{where} ({node['type']}) links inputs {sorted(linked)} that the node does not define."
            )
        if at != len(values):
            raise WorkflowError(
                f"{where} ({node['type']}) has {len(values)} widget values but its inputs take {at}; "
                "re-save the workflow with this ComfyUI."
            )
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def host_prompt(api_prompt: dict, object_info: dict) -> dict:
    """An API twin as this host's frontend queues its UI file: each input under the host's name for it, and
    the widgets the twin does not give (a newer host's) at their defaults."""
    out = {}
    for key, item in api_prompt.items():
        info = node_info(object_info, item["class_type"], f"node {key}")
        used: set = set()

        def value_of(slot: Slot):
            value = twin_value(item["inputs"], used, slot)
            return default_value(slot.spec) if value is MISSING else value

        inputs = {}
        for slot, value in slots(info, value_of):
            if not slot.widget:
                value = twin_value(item["inputs"], used, slot)
            if value is not MISSING:
                inputs[slot.name] = value
        unknown = sorted(set(item["inputs"]) - used)
        if unknown:
            raise WorkflowError(
                f"node {key} ({item['class_type']}) has inputs {unknown} that the node does not define."
            )
        out[key] = {**item, "inputs": inputs}
    return out


def note_text(ui_workflow: dict) -> str | None:
    for node in ui_workflow.get("nodes", []):
        if node["type"] in NOTE_TYPES:
            return node["widgets_values"][0]
    return None


# --- CLI --------------------------------------------------------------------------------------------


def live_object_info() -> dict:
    """/object_info of the demo host (tiny fixtures, this pack and the test nodes)."""
    from scripts import host
    from scripts.fixtures import write_fixtures

    base = host.make_base(host.CACHE / "demo")
    write_fixtures(base / "models")
    with host.Server(base) as server:
        return server.get("/object_info")


def write_ui(name: str, object_info: dict, notes: str) -> Path:
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    ui = api_to_ui(api, object_info, notes, name=name)
    if ui_to_api(ui, object_info) != host_prompt(api, object_info):
        raise WorkflowError(
            f"{name}: the UI file would not convert back to its API twin; give every widget input in the twin, "
            "under the name the oldest tested host uses."
        )
    path = WORKFLOWS / f"{name}.json"
    path.write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the UI workflows from their API twins.")
    parser.add_argument("--object-info", type=Path, help="a saved /object_info JSON instead of starting the demo host")
    parser.add_argument("--new", metavar="NAME", help="create workflows/NAME.json for workflows/api/NAME.json")
    parser.add_argument("--notes", type=Path, help="text file with the Note of the new workflow")
    args = parser.parse_args(argv)
    if args.new and not args.notes:
        parser.error("--new needs --notes with the text of the workflow's Note node.")
    if args.object_info:
        object_info = json.loads(args.object_info.read_text())
    else:
        from scripts import host

        host.reexec_in_venv()
        object_info = live_object_info()
    jobs = {}
    for ui_path in sorted(WORKFLOWS.glob("*.json")):
        notes = note_text(json.loads(ui_path.read_text()))
        if notes is None:
            print(f"{ui_path.name}: no Note node; skipped (add one or recreate it with --new).", file=sys.stderr)
            continue
        jobs[ui_path.stem] = notes
    if args.new:
        jobs[args.new] = args.notes.read_text().strip()
    failed = 0
    for name, notes in jobs.items():
        try:
            print(write_ui(name, object_info, notes))
        except (WorkflowError, FileNotFoundError) as e:
            failed += 1
            print(f"{name}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
