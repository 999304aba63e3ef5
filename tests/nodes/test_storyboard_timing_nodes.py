"""The storyboard timing rule through the nodes in-process: Storyboard -> Long Video Sampler on the tiny Wan model."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import torch

from histenc.longvideo.storyboard import MAX_STORYBOARD_CHARS, MIDDLE, NEAREST, TIMINGS, schedule_sections
from histenc.longvideo.storyboard_read import STEP_LINES

T2V = "histenc_tiny_wan21_t2v.safetensors"
SEED = 5


def sampled_prompts(monkeypatch, test_nodes) -> dict[int, str]:
    """Which prompt every section is sampled with: section index (from its seed) -> prompt, from comfy.sample calls."""
    import comfy.sample

    from histenc.longvideo.loop import section_seed

    real, seen = comfy.sample.sample, {}
    index = {section_seed(SEED, i): i for i in range(64)}
    prompts = ["a harbour", "a storm"]
    by_cond = [test_nodes.embed_text(p) for p in prompts]

    def spy(*args, **kwargs):
        cond = args[6][0][0]
        seen[index[kwargs["seed"]]] = next(p for p, c in zip(prompts, by_cond) if torch.equal(cond, c))
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", spy)
    return seen


def run(load_wan, test_nodes, timing=None):
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler
    from comfyui_histenc.histenc_nodes.storyboard import StoryboardNode

    story = {} if timing is None else {"timing": timing}  # a saved workflow without the input: the default
    board = StoryboardNode.execute(test_nodes.FakeClip(), "0:00 a harbour\n0:20 a storm", "", **story).args[0]
    LongVideoSampler.execute(
        model=load_wan(T2V),
        storyboard=board,
        negative=[[test_nodes.embed_text("low quality"), {}]],
        seconds=21.0,
        fps=16.0,
        section_frames=4,  # 16 frames: 1-second sections
        width=32,
        height=32,
        seed=SEED,
        steps=1,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        continuation_frames=1,
        job_name="",
    )
    return board


def test_probe_a_cue_at_20_s_is_first_sampled_in_the_section_that_starts_at_20_s(
    pack, load_wan, test_nodes, monkeypatch
):
    seen = sampled_prompts(monkeypatch, test_nodes)
    board = run(load_wan, test_nodes)
    assert board.board.timing == MIDDLE
    schedule = schedule_sections(21.0, 16.0, 4)
    first = min(i for i, p in seen.items() if p == "a storm")
    assert sorted(seen) == list(range(len(schedule.sections))) == list(range(22))
    # Wan's VAE starts 1-second sections 3 frames before each second: the one on the boundary nearest 0:20
    assert (first, schedule.sections[first].start_s, schedule.sections[first].end_s) == (20, 19.8125, 20.8125)
    assert all(seen[i] == "a harbour" for i in range(first)) and all(seen[i] == "a storm" for i in range(first, 22))


def test_the_nearest_timestamp_choice_reaches_the_sampler(pack, load_wan, test_nodes, monkeypatch):
    seen = sampled_prompts(monkeypatch, test_nodes)
    run(load_wan, test_nodes, NEAREST)
    first = min(i for i, p in seen.items() if p == "a storm")
    assert schedule_sections(21.0, 16.0, 4).sections[first].start_s == 9.8125  # middle 10.31 s is nearer 0:20


def test_the_node_offers_the_timing_and_reads_saved_workflows_without_it(pack):
    from comfyui_histenc.histenc_nodes.storyboard import StoryboardNode

    schema = StoryboardNode.define_schema()
    timing = next(i for i in schema.inputs if i.id == "timing")
    assert (timing.options, timing.default, timing.optional) == (list(TIMINGS), MIDDLE, True)
    assert "in force at its middle" in schema.description and "boundary nearest its time" in schema.description
    assert "until the next prompt" in next(i for i in schema.inputs if i.id == "storyboard").tooltip


def test_validate_inputs_names_only_the_storyboard_and_lets_the_event_loop_run_while_reading(pack):
    from comfyui_histenc.histenc_nodes.storyboard import StoryboardNode

    validate = StoryboardNode.validate_inputs
    # ComfyUI reports a failed check once per argument validate_inputs takes: one argument, one report
    assert inspect.getfullargspec(validate).args == ["cls", "storyboard"] and inspect.iscoroutinefunction(validate)
    assert asyncio.run(validate("0:00 a\n0:20 b")) is True
    assert asyncio.run(validate("0:00 a\n0:7 b")).startswith("storyboard line 2: time '0:7' has '7' after a colon")
    assert asyncio.run(validate(["3", 0])) is True  # linked: checked when it runs
    huge = "0:00 a\n" * (MAX_STORYBOARD_CHARS // 7 + 1)
    assert asyncio.run(validate(huge)).startswith(f"storyboard is {len(huge):,} characters, over the 100,000")

    async def validate_beside_a_ticker(text):
        """(validate's answer, how many times the loop ran the ticker meanwhile)."""
        ticks, task = [0], asyncio.ensure_future(validate(text))
        while not task.done():
            await asyncio.sleep(0)
            ticks.append(len(ticks))
        return task.result(), len(ticks)

    largest = ("0:00 x\n" * (MAX_STORYBOARD_CHARS // 7 + 1))[:MAX_STORYBOARD_CHARS]  # a problem on every line
    answer, ticks = asyncio.run(validate_beside_a_ticker(largest))
    assert answer.startswith("storyboard line 2 repeats the time 0:00 of line 1")
    assert ticks > largest.count("\n") // STEP_LINES  # the loop turned after every step of the reading
    # how long a step holds the loop is measured by bench/storyboard_latency_bench.py, not here


def test_execute_refuses_an_unknown_timing_with_one_sentence(pack, test_nodes):
    from comfyui_histenc.histenc_nodes.storyboard import StoryboardNode

    with pytest.raises(ValueError, match=r"storyboard timing 'latest' is not a rule the pack knows; choose one of"):
        StoryboardNode.execute(test_nodes.FakeClip(), "0:00 a", "", "latest")
    board = StoryboardNode.execute(test_nodes.FakeClip(), "0:00 a", "", NEAREST).args[0]
    assert (
        repr(board)
        == "EncodedStoryboard(Storyboard([Cue(t=0.0, prompt='a')], global_prompt='', timing='nearest timestamp'))"
    )
