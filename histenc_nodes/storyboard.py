"""Storyboard node: timestamped prompts, each distinct prompt encoded once with the given CLIP."""

from __future__ import annotations

from comfy_api.latest import io

from ..histenc.longvideo.storyboard import Storyboard

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


class StoryboardNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncStoryboard",
            display_name="Storyboard",
            category="histenc/storyboard",
            description="Timestamped prompts for a long video; each section is sampled with the prompt nearest to its middle.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of your model (e.g. umt5-xxl for Wan)."),
                io.String.Input("storyboard", multiline=True, default=EXAMPLE,
                                tooltip="One prompt per line as 'm:ss prompt' (or JSON [{\"t\": 0, \"prompt\": \"...\"}]). "
                                        "A prompt holds from its time on; times must be increasing."),
                io.String.Input("global_prompt", multiline=True, default="", optional=True,
                                tooltip="Text put in front of every prompt (style, characters, camera)."),
            ],
            outputs=[StoryboardType.Output(display_name="storyboard")],
        )

    @classmethod
    def validate_inputs(cls, storyboard, **kwargs):
        from ..histenc.longvideo.storyboard import storyboard_problems

        if not isinstance(storyboard, str):
            return True  # linked from another node: checked when it runs
        problems = storyboard_problems(storyboard)
        return True if not problems else f"storyboard: {problems[0]}"

    @classmethod
    def execute(cls, clip, storyboard, global_prompt="") -> io.NodeOutput:
        board = Storyboard.parse(storyboard, global_prompt=global_prompt or None)
        return io.NodeOutput(EncodedStoryboard(board, clip))


NODES = [StoryboardNode]
