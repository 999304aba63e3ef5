"""A tiny FramePack HunyuanVideo checkpoint made by FramePack's own model class, generated deterministically.

The model is FramePack's ``HunyuanVideoTransformer3DModelPacked`` (read from ../shared/refs/framepack, which
needs the registry packages ``diffusers`` and ``accelerate``) at toy size, with its history patch embedders
(``clean_x_embedder``) and its SigLIP image projection, so the keys, shapes and layout are exactly what
FramePack writes. Its weights are then set from a seed (weights ~ 1/sqrt(fan in), norms near one, modest
modulation) so outputs stay finite through sampling. ComfyUI's detector fixes heads = hidden // 128 and the
refiner depth at two, hence heads of 128. The shipped fixture is one file (hidden 128, one double and one
single block); ``write_shards`` saves a model the way FramePack publishes it (sharded, with its index).

    python scripts/fixture_framepack_hunyuan.py OUT_DIR   # writes OUT_DIR/diffusion_models/<NAME>
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

NAME = "histenc_tiny_framepack_hunyuan.safetensors"
REPO = Path(__file__).resolve().parent.parent
REFS = REPO.parent / "shared" / "refs" / "framepack"  # lllyasviel/FramePack, read-only (refs/README.md)
HEAD_DIM, SIGLIP = 128, 1152
MODULATION = (".norm1.linear.", ".norm1_context.linear.", ".norm.linear.", "norm_out.linear.")


def framepack_model_class():
    """FramePack's ``HunyuanVideoTransformer3DModelPacked``, imported from the reference checkout.

    Its helper module imports OpenCV for video writing, which the model never calls; where OpenCV is not
    installed, a stand-in module is registered for that one import and removed again.
    """
    if not (REFS / "diffusers_helper").is_dir():
        raise RuntimeError(
            f"FramePack's reference code is not at {REFS}; the FramePack fixture is made by its own model class, "
            "so put lllyasviel/FramePack there (see shared/refs/README.md)."
        )
    for package in ("diffusers", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise RuntimeError(
                f"FramePack's model needs the package {package!r}, which this environment lacks; "
                "run python3 scripts/host.py 0.3.75 (or 0.33.0) to install the test dependencies."
            )
    stand_in = "cv2" not in sys.modules and importlib.util.find_spec("cv2") is None
    if stand_in:
        sys.modules["cv2"] = types.ModuleType("cv2")
    if str(REFS) not in sys.path:
        sys.path.insert(0, str(REFS))
    try:
        module = importlib.import_module("diffusers_helper.models.hunyuan_video_packed")
    finally:
        if stand_in:  # nothing else in this process may take the stand-in for OpenCV
            del sys.modules["cv2"]
    return module.HunyuanVideoTransformer3DModelPacked


def _value(name: str, shape: torch.Size, g: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=g)
    if name.endswith(".bias"):
        return noise * 0.02
    if len(shape) == 1:  # LayerNorm / RMSNorm scales
        return 1.0 + noise * 0.05
    if any(m in name for m in MODULATION):  # AdaLayerNorm linears: shift / scale / gate of order one
        return noise * 0.1
    return noise * (shape[1:].numel() ** -0.5)


def framepack_model(
    seed: int = 11,
    heads: int = 1,
    double: int = 1,
    single: int = 1,
    image_projection: bool = True,
    clean_x_embedder: bool = True,
):
    """FramePack's model at toy size (hidden = 128 x heads) with seeded weights, in float32 and eval mode."""
    model = framepack_model_class()(
        num_attention_heads=heads,
        attention_head_dim=HEAD_DIM,
        num_layers=double,
        num_single_layers=single,
        has_image_proj=image_projection,
        image_proj_dim=SIGLIP,
        has_clean_x_embedder=clean_x_embedder,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            p.copy_(_value(name, p.shape, g))
    return model.float().eval()


def framepack_hunyuan_state_dict(seed: int = 11, **kwargs) -> dict[str, torch.Tensor]:
    """The state dict of ``framepack_model`` (same arguments): FramePack's own keys."""
    return {k: v.detach().contiguous() for k, v in framepack_model(seed, **kwargs).state_dict().items()}


def write_shards(model, folder: Path, shard_bytes: int = 4 << 20) -> Path:
    """The model saved as FramePack publishes it (diffusers shards, index and config); returns the first shard."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), max_shard_size=shard_bytes, safe_serialization=True)
    shards = sorted(folder.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    if not shards:
        raise RuntimeError(f"FramePack's save_pretrained wrote no shards into {folder}; make shard_bytes smaller.")
    return shards[0]


def write(models: Path, seed: int = 11, force: bool = False) -> Path:
    """Write the fixture into ``models/diffusion_models`` (ComfyUI's models folder layout)."""
    from safetensors.torch import save_file

    path = Path(models) / "diffusion_models" / NAME
    if force or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(framepack_hunyuan_state_dict(seed), str(path), metadata={"histenc_fixture": "2"})
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "models"), force=True))
