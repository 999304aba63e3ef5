"""The editor's check route (POST /histenc/storyboard) in-process: a real aiohttp app around the pack's handler."""

from __future__ import annotations

import asyncio
import json
import sys
import threading

import pytest

from histenc.longvideo.storyboard import storyboard_problems
from histenc.longvideo.storyboard_editor import describe_storyboard

TEXT = "# harbour\n0:00 a lighthouse\n0:01 a storm\n0:05 gulls"


@pytest.fixture
def route(pack):
    from comfyui_histenc.histenc_nodes import storyboard

    return storyboard


def call(route, body, *, raw: bytes | None = None, chunked: bool = False) -> tuple[int, dict]:
    """POST ``body`` (or ``raw`` bytes) to an aiohttp app that has only the pack's route; (status, JSON)."""
    from aiohttp import web
    from aiohttp.payload import AsyncIterablePayload
    from aiohttp.test_utils import TestClient, TestServer

    async def run():
        routes = web.RouteTableDef()
        assert route.register_route(routes)
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            data = json.dumps(body).encode() if raw is None else raw
            if chunked:  # no Content-Length: the handler must stop reading by itself

                async def pieces(whole=data):
                    for i in range(0, len(whole), 32 * 1024):
                        yield whole[i : i + 32 * 1024]

                data = AsyncIterablePayload(pieces())
            reply = await client.post(route.ROUTE, data=data, headers={"Content-Type": "application/json"})
            return reply.status, await reply.json()

    return asyncio.run(run())


def test_answers_with_the_cores_reading(route):
    status, reply = call(route, {"text": TEXT, "seconds": 2, "fps": 16, "section_frames": 4})
    assert status == 200
    assert reply == json.loads(json.dumps(describe_storyboard(TEXT, 2, 16, 4)))
    assert (
        reply["problems"]
        == storyboard_problems(TEXT, 2)
        == [
            "storyboard line 4 at 0:05 is past the end of the 0:02 video; lengthen the video or move the prompt "
            "earlier."
        ]
    )
    assert [(c["time"], c["slot"], bool(c["problems"])) for c in reply["cues"]] == [
        ("0:00", 1, False),
        ("0:01", 2, False),
        ("0:05", 3, True),
    ]
    assert [s["latent_frames"] for s in reply["schedule"]["sections"]] == [4, 4, 1]


def test_a_valid_storyboard_gets_its_sections_prompts_and_exports(route):
    status, reply = call(
        route, {"text": "0:00 a lighthouse\n0:01.5 a storm", "seconds": 2.0, "fps": 16.0, "section_frames": 4.0}
    )
    assert status == 200 and reply["problems"] == []
    assert [s["cue"] for s in reply["schedule"]["sections"]] == [0, 0, 1]  # a storm at 0:01.5: from 0:01.8125
    assert [(w["cue"], w["at"]) for w in reply["schedule"]["switches"]] == [(0, "0:00"), (1, "0:01.8125")]
    assert reply["exports"]["json"] == '[{"t": 0.0, "prompt": "a lighthouse"}, {"t": 1.5, "prompt": "a storm"}]'
    assert reply["end_time"] == "0:02"


def test_a_typed_time_is_read_by_parse_time(route):
    assert call(route, {"time": "1:02.5"}) == (200, {"time": {"text": "1:02.5", "seconds": 62.5}})
    status, reply = call(route, {"time": "1:5"})
    assert status == 200 and reply["time"]["problem"].startswith("time '1:5' has '5' after a colon")


@pytest.mark.parametrize(
    "body, raw, words",
    [
        (None, b"{not json", "is not JSON"),
        (None, b"\xff\xfe", "is not JSON"),
        (["0:00 a"], None, "must be a JSON object, got list"),
        ({"text": "0:00 a", "length": 3}, None, "unknown field(s) ['length']"),
        ({"text": 5}, None, '"text" is 5; send it as text'),
        ({"text": "0:00 a", "seconds": "60"}, None, '"seconds" is "60"; send a number'),
        ({}, None, 'neither "text" nor "time"'),
    ],
)
def test_a_bad_request_gets_one_sentence(route, body, raw, words):
    status, reply = call(route, body, raw=raw)
    assert status == 400
    assert list(reply) == ["error"] and words in reply["error"]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_refused_without_reading_it_all(route, chunked):
    text = "0:00 a lighthouse\n" * (route.MAX_BODY_BYTES // 18 + 10)
    status, reply = call(route, {"text": text}, chunked=chunked)
    assert status == 413
    assert (
        "over the 1024 KiB the editor's check takes; a storyboard may have at most 100,000 characters"
        in (reply["error"])
    )
    # With a length the size is named; without one the handler stops reading once past the limit.
    assert reply["error"].startswith("the storyboard request is over the" if chunked else "the storyboard request is 1")


def test_a_storyboard_over_its_own_limit_gets_the_nodes_sentence(route):
    """Any storyboard the node takes fits the route (even with every character escaped); a longer one is told why."""
    from histenc.longvideo.storyboard import MAX_STORYBOARD_CHARS

    assert len(json.dumps({"text": "\x00" * MAX_STORYBOARD_CHARS, "seconds": 60})) < route.MAX_BODY_BYTES
    text = "0:00 a\n" * (MAX_STORYBOARD_CHARS // 7 + 1)
    status, reply = call(route, {"text": text})
    assert status == 200 and reply["problems"] == storyboard_problems(text) and len(reply["problems"]) == 1
    assert reply["problems"][0].startswith(f"storyboard is {len(text):,} characters, over the 100,000")


def test_the_storyboard_is_read_off_the_event_loop(route, monkeypatch):
    seen = []

    def spy(body):
        seen.append(threading.current_thread() is threading.main_thread())
        return {"ok": True}

    monkeypatch.setattr(route, "storyboard_request", spy)
    assert call(route, {"text": "0:00 a"}) == (200, {"ok": True})
    assert seen == [False]


def test_registers_once_and_only_on_a_running_server(route, monkeypatch):
    from aiohttp import web

    routes = web.RouteTableDef()
    assert route.register_route(routes) and route.register_route(routes)
    assert [(r.method, r.path) for r in routes] == [("POST", "/histenc/storyboard")]
    monkeypatch.delitem(sys.modules, "server", raising=False)  # no ComfyUI server in this process
    assert route.register_route() is False

    class PromptServer:  # what ComfyUI's main.py has created before custom nodes load
        instance = type("Instance", (), {"routes": web.RouteTableDef()})()

    monkeypatch.setitem(sys.modules, "server", type(sys)("server"))
    sys.modules["server"].PromptServer = PromptServer
    assert route.register_route() is True
    assert [r.path for r in PromptServer.instance.routes] == ["/histenc/storyboard"]
