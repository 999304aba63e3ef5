"""VRAM planner arithmetic against cases computed by hand."""

import pytest

from histenc.longvideo.storyboard import schedule_sections
from histenc.memory.vram import GB, ModelSpec, choose, context_tokens, main, plan, preset
from histenc.units import latent_frames

TINY = ModelSpec("tiny", width=128, ffn=256, layers=2, heads=1, weight_bytes=4.0)


def test_tiny_wan_parameter_counts_by_hand():
    # self-attn 4 * (128*128 + 128) + 2*128 = 66304, cross-attn the same, norm3 256,
    # ffn 128*256 + 256 + 256*128 + 128 = 65920, modulation 6*128 = 768
    assert TINY.block_params() == 2 * 66304 + 256 + 65920 + 768 == 199552
    # patch 16*128*4 + 128, text 4096*128 + 128 + 128*128 + 128, time 256*128 + 128 + 128*128 + 128,
    # time projection 128*768 + 768, head 128*64 + 64 + 2*128
    assert TINY.other_params() == 8320 + 540928 + 49408 + 99072 + 8512 == 706240
    assert TINY.weights == 4 * (2 * 199552 + 706240)


def test_wan21_1_3b_plan_without_swap_by_hand():
    spec = preset("wan2.1-1.3b")
    p = plan(spec, 832, 480, section_frames=4, history_frames=0, context=0, blocks_to_swap=0, batch=1)
    assert p.section_tokens == 4 * 30 * 52 == 6240
    block = 2 * 9446400 + 3072 + 27535616 + 9216  # params: attentions, norm3, ffn, modulation
    assert p.block_bytes == 2 * block == 92_881_408
    other = 99840 + 8653824 + 2755584 + 14164992 + 101440
    assert p.weights_total == 2 * (30 * block + other) == 2_837_993_600
    unit = 1 * 6240 * 1536 * 2  # B x L x D activations in bf16
    assert p.block_peak == unit * 41 // 3  # FFN: 2 + 2 * 8960 / 1536 = 41 / 3 units, above attention's 8
    assert p.persistent == 6240 * 128 * 8 + 512 * (4096 + 1536) * 2  # RoPE table + text context
    assert p.attention_workspace == 12 * 6240 * 4
    assert p.peak == 2_837_993_600 + 261_980_160 + 12_156_928 + 299_520
    assert p.swap_slots == 0 and p.ram_pinned == 0


def test_swapping_moves_block_bytes_to_host_and_adds_two_slots_and_fp8_cast_workspace():
    spec = preset("wan2.1-14b-fp8")
    a = plan(spec, 832, 480, 4, 240, 12480, blocks_to_swap=0, batch=2)
    b = plan(spec, 832, 480, 4, 240, 12480, blocks_to_swap=10, batch=2)
    assert b.weights_resident == a.weights_resident - 10 * spec.block
    assert b.ram_pinned == 10 * spec.block
    assert b.swap_slots == 2 * spec.block and a.swap_slots == 0
    assert a.cast_workspace == b.cast_workspace == 5120 * 13824 * 2
    assert b.peak == a.peak - 8 * spec.block
    assert a.block_peak == 8 * 2 * 18720 * 5120 * 2  # 14B: attention (8 units) beats FFN (2 + 2 * 2.7)


def test_per_token_modulation_is_counted_only_for_per_frame_timesteps_with_context():
    spec = preset("wan2.2-5b")
    with_ctx = plan(spec, 832, 480, 6, 360, 100, batch=1)
    without = plan(spec, 832, 480, 6, 360, 0, batch=1)
    tokens = with_ctx.tokens
    unit = tokens * 3072 * 2
    rope_text = tokens * 128 * 8 + 512 * (4096 + 3072) * 2
    assert with_ctx.persistent == rope_text + 100 * 3072 * 2 + 12 * unit
    assert without.persistent == without.tokens * 128 * 8 + 512 * (4096 + 3072) * 2


def test_context_tokens_use_the_modes_own_formulas():
    spec = preset("wan2.1-1.3b")
    hist = latent_frames(60, 16)
    assert hist == 241 == schedule_sections(60, 16, 4).latent_frames  # the sampler's count, 1 + 959 // 4 + 1
    assert context_tokens("none", spec, 832, 480, 4, hist) == 0
    assert context_tokens("raw", spec, 832, 480, 4, hist) == 241 * 1560
    assert context_tokens("window:3", spec, 832, 480, 4, hist) == 3 * 1560
    assert context_tokens("window:3", spec, 832, 480, 4, 2) == 2 * 1560
    # encoder 4x4x2 with a 2x2 patch: one token per 2 latent frames (the odd last frame gets a provisional
    # one) x 8 x 8 latent pixels
    assert context_tokens("encoder:4x4x2", spec, 832, 480, 4, hist) == 121 * 8 * 13
    # the committed packing benchmark: td_f16k4f4k2f1k1_g9 holds 2756 tokens once full
    assert context_tokens("framepack:td_f16k4f4k2f1k1_g9", spec, 832, 480, 9, 360) == 2756
    assert context_tokens("tokens:5000", spec, 832, 480, 4, hist) == 5000
    with pytest.raises(ValueError, match="context mode 'kv:3' is unknown"):
        context_tokens("kv:3", spec, 832, 480, 4, hist)


def test_choose_picks_the_fewest_blocks_that_fit():
    spec = preset("wan2.1-14b-fp8")
    p = choose(spec, 12, 832, 480, 4, 240, 12480, batch=2, headroom_gb=0.5)
    limit = 11.5 * GB
    assert p.peak <= limit
    assert plan(spec, 832, 480, 4, 240, 12480, p.blocks_to_swap - 1, batch=2).peak > limit
    assert choose(spec, 40, 832, 480, 4, 240, 12480).blocks_to_swap == 0


def test_impossible_budget_names_the_smallest_budget_that_works():
    spec = preset("wan2.1-14b-fp8")
    args = (832, 480, 4, 240, 12480)
    with pytest.raises(ValueError) as err:
        choose(spec, 2, *args, batch=2)
    msg = str(err.value)
    assert msg.startswith("VRAM budget 2 GB is below what any swap setting reaches for Wan2.1-14B fp8")
    smallest = float(msg.split("smallest budget that works is ")[1].split(" GB")[0])
    assert choose(spec, smallest, *args, batch=2).blocks_to_swap == 40
    with pytest.raises(ValueError):
        choose(spec, smallest - 0.1, *args, batch=2)


def test_bad_inputs_are_one_sentence_each():
    spec = preset("wan2.1-1.3b")
    with pytest.raises(ValueError, match="blocks to swap is 31 but Wan2.1-1.3B bf16 has 30 blocks"):
        plan(spec, 832, 480, 4, 0, 0, blocks_to_swap=31)
    with pytest.raises(ValueError, match="width 830 is not a multiple of 16"):
        plan(spec, 830, 480, 4, 0, 0)
    with pytest.raises(ValueError, match="model 'sdxl' is not a planner preset"):
        preset("sdxl")
    with pytest.raises(ValueError, match="VRAM budget 0 GB must be positive"):
        choose(spec, 0, 832, 480, 4, 0, 0)


def test_cli_prints_a_plan_and_refuses_with_the_sentence(capsys):
    assert main(["--model", "wan2.1-1.3b", "--budget", "6", "--context", "window:3"]) == 0
    out = capsys.readouterr().out
    assert "predicted peak VRAM" in out and "4680 context" in out
    assert main(["--model", "wan2.1-14b-fp8", "--budget", "1"]) == 2
    assert "smallest budget that works" in capsys.readouterr().out


def test_hunyuan_13b_preset_has_the_real_parameter_count_and_plans_by_block_kind():
    from histenc.memory.vram import PRESETS, plan

    s = PRESETS["hunyuan-13b"]
    params = 20 * s.block_params() + 40 * s.single_block_params() + s.other_params()
    assert params == 12_821_012_544  # HunyuanVideo 13B: ~12.8B
    assert s.block_sizes()[:20] == [s.block] * 20 and s.block_sizes()[20:] == [s.single_block] * 40
    assert s.swap_bytes(21) == 20 * s.block + s.single_block
    fp8 = PRESETS["hunyuan-13b-fp8"]
    assert fp8.weights * 2 == s.weights
    a = plan(fp8, 640, 640, 9, 0, 0, 20)
    assert a.weights_resident == fp8.weights - 20 * fp8.block and a.swap_slots == 2 * fp8.block
    # joint attention: the 256 text tokens count in every block's activations
    d = 3072
    assert a.block_peak == int(14 * (a.section_tokens + 256) * d * 2)
