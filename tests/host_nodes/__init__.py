"""Test-only ComfyUI nodes, loaded by the test and demo hosts, never by the shipped pack.

umt5-xxl cannot be made tiny through the stock CLIP loader, so these nodes stand in for the text
encoder: a prompt becomes a deterministic [1, L, 4096] tensor seeded from its text. ComfyUI's SigLIP
only loads at full size (about 5.9 GB of RAM on CPU), so a stand-in gives CLIPVisionEncode's output at
SigLIP's shape, made from the image.
"""

import hashlib

import torch
from comfy_api.latest import ComfyExtension, io


def embed_text(text: str, tokens: int = 8, width: int = 4096) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, tokens, width, generator=g) * 0.5


class FakeClip:
    """Just enough of comfy.sd.CLIP for text-encoding nodes: tokenize + encode_from_tokens_scheduled."""

    def __init__(self):
        self.calls = []

    def tokenize(self, text, **kwargs):
        return {"text": text}

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        self.calls.append(tokens["text"])
        cond = embed_text(tokens["text"])
        return [[cond, {"pooled_output": cond.mean(dim=1)}]]

    def encode_from_tokens(self, tokens, return_pooled=False, **kwargs):
        cond = embed_text(tokens["text"])
        return (cond, cond.mean(dim=1)) if return_pooled else cond


class TestConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncTestConditioning",
            category="histenc/testing",
            inputs=[io.String.Input("text", multiline=True, tooltip="Prompt text; the tensor is seeded from it.")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, text) -> io.NodeOutput:
        cond = embed_text(text)
        return io.NodeOutput([[cond, {"pooled_output": cond.mean(dim=1)}]])


class TestTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncTestTextEncoder",
            category="histenc/testing",
            inputs=[],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(FakeClip())


class TestSigLIPEncode(io.ComfyNode):
    """CLIPVisionEncode's output at SigLIP's shape (729 tokens of 1152) from the image's 27x27 mean colours."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncTestSigLIPEncode",
            category="histenc/testing",
            inputs=[io.Image.Input("image")],
            outputs=[io.ClipVisionOutput.Output()],
        )

    @classmethod
    def execute(cls, image) -> io.NodeOutput:
        from comfy.clip_vision import Output

        colours = torch.nn.functional.adaptive_avg_pool2d(image[:1].movedim(-1, 1).float(), 27)
        mix = torch.randn(3, 1152, generator=torch.Generator().manual_seed(0))
        out = Output()
        out["last_hidden_state"] = colours.flatten(2).transpose(1, 2) @ mix
        return io.NodeOutput(out)


class TestClipVisionHEncode(io.ComfyNode):
    """CLIPVisionEncode's output at clip_vision_h's shape (penultimate hidden states: 257 tokens of 1280) from the
    image's 16x16 mean colours and their mean, as Wan 2.1 I2V's image embedding reads it."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncTestClipVisionHEncode",
            category="histenc/testing",
            inputs=[
                io.Image.Input("image"),
                io.Int.Input("width", default=1280, min=1, max=4096, optional=True, tooltip="1024: clip_vision_l."),
            ],
            outputs=[io.ClipVisionOutput.Output()],
        )

    @classmethod
    def execute(cls, image, width=1280) -> io.NodeOutput:
        from comfy.clip_vision import Output

        colours = torch.nn.functional.adaptive_avg_pool2d(image[:1].movedim(-1, 1).float(), 16).flatten(2)
        colours = torch.cat([colours.mean(dim=2, keepdim=True), colours], dim=2).transpose(1, 2)
        mix = torch.randn(3, width, generator=torch.Generator().manual_seed(0))
        out = Output()
        out["penultimate_hidden_states"] = colours @ mix
        out["last_hidden_state"] = out["penultimate_hidden_states"]
        return io.NodeOutput(out)


class TestNodes(ComfyExtension):
    async def get_node_list(self):
        return [TestConditioning, TestTextEncoder, TestSigLIPEncode, TestClipVisionHEncode]


async def comfy_entrypoint():
    return TestNodes()
