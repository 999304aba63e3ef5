"""Small stand-ins shared by the unit tests of the core (no host needed)."""

from __future__ import annotations

import torch

from histenc.dit.rope import RopeND


class ToyDiT:
    """A patchifier with the DiTPatchifier interface: a seeded Conv3d patch embedding and Wan's RoPE."""

    def __init__(self, width: int = 64, in_channels: int = 16, patch=(1, 2, 2), heads: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.width, self.in_channels, self.patch = width, in_channels, tuple(patch)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.patch_embedding = torch.nn.Conv3d(in_channels, width, kernel_size=patch, stride=patch)
        with torch.no_grad():
            self.patch_embedding.weight.copy_(torch.randn(self.patch_embedding.weight.shape, generator=g) * 0.1)
            self.patch_embedding.bias.copy_(torch.randn(width, generator=g) * 0.1)
        self.rope_embedder = RopeND.for_head_dim(width // heads)

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(latents.float()).flatten(2).transpose(1, 2)

    def latent_patch_weights(self):
        return self.patch_embedding.weight.detach().clone(), self.patch_embedding.bias.detach().clone()


def frame_count(path) -> int:
    """Frames in a video file, decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def run_long_video(
    stubs,
    model,
    sources,
    text: str,
    seconds: float,
    size: int = 32,
    cfg: float = 1.0,
    continuation: int = 1,
    seed: int = 5,
    job: str = "",
) -> torch.Tensor:
    """The long-video sampler with one latent frame per section at 4 fps and 1 step; returns the latents."""
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler
    from comfyui_histenc.histenc_nodes.storyboard import EncodedStoryboard

    from histenc.longvideo.storyboard import Storyboard

    board = EncodedStoryboard(Storyboard.parse(text), stubs.FakeClip())
    negative = [[stubs.embed_text("low quality"), {}]]
    out = LongVideoSampler.execute(
        model,
        board,
        negative,
        seconds,
        4.0,
        1,
        size,
        size,
        seed,
        1,
        cfg,
        "euler",
        "simple",
        continuation,
        job,
        context=list(sources),
    )
    return out.args[0]["samples"]


def interrupt_third_section(monkeypatch):
    """Make the third call of ComfyUI's sampling raise the host's interruption (as a cancel does)."""
    import comfy.model_management as mm
    import comfy.sample

    real, calls = comfy.sample.sample, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise mm.InterruptProcessingException()
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", flaky)


# Start-up is over when the nodes are registered, the spinner is off and the first workflow is open: 0.33's
# frontend registers the nodes first and opens that workflow afterwards, over any graph loaded in between.
FRONTEND_READY = """() => {
  const app = window.comfyAPI?.app?.app, workspace = app?.extensionManager;
  return !!(app?.graph && window.LiteGraph?.registered_node_types?.HistEncLongVideoSampler && app.vueAppReady
            && workspace?.spinner === false && workspace.workflow?.activeWorkflow);
}"""
