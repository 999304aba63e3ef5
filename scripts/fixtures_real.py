"""Fixtures at the real widths of the checkpoints users load, in those files' keys, dtypes and quantisation.

The toy fixtures (scripts/fixtures.py) are 128 wide and fp32; users load Wan 2.1 1.3B in bf16, Wan 14B as
fp8_e4m3fn and "fp8 scaled", Wan 2.2 5B, HunyuanVideo 13B and GGUF quantisations. These files have the real
width, heads and channels with random seeded weights, cut to two blocks (HunyuanVideo: one double and one
single block): the stock detector reads depth from the keys, so nothing else changes.

- ``*_bf16``: every tensor bfloat16, as the repackaged bf16 files. HunyuanVideo's keys are the released
  checkpoint's (Tencent's names: ``img_attn_qkv``, ``img_mod.linear``, ``mlp.fc1``...), which ComfyUI renames to
  its module's on load; Wan's released names are ComfyUI's own.
- ``wan21_t2v_14b_fp8_e4m3fn``: every tensor of rank >= 2 in float8_e4m3fn (patch embedding included), biases
  and norm scales bfloat16; no scales: loaders upcast the fp8 values as they are.
- ``wan21_t2v_14b_fp8_scaled``: the weight of every Linear layer in float8_e4m3fn with a per-tensor float32
  scalar ``<layer>.scale_weight`` (weight = fp8 * scale) and the marker tensor ``scaled_fp8`` (two
  float8_e4m3fn zeros: fp8 storage, full-precision matmul); the rest bfloat16, the Conv3d patch embedding
  included. ComfyUI 0.3.75 reads this layout with its scaled-fp8 ops; 0.33 converts it on load
  (comfy.utils.convert_old_quants: ``scale_weight`` -> ``weight_scale`` plus a ``comfy_quant`` entry per layer)
  into its quantized tensors, so one file serves both hosts. Only Linear layers can carry a scale on either host.
- ``*.gguf``: the 1.3B bf16 file through ComfyUI-GGUF's tools/convert.py (BF16 GGUF, the 5-D patch embedding
  set aside), quantised the way its llama.cpp patch does for Wan (only the 2-D weights inside the blocks;
  Q5_0 files keep ffn.2 in Q5_1), the patch embedding put back as F32 (what its tools/fix_5d_tensors.py does).
  The gguf package quantises Q8_0 and Q5_0 / Q5_1 itself but has no K-quant encoder (its quantize raises
  NotImplementedError for Q4_K), so the Q4_K file is packed here (``q4_k_blocks``) and checked against the
  gguf package's own Q4_K decoder; every quantised tensor of that file is Q4_K.

Files go to ``.cache/fixtures_real/`` (git-ignored) and are reused while their stamp names this generator's
VERSION. Tensors are generated and written one at a time, so generation holds at most one tensor in memory.

    python3 scripts/fixtures_real.py [NAME ...]   # generate (or reuse) them; prints path, size and seconds
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import gguf_node  # noqa: E402
from scripts.host import CACHE, import_comfy  # noqa: E402

VERSION = 3  # bump whenever any file's content would change; stale files are regenerated
FOLDER = CACHE / "fixtures_real"
BLOCKS = 2


@dataclass(frozen=True)
class Fixture:
    """One file: the model it stands for and how its tensors are stored."""

    family: str  # "wan" or "hunyuan_video"
    storage: str  # "bf16", "fp8_e4m3fn", "fp8_scaled", or a GGUF type ("Q8_0", "Q5_0", "Q4_K")
    model_class: str  # ComfyUI's model class it must load as
    width: int
    heads: int
    blocks: int
    latent_channels: int
    ffn: int = 0  # Wan only
    seed: int = 0
    source: str | None = None  # GGUF: the safetensors file it is converted from


WAN13 = "wan21_t2v_1.3b_bf16.safetensors"
FIXTURES = {
    WAN13: Fixture("wan", "bf16", "WAN21", 1536, 12, BLOCKS, 16, ffn=8960, seed=1),
    "wan21_t2v_14b_fp8_e4m3fn.safetensors": Fixture("wan", "fp8_e4m3fn", "WAN21", 5120, 40, BLOCKS, 16, 13824, 2),
    "wan21_t2v_14b_fp8_scaled.safetensors": Fixture("wan", "fp8_scaled", "WAN21", 5120, 40, BLOCKS, 16, 13824, 3),
    "wan22_ti2v_5b_bf16.safetensors": Fixture("wan", "bf16", "WAN22", 3072, 24, BLOCKS, 48, ffn=14336, seed=4),
    "hunyuan_video_t2v_13b_bf16.safetensors": Fixture("hunyuan_video", "bf16", "HunyuanVideo", 3072, 24, 2, 16, seed=5),
    "wan21_t2v_1.3b_Q8_0.gguf": Fixture("wan", "Q8_0", "WAN21", 1536, 12, BLOCKS, 16, 8960, source=WAN13),
    "wan21_t2v_1.3b_Q5_0.gguf": Fixture("wan", "Q5_0", "WAN21", 1536, 12, BLOCKS, 16, 8960, source=WAN13),
    "wan21_t2v_1.3b_Q4_K.gguf": Fixture("wan", "Q4_K", "WAN21", 1536, 12, BLOCKS, 16, 8960, source=WAN13),
}


# ------------------------------------------------------------------------------------------ key layouts
def wan_layout(fx: Fixture) -> dict:
    """{key: shape} of ComfyUI's own WanModel at this size (built on the meta device: no memory)."""
    import torch
    from comfy.ldm.wan.model import WanModel

    with torch.device("meta"):
        model = WanModel(
            model_type="t2v",
            patch_size=(1, 2, 2),
            in_dim=fx.latent_channels,
            dim=fx.width,
            ffn_dim=fx.ffn,
            freq_dim=256,
            text_dim=4096,
            out_dim=fx.latent_channels,
            num_heads=fx.heads,
            num_layers=fx.blocks,
            qk_norm=True,
            cross_attn_norm=True,
            eps=1e-6,
            operations=torch.nn,
        )
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def hunyuan_module_layout(fx: Fixture) -> dict:
    """{key: shape} of this host's HunyuanVideo T2V module (CLIP-L pooled vector, guidance embedding), one block of
    each kind. Its names are the host's own: 0.33 renamed the QK norms' ``scale`` to ``weight``."""
    import dataclasses

    import torch
    from comfy.ldm.hunyuan_video.model import HunyuanVideo, HunyuanVideoParams

    params = dict(
        in_channels=fx.latent_channels,
        out_channels=fx.latent_channels,
        vec_in_dim=768,
        context_in_dim=4096,
        hidden_size=fx.width,
        mlp_ratio=4.0,
        num_heads=fx.heads,
        depth=1,
        depth_single_blocks=1,
        axes_dim=[16, 56, 56],
        theta=256,
        patch_size=[1, 2, 2],
        qkv_bias=True,
        guidance_embed=True,
        byt5=False,
        meanflow=False,
        use_cond_type_embedding=False,
        vision_in_dim=None,
    )
    params.update({f.name: False for f in dataclasses.fields(HunyuanVideoParams) if f.name not in params})
    with torch.device("meta"):
        model = HunyuanVideo(**params, operations=torch.nn, dtype=torch.float32)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ComfyUI's module names -> the released checkpoint's (Tencent's names, which the repackaged bf16 / fp8 files and
# ComfyUI-GGUF's converter use); applied in order. ComfyUI maps them back on load (process_unet_state_dict).
HUNYUAN_FILE_NAMES = (
    ("mlp.0.", "mlp.fc1."),
    ("mlp.2.", "mlp.fc2."),
    ("txt_in.t_embedder.in_layer.", "txt_in.t_embedder.mlp.0."),
    ("txt_in.t_embedder.out_layer.", "txt_in.t_embedder.mlp.2."),
    ("txt_in.c_embedder.in_layer.", "txt_in.c_embedder.linear_1."),
    ("txt_in.c_embedder.out_layer.", "txt_in.c_embedder.linear_2."),
    ("_in.in_layer.", "_in.mlp.0."),
    ("_in.out_layer.", "_in.mlp.2."),
    ("_mod.lin.", "_mod.linear."),
    ("_attn.qkv.", "_attn_qkv."),
    ("_attn.proj.", "_attn_proj."),
    ("_attn.norm.query_norm.", "_attn_q_norm."),
    ("_attn.norm.key_norm.", "_attn_k_norm."),
    (".norm.query_norm.", ".q_norm."),
    (".norm.key_norm.", ".k_norm."),
    (".modulation.lin.", ".modulation.linear."),
    ("_norm.scale", "_norm.weight"),
)


def hunyuan_file_key(key: str) -> str:
    for internal, released in HUNYUAN_FILE_NAMES:
        key = key.replace(internal, released)
    return key


def hunyuan_layout(fx: Fixture) -> dict:
    """{key: shape} of a released HunyuanVideo file at this size; checked against this host's own key conversion,
    which must map every name back to its module's (so either host makes the same file)."""
    import comfy.supported_models

    module = hunyuan_module_layout(fx)
    layout = {hunyuan_file_key(k): shape for k, shape in module.items()}
    config = comfy.supported_models.HunyuanVideo({"image_model": "hunyuan_video"})
    back = config.process_unet_state_dict(dict(layout))
    if back != module:
        wrong = sorted(set(back) ^ set(module))[:4]
        raise RuntimeError(f"this host maps the released HunyuanVideo names to other keys than its module's: {wrong}.")
    return layout


# ------------------------------------------------------------------------------------------ values
def is_norm(key: str) -> bool:
    parts = key.split(".")
    leaf = parts[-2] if len(parts) > 1 else ""
    return parts[-1] in ("weight", "scale") and (leaf.startswith("norm") or leaf.endswith("_norm"))


def tensor_value(key: str, shape: tuple, seed: int):
    """A key's float32 values, from a generator seeded by (seed, key): norms near one, the rest small and random."""
    import torch

    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    if is_norm(key):
        return 1.0 + 0.05 * torch.randn(shape, generator=g)
    if key.endswith("bias") or len(shape) == 1:
        return 0.02 * torch.randn(shape, generator=g)
    if "modulation" in key:
        return 0.1 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) / fan_in**0.5


def scaled_layer(key: str, shape: tuple) -> bool:
    """Whether the fp8-scaled file stores this tensor as fp8 with a scale: the weight of every Linear layer.

    ComfyUI 0.3.75 builds every Linear of a scaled file with a ``scale_weight`` and reports the ones a file lacks
    as missing, so the embeddings' Linear layers are scaled too; Wan's other weights are 1-D, 3-D or 5-D.
    """
    return key.endswith(".weight") and len(shape) == 2


@dataclass(frozen=True)
class Stored:
    """One tensor of a file: its key, shape and storage dtype, and how to make its data."""

    key: str
    shape: tuple
    dtype: object
    make: object  # () -> tensor of that shape and dtype


def stored_tensors(fx: Fixture, layout: dict) -> list[Stored]:
    """The tensors of the file in writing order (a scaled weight comes right before its scale, which it sets)."""
    import torch

    fp8 = torch.float8_e4m3fn
    out = []
    for key, shape in sorted(layout.items()):
        if fx.storage == "fp8_scaled" and scaled_layer(key, shape):
            scale = {}

            def weight(key=key, shape=shape, scale=scale):
                w = tensor_value(key, shape, fx.seed)
                scale["value"] = (w.abs().max() / torch.finfo(fp8).max).reshape(())
                return w.div_(scale["value"]).clamp_(torch.finfo(fp8).min, torch.finfo(fp8).max).to(fp8)

            out.append(Stored(key, shape, fp8, weight))
            out.append(Stored(key[: -len("weight")] + "scale_weight", (), torch.float32, lambda s=scale: s["value"]))
            continue
        dtype = fp8 if fx.storage == "fp8_e4m3fn" and len(shape) >= 2 else torch.bfloat16
        out.append(
            Stored(
                key, shape, dtype, lambda key=key, shape=shape, dtype=dtype: tensor_value(key, shape, fx.seed).to(dtype)
            )
        )
    if fx.storage == "fp8_scaled":
        out.append(Stored("scaled_fp8", (2,), fp8, lambda: torch.zeros(2, dtype=fp8)))
    return out


# ------------------------------------------------------------------------------------------ writing
SAFETENSORS_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float8_e4m3fn": "F8_E4M3"}


def write_safetensors(path: Path, tensors: list[Stored], metadata: dict) -> None:
    """A safetensors file written one tensor at a time (the format: 8-byte header length, JSON header, data).

    The header comes from the shapes and dtypes alone; each tensor is then made, written and dropped, so no
    two tensors are ever in memory together.
    """
    import torch

    header, offset = {}, 0
    for t in tensors:
        n = math.prod(t.shape) * t.dtype.itemsize
        header[t.key] = {"dtype": SAFETENSORS_DTYPES[str(t.dtype).split(".")[-1]], "shape": list(t.shape)}
        header[t.key]["data_offsets"] = [offset, offset + n]
        offset += n
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors:
            value = t.make().contiguous()
            if tuple(value.shape) != tuple(t.shape) or value.dtype != t.dtype:
                raise RuntimeError(
                    f"tensor {t.key} came out {value.dtype} {tuple(value.shape)}, not {t.dtype} {t.shape}."
                )
            f.write(memoryview(value.reshape(-1).view(torch.uint8).numpy()))
            del value
        f.flush()
        os.fsync(f.fileno())


def write_safetensors_fixture(fx: Fixture, path: Path) -> None:
    layout = wan_layout(fx) if fx.family == "wan" else hunyuan_layout(fx)
    meta = {"histenc_fixture_real": VERSION, "storage": fx.storage, "width": fx.width, "blocks": fx.blocks}
    write_safetensors(path, stored_tensors(fx, layout), meta)


# ------------------------------------------------------------------------------------------ GGUF
def q4_k_blocks(rows):
    """float32 rows [n, k] (k a multiple of 256) -> Q4_K blocks as uint8 [n, k / 256 * 144].

    The ggml layout: per 256 values, f16 d and dmin, 12 bytes of 6-bit sub-block scales and mins, 128 bytes of
    4-bit codes; value = d * scale_j * q - dmin * min_j for sub-block j of 32 values. Scales are plain min/max
    fits (no search), which is all a fixture needs: the tests decode with the gguf package, not with this.
    """
    import numpy as np

    n_rows, k = rows.shape
    x = rows.astype(np.float32).reshape(-1, 8, 32)
    lo, hi = np.minimum(x.min(axis=2), 0.0), np.maximum(x.max(axis=2), 0.0)
    step, mins = (hi - lo) / 15.0, -lo
    d = (step.max(axis=1) / 63.0).astype(np.float16)
    dmin = (mins.max(axis=1) / 63.0).astype(np.float16)
    df, mf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(np.divide(step, df, out=np.zeros_like(step), where=df > 0)), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(np.divide(mins, mf, out=np.zeros_like(mins), where=mf > 0)), 0, 63).astype(np.uint8)
    unit, off = (df * sc)[..., None], (mf * mn)[..., None]
    q = np.clip(np.rint(np.divide(x + off, unit, out=np.zeros_like(x), where=unit > 0)), 0, 15).astype(np.uint8)
    scales = np.empty((x.shape[0], 12), np.uint8)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4)
    q = q.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    halves = np.stack([d, dmin], axis=1).view(np.uint8).reshape(-1, 4)
    return np.concatenate([halves, scales, qs], axis=1).reshape(n_rows, k // 256 * 144)


def quantised_type(name: str, shape: tuple, target: str):
    """The GGUF type llama.cpp's patched quantize gives a Wan tensor (None: keep the converter's type)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if not (name.startswith("blocks.") and name.endswith(".weight") and len(shape) == 2 and "modulation" not in name):
        return None
    if name.endswith(".ffn.2.weight") and target in ("Q5_0", "Q4_0"):
        return Q.Q5_1 if target == "Q5_0" else Q.Q4_1  # its "rules for ffn": the down projection one step up
    return Q[target]


def requantise(src: Path, dst: Path, target: str, set_aside: Path) -> None:
    """Quantise the converter's BF16 GGUF the way llama.cpp's patched quantize does for Wan, and put the tensors the
    converter set aside (``set_aside``: the 5-D patch embedding) back as F32 right after their bias.

    The second half is what ComfyUI-GGUF's tools/fix_5d_tensors.py does; that tool itself stops with NumPy 2.4
    (``int()`` of a one-element array in its ``get_file_type``), so it is done here.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    Q = gguf.GGMLQuantizationType
    file_types = {"Q8_0": "MOSTLY_Q8_0", "Q5_0": "MOSTLY_Q5_0", "Q4_K": "MOSTLY_Q4_K_S"}
    reader = gguf.GGUFReader(str(src))
    arch = reader.get_field("general.architecture")
    writer = gguf.GGUFWriter(path=None, arch=str(arch.parts[arch.data[-1]], encoding="utf-8"))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType[file_types[target]])
    extra = {k: v.astype(np.float32) for k, v in load_file(str(set_aside)).items()}
    checked = False
    for tensor in reader.tensors:
        shape = tuple(int(v) for v in reversed(tensor.shape))
        qtype = quantised_type(tensor.name, shape, target)
        if qtype is None:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
            weight = tensor.name[: -len("bias")] + "weight" if tensor.name.endswith(".bias") else None
            if weight in extra:
                writer.add_tensor(weight, extra.pop(weight), raw_dtype=Q.F32)
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        if qtype == Q.Q4_K:
            data = q4_k_blocks(values)
            if not checked:  # the encoder against the gguf package's decoder, once per file
                back = gguf.quants.dequantize(data, Q.Q4_K)
                err = float(np.abs(back - values).max() / max(float(np.abs(values).max()), 1e-12))
                if err > 0.2:
                    raise RuntimeError(f"Q4_K packing of {tensor.name} decodes with relative error {err:.3f}.")
                checked = True
        else:
            data = gguf.quants.quantize(values, qtype)
        writer.add_tensor(tensor.name, data, raw_dtype=qtype)
    for name, value in extra.items():
        writer.add_tensor(name, value, raw_dtype=Q.F32)
    writer.write_header_to_file(path=str(dst))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf_fixture(fx: Fixture, path: Path) -> None:
    """safetensors -> ComfyUI-GGUF's tools/convert.py -> quantise, patch embedding back (see ``requantise``)."""
    src = FOLDER / fx.source  # made first by ``ensure``
    tools = gguf_node.unpack() / "tools"
    work = path.parent / f".work-{path.stem}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        raw, fix = work / "raw-BF16.gguf", work / "fix_5d_tensors_wan.safetensors"
        _tool(tools / "convert.py", ["--src", str(src), "--dst", str(raw)], work)
        if not fix.is_file():
            raise RuntimeError(f"ComfyUI-GGUF's convert.py set no 5-D tensor aside in {work}; its output changed.")
        requantise(raw, path, fx.storage, fix)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tool(script: Path, args: list[str], cwd: Path) -> None:
    proc = subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"{script.name} {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")


# ------------------------------------------------------------------------------------------ cache
def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".stamp")


def fresh(path: Path) -> bool:
    """The file exists, was made by this generator VERSION and has the size its stamp recorded."""
    stamp = stamp_path(path)
    if not (path.is_file() and stamp.is_file()):
        return False
    try:
        info = json.loads(stamp.read_text())
    except ValueError:
        return False
    return info.get("version") == VERSION and info.get("bytes") == path.stat().st_size


def ensure(name: str) -> Path:
    """The fixture's path, generated first unless a fresh copy is there (one generator at a time, across processes)."""
    if name not in FIXTURES:
        raise ValueError(f"fixture {name!r} is unknown; use one of {', '.join(FIXTURES)}.")
    path = FOLDER / name
    if fresh(path):
        return path
    fx = FIXTURES[name]
    if fx.source is not None:  # before taking the lock, which a second flock in this process would wait for
        ensure(fx.source)
    FOLDER.mkdir(parents=True, exist_ok=True)
    with open(FOLDER / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if fresh(path):  # another process made it while this one waited
            return path
        import_comfy()
        start = time.perf_counter()
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        if fx.storage.startswith("Q"):
            write_gguf_fixture(fx, partial)
        else:
            write_safetensors_fixture(fx, partial)
        partial.replace(path)
        seconds = time.perf_counter() - start
        stamp_path(path).write_text(json.dumps({"version": VERSION, "bytes": path.stat().st_size, "seconds": seconds}))
    return path


def generation_seconds(path: Path) -> float | None:
    try:
        return float(json.loads(stamp_path(path).read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return None


def main(names: list[str]) -> int:
    for name in names or list(FIXTURES):
        path = ensure(name)
        print(f"{path}  {path.stat().st_size / 2**20:9.1f} MiB  generated in {generation_seconds(path) or 0:6.1f} s")
    return 0


if __name__ == "__main__":
    from scripts.host import reexec_in_venv

    reexec_in_venv()
    try:
        sys.exit(main(sys.argv[1:]))
    except (ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
