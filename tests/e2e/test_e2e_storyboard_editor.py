"""The storyboard timeline editor in the real ComfyUI frontend, driven in headless Chromium.

Loads the bundled minute workflow into the page, swaps its real-model loaders for the tiny test
ones, then edits the storyboard only through the editor with real mouse and keyboard events
(delete, add, type, drag, arrow keys, a typed time), checks that the inline problems and sections
are the server's answer from its check route (POST /api/histenc/storyboard, and nothing computed
in the browser: a doctored answer is what the editor shows), queues through the frontend and
asserts the server received exactly the edited text. The route itself is also asked directly.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from histenc.longvideo.storyboard import Storyboard, storyboard_problems
from histenc.longvideo.storyboard_editor import describe_storyboard
from tests.helpers import FRONTEND_READY
from scripts.host import HostError
from tests.conftest import ARTIFACTS

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "wan21_t2v_storyboard_minute.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Settings that would otherwise open dialogs over the canvas (first-run templates, missing models).
QUIET_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
}

# Turns the bundled workflow into a tiny CPU job: test text encoders instead of umt5, the tiny Wan
# fixture, 2 s at 32x32 with 1 step, no decode; returns the storyboard node's id.
PREPARE_GRAPH = """async (workflow) => {
  const app = window.comfyAPI.app.app;
  await app.loadGraphData(workflow, true, true, null,
                          { showMissingModelsDialog: false, showMissingNodesDialog: false });
  const graph = app.graph;
  const byType = (type) => graph._nodes.find((n) => n.type === type);
  const widget = (node, name) => node.widgets.find((w) => w.name === name);
  const board = byType("HistEncStoryboard");
  const sampler = byType("HistEncLongVideoSampler");
  const encoder = LiteGraph.createNode("HistEncTestTextEncoder");
  const negative = LiteGraph.createNode("HistEncTestConditioning");
  graph.add(encoder);
  graph.add(negative);
  encoder.connect(0, board, board.inputs.findIndex((i) => i.name === "clip"));
  widget(negative, "text").value = "blurry";
  negative.connect(0, sampler, sampler.inputs.findIndex((i) => i.name === "negative"));
  const unused = ["CLIPLoader", "CLIPTextEncode", "VAELoader", "HistEncDecodeLongVideoToVideo", "SaveVideo", "Note"];
  for (const type of unused) {
    for (const node of graph._nodes.filter((n) => n.type === type)) graph.remove(node);
  }
  widget(byType("UNETLoader"), "unet_name").value = "histenc_tiny_wan21_t2v.safetensors";
  const settings = { seconds: 2, fps: 16, section_frames: 4, width: 32, height: 32, steps: 1, cfg: 1 };
  for (const [name, value] of Object.entries(settings)) widget(sampler, name).value = value;
  // The storyboard in view at scale 1 (DOM widgets hide when zoomed out), everything else beside it.
  graph._nodes.forEach((node, i) => { node.pos = [1000 + 40 * i, 40 * i]; });
  board.pos = [0, 0];
  board.setSize([760, 640]);
  sampler.pos = [800, 0];
  app.canvas.ds.scale = 1;
  app.canvas.ds.offset = [100, 170];
  graph.setDirtyCanvas(true, true);
  return String(board.id);
}"""

STORYBOARD_TEXT = """() => {
  const board = window.comfyAPI.app.app.graph._nodes.find((n) => n.type === "HistEncStoryboard");
  return board.widgets.find((w) => w.name === "storyboard").value;
}"""


def browser_ready() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing; run .ci/browser_deps.sh (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed in the venv; run .ci/browser_deps.sh (pip install playwright)"
    return None


@pytest.fixture
def page(request):
    why = browser_ready()
    if why:
        pytest.skip(why)
    host = request.getfixturevalue("host")  # only started once the browser is known to be there
    from playwright.sync_api import sync_playwright

    quiet_dialogs(host)
    profile = tempfile.mkdtemp(prefix="histenc-chromium-")
    with sync_playwright() as pw:
        # A persistent context is how playwright takes a fresh --user-data-dir of our own.
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(30_000)
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(host.url)
            page.wait_for_function(FRONTEND_READY, timeout=120_000)
            page.histenc_errors = errors
            yield page
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            try:
                page.screenshot(path=str(ARTIFACTS / "storyboard_editor.png"))
            except Exception:  # the screenshot is evidence, not the test
                pass
            browser.close()
            shutil.rmtree(profile, ignore_errors=True)


def quiet_dialogs(host) -> None:
    """Store QUIET_SETTINGS on the server (its answer is empty, so not through host.post)."""
    request = urllib.request.Request(
        host.url + "/settings", data=json.dumps(QUIET_SETTINGS).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200


ROUTE = "/api/histenc/storyboard"  # the path the editor's api.fetchApi("/histenc/storyboard") asks
SETTINGS = {"seconds": 2.0, "fps": 16.0, "section_frames": 4}  # the sampler's, as PREPARE_GRAPH sets them


def problems_shown(editor) -> list[str]:
    return [t.strip() for t in editor.locator(".histenc-sb-problem").all_inner_texts()]


def text_of(page) -> str:
    return page.evaluate(STORYBOARD_TEXT)


def settled(editor) -> None:
    """Wait until everything the editor shows is the server's answer for the text as it is now."""
    from playwright.sync_api import expect

    expect(editor).to_have_attribute("data-state", "ready", timeout=30_000)


def ask(host, text: str, **extra) -> dict:
    """The route's answer for ``text`` with the sampler's settings (what the editor asks)."""
    return host.post(ROUTE, {"text": text, **SETTINGS, **extra})


def switches_shown(editor) -> list[tuple[str, str]]:
    """(prompt index, where it is first sampled) of every switch marker the editor draws."""
    markers = editor.locator('[data-role="switch"]')
    return [
        (markers.nth(i).get_attribute("data-cue"), markers.nth(i).get_attribute("data-at"))
        for i in range(markers.count())
    ]


SET_TIMING = """(value) => {
  const board = window.comfyAPI.app.app.graph._nodes.find((n) => n.type === "HistEncStoryboard");
  const widget = board.widgets.find((w) => w.name === "timing");
  const before = widget.value;
  widget.value = value;
  return before;
}"""


def test_edit_retime_and_queue_through_the_editor(page, host, tmp_path):
    checks = []  # every request the editor makes to the check route: (method, url, body)
    page.on("request", lambda r: "histenc/storyboard" in r.url and checks.append((r.method, r.url, r.post_data)))
    workflow = json.loads(WORKFLOW.read_text())
    node_id = page.evaluate(PREPARE_GRAPH, workflow)
    editor = page.locator(f'.histenc-sb[data-node="{node_id}"]')
    editor.wait_for(state="visible")
    original = text_of(page)
    assert original.startswith("0:00 a lighthouse") and original.count("\n") == 3

    # The 2 s video makes the cues at 0:15, 0:30 and 0:45 late: the editor shows the route's sentences.
    settled(editor)
    assert problems_shown(editor) == ask(host, original)["problems"] == storyboard_problems(original, 2.0)
    assert len(problems_shown(editor)) == 3
    assert editor.locator(".histenc-sb-block.histenc-sb-invalid").count() == 3
    boundaries = editor.locator('[data-role="boundary"]')
    assert [boundaries.nth(i).get_attribute("title") for i in range(boundaries.count())] == [
        "section 1: 0:00 - 0:00.8125",
        "section 2: 0:00.8125 - 0:01.8125",
        "section 3: 0:01.8125 - 0:02",
    ]

    # Keyboard: focus the second block and delete three prompts with the Delete key.
    blocks = editor.locator(".histenc-sb-block")
    assert blocks.count() == 4
    blocks.nth(1).focus()
    for _ in range(3):
        page.keyboard.press("Delete")
    assert blocks.count() == 1  # each edit goes on from the last one's result, before the server answers
    first_line = original.splitlines()[0]
    assert text_of(page) == first_line
    settled(editor)
    assert editor.locator(".histenc-sb-ok").is_visible()

    # Add a prompt with the mouse; the new prompt's text field takes the focus for typing.
    editor.get_by_role("button", name="Add a prompt after the last one").click()
    assert blocks.count() == 2
    settled(editor)
    assert "has no prompt text" in problems_shown(editor)[0]
    page.keyboard.type("a ship on the horizon")
    page.keyboard.press("Enter")  # back to the block
    assert text_of(page) == first_line + "\n0:01 a ship on the horizon"

    # Drag the new block onto 0:00: two prompts at one time, reported inline.
    axis = editor.locator(".histenc-sb-axis").bounding_box()
    drag(page, blocks.nth(1), axis["x"] - 40, axis["y"] + axis["height"] / 2)
    edited = text_of(page)
    assert edited == first_line + "\n0:00 a ship on the horizon"
    settled(editor)
    assert problems_shown(editor) == ask(host, edited)["problems"] == storyboard_problems(edited, 2.0)
    assert problems_shown(editor) == [
        "storyboard line 2 repeats the time 0:00 of line 1; give each prompt its own time."
    ]

    # Drag it past the end (it stops at the 2 s end), then one arrow step back: 1.5 s.
    drag(page, blocks.nth(1), axis["x"] + axis["width"] + 40, axis["y"] + axis["height"] / 2)
    assert text_of(page) == first_line + "\n0:02 a ship on the horizon"
    page.keyboard.press("ArrowLeft")
    expected = first_line + "\n0:01.5 a ship on the horizon"
    assert text_of(page) == expected
    assert storyboard_problems(expected, 2.0) == []
    settled(editor)
    assert editor.locator(".histenc-sb-ok").is_visible()
    # Valid now, so every section names the prompt the server gives it: the one in force at its middle.
    answer = ask(host, expected)
    assert [boundaries.nth(i).get_attribute("title") for i in range(boundaries.count())] == [
        f"section {s['index'] + 1}: {s['start']} - {s['end']}, prompt {s['cue'] + 1}"
        for s in answer["schedule"]["sections"]
    ]
    assert [s["cue"] for s in answer["schedule"]["sections"]] == [0, 0, 1]
    # The switches are drawn where the server's rule puts them: 0:01.5 starts on the boundary nearest it.
    assert switches_shown(editor) == [(str(w["cue"]), w["at"]) for w in answer["schedule"]["switches"]]
    assert switches_shown(editor) == [("0", "0:00"), ("1", "0:01.8125")]
    # The node's timing choice reaches the check: with the nearest-timestamp rule the ship shows a section early.
    assert page.evaluate(SET_TIMING, "nearest timestamp") == "in force at the section's middle"  # the default
    page.wait_for_function('() => document.querySelector(\'[data-role="switch"][data-at="0:00.8125"]\')')
    settled(editor)
    nearest = ask(host, expected, timing="nearest timestamp")
    assert switches_shown(editor) == [(str(w["cue"]), w["at"]) for w in nearest["schedule"]["switches"]]
    page.evaluate(SET_TIMING, "in force at the section's middle")
    page.wait_for_function('() => document.querySelector(\'[data-role="switch"][data-at="0:01.8125"]\')')
    settled(editor)

    # A typed time is read by the server: a bad one shows parse_time's sentence and changes nothing.
    time_field = editor.locator('[data-role="time"][data-index="1"]')
    time_field.fill("1:5")
    time_field.press("Enter")
    sentence = host.post(ROUTE, {"time": "1:5"})["time"]["problem"]
    assert sentence.startswith("time '1:5' has '5' after a colon")
    page.wait_for_function(
        "(s) => [...document.querySelectorAll('.histenc-sb-problem')].some((li) => li.textContent === s)", arg=sentence
    )
    assert "histenc-sb-invalid" in time_field.get_attribute("class")
    assert text_of(page) == expected
    time_field.fill("1.5")
    time_field.press("Enter")
    editor.locator(".histenc-sb-ok").wait_for()
    assert text_of(page) == expected
    # The plain textarea shows the same text (it is the same widget).
    assert page.locator("textarea.comfy-multiline-input").first.input_value() == expected

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "storyboard_editor_edited.png"))

    # Queue through the frontend and read back what the server was given.
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as queued:
        page.evaluate("() => window.comfyAPI.app.app.queuePrompt(0, 1)")
    reply = queued.value.json()
    assert "prompt_id" in reply, reply
    entry = host.wait(reply["prompt_id"], timeout=300)
    prompt = entry["prompt"][2]
    assert prompt[node_id]["class_type"] == "HistEncStoryboard"
    assert prompt[node_id]["inputs"]["storyboard"] == expected
    assert entry["status"]["status_str"] == "success", entry["status"]

    # A saved workflow keeps the storyboard in the widget's own slot; the editor adds no value. The bundled
    # workflow predates the timing input: it loaded with the default, which is saved after the old values.
    saved = page.evaluate("""() => {
      const app = window.comfyAPI.app.app;
      const board = app.graph._nodes.find((n) => n.type === "HistEncStoryboard");
      return board.serialize().widgets_values;
    }""")
    assert saved == [expected, "cinematic wide shot, slow dolly, 35mm film look", "in force at the section's middle"]

    # Export writes the server's JSON form; import replaces the storyboard with a file as written.
    with page.expect_download() as download:
        editor.get_by_role("button", name="Download the storyboard as JSON").click()
    exported = Path(download.value.path()).read_text().strip()
    assert exported == Storyboard.parse(expected).to_json() == answer["exports"]["json"]
    imported = '[{"t": 0, "prompt": "a quiet harbour"}, {"t": 1.25, "prompt": "a ferry leaves"}]'
    file = tmp_path / "storyboard_import.json"
    file.write_text(imported)
    with page.expect_file_chooser() as chooser:
        editor.get_by_role("button", name="Replace the storyboard with a JSON or text file").click()
    chooser.value.set_files(str(file))
    page.wait_for_function(
        "() => document.querySelectorAll('.histenc-sb-block').length === 2 && "
        "document.querySelector('.histenc-sb-form').textContent === 'JSON'"
    )
    assert text_of(page) == imported

    # Nothing in the browser decides: doctor the route's answer and the editor shows the doctored sentence.
    def doctored(route):
        response = route.fetch()
        reply = response.json()
        if "problems" in reply:
            reply["problems"] = [f"(from the route) {p}" for p in reply["problems"]] or ["(from the route) all clear"]
        route.fulfill(response=response, json=reply)

    page.route("**" + ROUTE, doctored)
    settled(editor)
    blocks.nth(1).focus()
    page.keyboard.press("ArrowRight")
    settled(editor)
    assert problems_shown(editor) == ["(from the route) all clear"]
    page.unroute("**" + ROUTE)

    assert checks and all(method == "POST" and url.endswith(ROUTE) for method, url, _ in checks)
    bodies = [json.loads(body) for _, _, body in checks]
    assert {"time": "1:5"} in bodies and any(b.get("text") == expected and b.get("seconds") == 2 for b in bodies)
    timings = {b["timing"] for b in bodies if "seconds" in b}  # every check of the widget's text (not an import's)
    assert timings == {"in force at the section's middle", "nearest timestamp"}
    assert not page.histenc_errors, page.histenc_errors


def test_the_check_route_answers_on_the_real_server(host):
    """The route as ComfyUI serves it (with and without /api): the core's own answer, or one sentence."""
    text = "0:00 a lighthouse\n0:03 a storm"
    want = json.loads(json.dumps(describe_storyboard(text, 2.0, 16.0, 4)))
    assert host.post("/histenc/storyboard", {"text": text, **SETTINGS}) == want
    assert host.post(ROUTE, {"text": text, **SETTINGS}) == want
    assert want["problems"] == storyboard_problems(text, 2.0) and want["cues"][1]["problems"] == want["problems"]
    assert host.post(ROUTE, {"time": "0:04.5"}) == {"time": {"text": "0:04.5", "seconds": 4.5}}
    with pytest.raises(HostError, match=r"\(400\).*unknown field\(s\) \['sconds'\]"):
        host.post(ROUTE, {"text": text, "sconds": 2})
    with pytest.raises(HostError, match=r"\(413\).*over the 1024 KiB the editor's check takes"):
        host.post(ROUTE, {"text": "0:00 a lighthouse\n" * 70_000})
    nearest = host.post(ROUTE, {"text": text, **SETTINGS, "timing": "nearest timestamp"})
    assert nearest == json.loads(json.dumps(describe_storyboard(text, 2.0, 16.0, 4, timing="nearest timestamp")))


def drag(page, block, x, y):
    """Press on the block's middle, move in steps (pointermove events), release at (x, y)."""
    box = block.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(x, y, steps=8)
    page.mouse.up()
    time.sleep(0.05)
