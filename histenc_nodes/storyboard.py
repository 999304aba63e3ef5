"""Storyboard node: timestamped prompts, each distinct prompt encoded once with the given CLIP.

Also the ``POST /histenc/storyboard`` route the timeline editor (web/) asks, so the browser shows
the server's own parse, problems and sections instead of keeping a copy of the rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from comfy_api.latest import io

from ..histenc.longvideo.storyboard import MAX_STORYBOARD_CHARS, MIDDLE, NEAREST, TIMINGS, Storyboard
from ..histenc.longvideo.storyboard import storyboard_problem_steps
from ..histenc.longvideo.storyboard_editor import storyboard_request

from ._common import StoryboardType


EXAMPLE = """0:00 a woman knits by the window, soft morning light
0:20 she looks up as a cat jumps onto the sill
0:40 the two of them watch the rain begin outside"""


class EncodedStoryboard:
    """A parsed storyboard plus the CONDITIONING of every prompt it can hand a section."""

    def __init__(self, board: Storyboard, clip):
        self.board = board
        self.conditioning: dict[str, list] = {}
        for i in range(len(board.cues)):
            prompt = board.prompt_at(i)
            if prompt not in self.conditioning:
                self.conditioning[prompt] = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))

    def for_prompt(self, prompt: str) -> list:
        return self.conditioning[prompt]

    def __repr__(self) -> str:  # what a Preview Any node shows of it: the cues, global prompt and timing
        return f"EncodedStoryboard({self.board!r})"


class StoryboardNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncStoryboard",
            display_name="Storyboard",
            category="histenc/storyboard",
            description="Timestamped prompts for a long video. A prompt holds from its time until the next prompt; "
            "each section is sampled with the prompt in force at its middle, so a prompt starts at the section "
            "boundary nearest its time.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of your model (e.g. umt5-xxl for Wan)."),
                io.String.Input(
                    "storyboard",
                    multiline=True,
                    default=EXAMPLE,
                    tooltip="One prompt per line as 'm:ss prompt' "
                    '(or JSON [{"t": 0, "prompt": "..."}]). '
                    "A prompt holds from its time until the next prompt, starting at the section boundary "
                    f"nearest its time; times must be increasing; at most {MAX_STORYBOARD_CHARS:,} characters.",
                ),
                io.String.Input(
                    "global_prompt",
                    multiline=True,
                    default="",
                    optional=True,
                    tooltip="Text put in front of every prompt (style, characters, camera).",
                ),
                io.Combo.Input(
                    "timing",
                    options=list(TIMINGS),
                    default=MIDDLE,
                    optional=True,
                    tooltip=f"Which prompt each section is sampled with. {MIDDLE}: the prompt showing at the "
                    "section's middle, so a prompt starts at the section boundary nearest its time. "
                    f"{NEAREST}: the prompt whose time is nearest the section's middle (the paper's rule), which "
                    "can start a prompt up to half the gap to the one before it early.",
                ),
            ],
            outputs=[StoryboardType.Output(display_name="storyboard")],
        )

    @classmethod
    async def validate_inputs(cls, storyboard=None):
        """The storyboard's first problem, read a few hundred lines at a time between turns of the server's loop.

        ComfyUI checks a queued prompt on its event loop, so the reading hands the loop back after each
        step (about a millisecond) and the server keeps answering. Only ``storyboard`` is named, so a bad
        storyboard is reported once (ComfyUI repeats the answer for every input ``validate_inputs`` takes).
        """
        if not isinstance(storyboard, str):
            return True  # linked from another node: checked when it runs
        steps = storyboard_problem_steps(storyboard)  # over MAX_STORYBOARD_CHARS: the size sentence, text unread
        while True:
            try:
                next(steps)
            except StopIteration as done:
                problems = done.value
                break
            await asyncio.sleep(0)
        return True if not problems else problems[0]

    @classmethod
    def execute(cls, clip, storyboard, global_prompt="", timing=MIDDLE) -> io.NodeOutput:
        board = Storyboard.parse(storyboard, global_prompt=global_prompt or None, timing=timing)
        return io.NodeOutput(EncodedStoryboard(board, clip))


ROUTE = "/histenc/storyboard"  # ComfyUI also serves it as /api/histenc/storyboard (api.fetchApi's form)
MAX_BODY_BYTES = 1024 * 1024  # a storyboard of MAX_STORYBOARD_CHARS characters fits even with every one escaped


async def storyboard_route(request):
    """Answer the editor's check (``storyboard_request``) as JSON; a bad request gets ``{"error": sentence}``."""
    from aiohttp import web

    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _refuse_size(web, request.content_length)
    body = bytearray()
    while chunk := await request.content.read(64 * 1024):
        body += chunk
        if len(body) > MAX_BODY_BYTES:  # a body sent without a length stops being read here
            return _refuse_size(web, None)
    try:
        # A long storyboard takes a moment to read; the server's event loop keeps serving meanwhile.
        answer = await asyncio.get_running_loop().run_in_executor(None, _answer, bytes(body))
    except ValueError as err:
        return web.json_response({"error": str(err)}, status=400)
    return web.json_response(answer)


def _answer(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f'the storyboard request is not JSON ({err}); send a JSON object such as {{"text": "0:00 a lighthouse"}}.'
        ) from None
    return storyboard_request(data)


def _refuse_size(web, size: int | None):
    """413 with one sentence; ``size`` is None when the body came without a length and was cut off."""
    limit = MAX_BODY_BYTES // 1024
    size_kib = "" if size is None else f"{-(-size // 1024)} KiB, "
    return web.json_response(
        {
            "error": (
                f"the storyboard request is {size_kib}over the {limit} KiB the editor's check takes; "
                f"a storyboard may have at most {MAX_STORYBOARD_CHARS:,} characters, so shorten it."
            )
        },
        status=413,
    )


def register_route(routes=None) -> bool:
    """Add ``ROUTE`` to the running ComfyUI server (or to ``routes``); False when there is none.

    ComfyUI's main.py imports its ``server`` module and creates the PromptServer before custom nodes
    load, so a process without that (in-process tests, scripts) just gets no route.
    """
    if routes is None:
        server = sys.modules.get("server")
        routes = getattr(getattr(getattr(server, "PromptServer", None), "instance", None), "routes", None)
    if routes is None:
        return False
    if not any(getattr(r, "method", None) == "POST" and getattr(r, "path", None) == ROUTE for r in routes):
        routes.post(ROUTE)(storyboard_route)
    return True


try:
    register_route()
except Exception:  # noqa: BLE001 - the node works without the editor's route
    logging.exception("histenc: could not add the %s route; the storyboard editor cannot check storyboards", ROUTE)


NODES = [StoryboardNode]
