"""Write the files of tests/data/before_house with the code as it was BEFORE the sub-package move.

    git worktree add /tmp/old 6539dcb
    .cache/hosts/0.3.75/venv/bin/python tests/data/before_house/make.py /tmp/old tests/data/before_house
    git worktree remove /tmp/old

Run against a checkout of the old flat layout (``histenc.encoder``, ``histenc.packing``,
``histenc.discrete``, ``histenc.autoregress`` ...). The helpers above ``make()`` use torch only:
tests/histenc/test_before_house.py imports them to load the files with the new code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

CHANNELS, WIDTH, PATCH = 4, 32, (1, 2, 2)
FAMILY = "wan2.1"
ENCODER = dict(rate="2x2x2", hidden=(4, 8, 8, 8), heads=2)
SCHEDULE = "td_f4k2f1k1_g2"
GRID = (2, 8, 8)  # section frames, latent rows, latent columns
TOY_DIT = dict(
    dim=WIDTH, ffn_dim=48, num_heads=2, num_layers=2, in_dim=CHANNELS, out_dim=CHANNELS, text_dim=8, freq_dim=16
)
LORA = dict(rank=2, alpha=4.0, targets="self_attn,ffn", blocks="all", seed=1)
JOB_STORYBOARD = "0:00 a red kite\n0:01 a blue boat"
JOB_SECONDS, JOB_FPS, JOB_SECTION_FRAMES, JOB_SEED = 2.0, 8.0, 2, 11
JOB_SETTINGS = {
    "model": "WAN21",
    "seconds": JOB_SECONDS,
    "fps": JOB_FPS,
    "section_frames": JOB_SECTION_FRAMES,
    "width": 32,
    "height": 32,
    "cfg": 1.0,
    "sampler": "euler",
    "scheduler": "simple",
    "continuation_frames": 1,
    "context": [{"type": "SlidingWindow", "frames": 1}],
}
JOB_DONE = 2  # sections finished before the job was interrupted


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs() -> dict[str, torch.Tensor]:
    """What the expected outputs were computed on (stored with them, so no RNG has to agree later)."""
    g = generator(0)
    condition = torch.randn(1, CHANNELS, 3, 8, 8, generator=g)
    mask = torch.zeros(1, 1, 3, 8, 8)
    mask[:, :, :1] = 1.0
    return {
        "input.history": torch.randn(1, CHANNELS, 6, 8, 8, generator=g),
        "input.condition": condition * mask,
        "input.mask": mask,
    }


class Patchifier:
    """A DiT as the context sources see it: width, channels, patch, a seeded patch embedding."""

    def __init__(self):
        g = generator(1)
        self.width, self.in_channels, self.patch = WIDTH, CHANNELS, PATCH
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.weight = torch.randn(WIDTH, CHANNELS, *PATCH, generator=g) * 0.2
        self.bias = torch.randn(WIDTH, generator=g) * 0.1

    def latent_patch_weights(self):
        return self.weight.clone(), self.bias.clone()

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.conv3d(latents.float(), self.weight, self.bias, stride=PATCH)
        return out.flatten(2).transpose(1, 2)


@torch.no_grad()
def randomise(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Move every weight off its initial value, so a file that loads as a fresh module is caught."""
    g = generator(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale)


def sample_section(index, task, history, seed) -> torch.Tensor:
    """A stand-in sampler: seeded noise plus the history's last frame, so a section depends on what came before."""
    frames = task.item.section.latent_frames
    out = torch.randn(1, CHANNELS, frames, 4, 4, generator=generator(seed % (1 << 63)))
    return out if history is None else out + history[:, :, -1:].mean()


def tensor_sha(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode() + t.numpy().tobytes()).hexdigest()


def checksums(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: tensor_sha(v) for k, v in sorted(tensors.items())}


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Interrupted(Exception):
    pass


def make(old: Path, out: Path) -> None:
    sys.path.insert(0, str(old))
    import histenc

    if Path(histenc.__file__).resolve().parent != (old / "histenc").resolve():
        raise SystemExit(f"histenc came from {histenc.__file__}, not from the old checkout {old}.")
    from safetensors.torch import save_file

    from histenc.autoregress import SectionLoop
    from histenc.context import SectionGrid
    from histenc.discrete import DiscreteHistory, HistoryCodebook
    from histenc.encoder import HistoryEncoder
    from histenc.encoder_io import save_encoder
    from histenc.extension import ExtensionProjection, save_extension
    from histenc.lora import LoRA
    from histenc.packing import FramePackContext
    from histenc.storyboard import Storyboard, schedule_sections
    from histenc.train.toy_dit import WanModel

    out.mkdir(parents=True, exist_ok=True)
    data = inputs()
    history, dit, grid = data["input.history"], Patchifier(), SectionGrid(*GRID)
    expected, sums = dict(data), {}

    torch.manual_seed(0)
    encoder = HistoryEncoder.from_dit(dit, **ENCODER)
    randomise(encoder, 2)
    save_encoder(out / "history_encoder.safetensors", encoder, family=FAMILY)
    with torch.no_grad():
        expected["encoder.tokens"] = encoder(history)
    sums["history_encoder.safetensors"] = checksums(encoder.state_dict())

    pack = FramePackContext.from_dit(dit, SCHEDULE)
    randomise(pack, 3)
    pack.save(out / "framepack_projections.safetensors")
    sums["framepack_projections.safetensors"] = checksums(pack.state_dict())
    book = HistoryCodebook.fit(history, k=8, seed=0)
    book.save(out / "history_codebook.safetensors")
    sums["history_codebook.safetensors"] = checksums({"entries": book.entries})
    with torch.no_grad():
        for name, source in (("framepack", pack), ("discrete", DiscreteHistory(pack, book))):
            ctx = source.context(history, grid, dit)
            expected[f"{name}.tokens"], expected[f"{name}.positions"] = ctx.tokens, ctx.positions
            expected[f"{name}.extent"] = ctx.extent_or_ones()
        expected["codebook.indices"] = book.quantize(history)

    torch.manual_seed(0)
    toy = WanModel(**TOY_DIT)
    lora = LoRA(toy, **LORA)
    randomise(lora, 4)
    lora.save(out / "lora.safetensors", training={"steps": 3, "lr": 1e-4})
    sums["lora.safetensors"] = checksums(lora.comfy_state_dict())
    for name, layer in zip(lora.names, lora.layers):
        expected[f"lora.delta.{name}"] = layer.delta_weight().detach()

    projection = ExtensionProjection(CHANNELS, WIDTH, PATCH)
    randomise(projection, 5)
    save_extension(out / "video_extension.safetensors", projection, FAMILY, training={"steps": 2})
    sums["video_extension.safetensors"] = checksums(projection.state_dict())
    with torch.no_grad():
        expected["extension.out"] = projection(data["input.condition"], data["input.mask"])

    sections = Storyboard.parse(JOB_STORYBOARD).assign(schedule_sections(JOB_SECONDS, JOB_FPS, JOB_SECTION_FRAMES))
    whole = SectionLoop(sections, sample_section, seed=JOB_SEED, settings=JOB_SETTINGS).run()
    expected["job.video"] = whole.latents

    def interrupted(index, task, history, seed):
        if index == JOB_DONE:
            raise Interrupted()
        return sample_section(index, task, history, seed)

    job = out / "job"
    shutil.rmtree(job, ignore_errors=True)
    try:
        SectionLoop(sections, interrupted, seed=JOB_SEED, settings=JOB_SETTINGS, folder=job).run()
        raise SystemExit("the job was meant to stop at section 2.")
    except Interrupted:
        pass
    for i in range(JOB_DONE):
        expected[f"job.section.{i}"] = whole.latents[
            :, :, sections[i].section.latent_start : sections[i].section.latent_end
        ]

    save_file({k: v.detach().contiguous() for k, v in expected.items()}, str(out / "expected.safetensors"))
    files = sorted(
        p
        for p in out.rglob("*")
        if p.is_file() and p.suffix in (".safetensors", ".json") and p.name != "checksums.json"
    )
    record = {
        "made_by": "make.py at 6539dcb (before the sub-package move)",
        "torch": torch.__version__,
        "tensors": sums,
        "files": {str(p.relative_to(out)): file_sha(p) for p in files},
    }
    (out / "checksums.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: make.py <old checkout> <output folder>")
    make(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
