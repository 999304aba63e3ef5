"""Extension-model training: the multi-task stage, the causal KV stage (same as full causal attention), files."""

import pytest
import torch

import histenc.train.toy_dit as toy_dit
from histenc.extension import ExtensionProjection, ExtensionTask, load_extension, save_extension
from histenc.kvcache import AttentionView
from histenc.lora import LoRA
from histenc.train import procedural
from histenc.train.extension import (
    ExtensionSettings,
    ExtensionTrainer,
    _noised,
    causal_batch,
    extension_batch,
    finetune_extension,
    patched,
)
from histenc.train.frame_query import Clip
from histenc.train.loop import TrainSettings
from histenc.train.toy_dit import PixelLatents, WanModel


STEPS = 40


def tiny_dit(seed=0):
    torch.manual_seed(seed)
    return WanModel(dim=32, ffn_dim=64, num_heads=2, num_layers=4, text_dim=8).requires_grad_(False)


def clips(count=2, frames=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        Clip(
            torch.randn(1, 16, frames, size, size, generator=g),
            [(0.0, torch.randn(1, 3, 8, generator=g)), (frames / 2, torch.randn(1, 3, 8, generator=g))],
        )
        for _ in range(count)
    ]


def block_causal(monkeypatch, total: int, clip_tokens: int):
    """The toy DiT's self-attention over ``total`` tokens made block-causal in clips of ``clip_tokens``."""
    stock = toy_dit.attention
    clip_of = torch.arange(total) // clip_tokens
    allowed = clip_of[:, None] >= clip_of[None, :]

    def attention(q, k, v, heads):
        if q.shape[1] != total or k.shape[1] != total:
            return stock(q, k, v, heads)
        b, n, d = q.shape
        split = lambda z: z.view(b, n, heads, d // heads).transpose(1, 2)  # noqa: E731
        out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=allowed)
        return out.transpose(1, 2).reshape(b, n, d)

    monkeypatch.setattr(toy_dit, "attention", attention)


def test_causal_stage_pass_equals_block_causal_attention_over_the_sections(monkeypatch):
    dit = tiny_dit()
    f, sections = 2, 3
    g = torch.Generator().manual_seed(1)
    video = torch.randn(1, 16, f * sections, 4, 4, generator=g)
    text = torch.randn(1, 3, 8, generator=g)
    s = ExtensionSettings(
        stage="causal", section_frames=f, given_frames=0, max_clips=sections, blocks="all", tolerance=0.0
    )
    trainer = ExtensionTrainer(dit, None, None, s)
    x_t = video[:, :, -f:]
    batch = {
        "x_t": x_t,
        "timestep": torch.tensor([500.0]),
        "text": text,
        "condition": None,
        "mask": None,
        "past": [(i * f, video[:, :, i * f : (i + 1) * f], text) for i in range(sections - 1)],
        "section_start": (sections - 1) * f,
        "time_start": (sections - 1) * f,
    }
    with torch.no_grad():
        view = trainer.past_view(batch)
        assert len(view.past) == sections - 1
        cached = trainer.velocity(batch, view)
        t = torch.tensor([[0.0] * f * (sections - 1) + [500.0] * f])
        full = dit(video, t, text)
        block_causal(monkeypatch, 4 * f * sections, 4 * f)
        reference = dit(video, t, text)
    err = (cached - reference[:, :, -f:]).abs().max().item()
    assert err <= 1e-5 * reference.abs().max().item()
    assert (full - reference)[:, :, -f:].abs().max().item() > 100 * err  # the test can tell causal from full


def test_patches_are_removed_after_the_pass():
    dit = tiny_dit()
    embed, attn = dit.patch_embedding, dit.blocks[3].self_attn
    view = AttentionView([2, 3], [], 0, record_tokens=4)
    proj = ExtensionProjection(16, 32)
    with patched(dit, proj, torch.zeros(1, 16, 2, 4, 4), torch.zeros(1, 1, 2, 4, 4), view):
        assert dit.patch_embedding is not embed and "forward" in attn.__dict__
    assert dit.patch_embedding is embed and "forward" not in attn.__dict__


def test_loss_reaches_the_kv_lora_through_the_past_clips(monkeypatch):
    dit = tiny_dit()
    s = ExtensionSettings(stage="causal", section_frames=2, given_frames=1, max_clips=5)
    lora = LoRA(dit, 4, 4, "self_attn.k,self_attn.v", "latter_half", seed=0)
    with torch.no_grad():
        for layer in lora.layers:
            layer.up.normal_(0, 0.1)
    lora.attach()
    trainer = ExtensionTrainer(dit, ExtensionProjection(16, 32), lora, s, train_projection=False)
    assert [n for n, _ in trainer.named_parameters()] == [f"lora.{n}" for n, _ in lora.named_parameters()]
    batch = causal_batch(clips(1, frames=8), s, torch.Generator().manual_seed(4), "cpu")
    assert batch["past"] and batch["time_start"] == batch["section_start"] - 1

    def grads():
        trainer.zero_grad()
        trainer(batch).backward()
        return torch.cat([p.grad.flatten() for p in lora.parameters()])

    through = grads()
    record = AttentionView.record
    monkeypatch.setattr(AttentionView, "record", lambda self, b, k, v: record(self, b, k.detach(), v.detach()))
    detached = grads()
    assert (through - detached).abs().max() > 1e-6 * through.abs().max()
    lora.detach()


def test_extension_batches_score_only_frames_to_generate():
    s = ExtensionSettings(clip_frames=6, max_given=2, p_drop=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b = extension_batch(clips(2, frames=10), s, g, "cpu")
        given = b["mask"][0, 0, :, 0, 0]
        assert torch.equal(b["weight"][0, 0, :, 0, 0], 1 - given)
        assert 1 <= given.sum() <= 4 and torch.equal(b["condition"] * (1 - b["mask"]), torch.zeros_like(b["condition"]))


def test_extension_stage_trains_the_projection_and_lora_through_the_shared_loop(tmp_path):
    """Procedural clips: the projection leaves zero, the loss falls, the trained model reads the given frames."""
    torch.manual_seed(0)
    latent_map = PixelLatents(16, seed=0)
    videos = procedural.generate_set(4, seed=7, frames=28, size=16, objects=2, visit=(3, 5), gap=(0, 2))
    data = [Clip(latent_map.encode(v.frames), [(0.0, torch.zeros(1, 1, 8))]) for v in videos]
    dit = tiny_dit()
    proj = ExtensionProjection(16, 32)
    lora = LoRA(dit, 4, 4, "all", "all", seed=0)
    s = ExtensionSettings(clip_frames=4, max_given=1, p_drop=0.1)
    settings = TrainSettings(steps=STEPS, lr=3e-3, checkpoint_every=STEPS)
    result = finetune_extension(dit, proj, data, settings, tmp_path, s, lora=lora)
    assert result.step == STEPS and (tmp_path / "checkpoint.safetensors").is_file()
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    assert proj.proj.weight.abs().max() > 0.01 and all(layer.up.abs().max() > 0 for layer in lora.layers)
    trainer = ExtensionTrainer(dit, proj, lora, s)
    x0 = data[0].latents[:, :, :4]
    with torch.no_grad():
        batch = {
            **_noised(x0, ExtensionTask("first", 1), 3.0, torch.Generator().manual_seed(1), "cpu"),
            "text": data[0].prompt_at(0),
        }
        other = {**batch, "condition": batch["condition"].flip(-1)}  # another given frame, same noisy input
        assert (trainer.velocity(batch) - trainer.velocity(other)).abs().max() > 1e-3
    lora.detach()


def test_extension_file_round_trip_and_refusals(tmp_path):
    proj = ExtensionProjection(16, 32)
    with torch.no_grad():
        proj.proj.weight.normal_()
    path = save_extension(tmp_path / "ext.safetensors", proj, "wan", {"steps": 3})
    back = load_extension(path, 32, 16, (1, 2, 2), "wan")
    assert torch.equal(back.proj.weight, proj.proj.weight)
    with pytest.raises(ValueError, match="width 32 but this needs width 64"):
        load_extension(path, 64, 16, (1, 2, 2))


def test_bad_settings_and_data_name_the_input(tmp_path):
    with pytest.raises(ValueError, match="stage 'both'"):
        ExtensionSettings(stage="both")
    with pytest.raises(ValueError, match="max_given is 4 with clip_frames 8"):
        ExtensionSettings(max_given=4, clip_frames=8)
    with pytest.raises(ValueError, match="p_drop is 1.5"):
        ExtensionSettings(p_drop=1.5)
    with pytest.raises(ValueError, match="blocks 'top'"):
        ExtensionSettings(blocks="top")
    dit = tiny_dit()
    settings = TrainSettings(steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="longest has 3 latent frames"):
        finetune_extension(dit, ExtensionProjection(16, 32), clips(1, frames=3), settings, tmp_path)
    with pytest.raises(ValueError, match="give a LoRA rank"):
        finetune_extension(dit, None, clips(1), settings, tmp_path, ExtensionSettings(stage="causal"))
    with pytest.raises(ValueError, match="DiT uses 16 channels at width 32"):
        finetune_extension(dit, ExtensionProjection(16, 64), clips(1), settings, tmp_path)
    with pytest.raises(ValueError, match="empty"):
        finetune_extension(dit, ExtensionProjection(16, 32), [], settings, tmp_path)
