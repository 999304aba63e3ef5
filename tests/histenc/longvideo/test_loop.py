"""The section loop: seeds, order, history, resume bit-identical, interruption, progress, memory."""

from __future__ import annotations

import json

import pytest
import torch

from histenc.longvideo.loop import (
    SectionLoop,
    check_order,
    continuation_frames,
    forward_order,
    next_frames,
    section_seed,
)
from histenc.longvideo import orders
from histenc.context import SectionGrid
from histenc.framepack.packing import FramePackContext
from histenc.longvideo.resume import MANIFEST
from histenc.longvideo.storyboard import Storyboard, schedule_sections
from histenc.window import SlidingWindow
from tests.helpers import ToyDiT

STEPS = 3


class Interrupted(Exception):
    """Stands in for ComfyUI's InterruptProcessingException."""


def plan(seconds=3.0, fps=8, section_frames=2):
    """3 s at 8 fps = 24 frames = 7 latent frames -> sections of 2, 2, 2, 1."""
    board = Storyboard.parse("0:00 a red fox\n0:01 the fox sleeps\n0:02 snow falls")
    return board.assign(schedule_sections(seconds, fps, section_frames))


class FakeSampler:
    """Deterministic stand-in for ComfyUI sampling: seeded noise that depends on history and context."""

    def __init__(self, fail_at=None):
        self.fail_at, self.calls, self.histories = fail_at, [], {}
        self.dit = ToyDiT(width=8, in_channels=4)

    def __call__(self, index, task, history, seed):
        self.calls.append(index)
        self.histories[index] = None if history is None else history.shape[2]
        frames = task.item.section.latent_frames
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 4, frames, 4, 4, generator=g, dtype=torch.float64)
        ctx = task.payload.resolve(self.dit, SectionGrid(frames, 4, 4))
        if ctx.count:
            x = x + ctx.tokens.double().mean()
        if history is not None:
            x = x + 0.5 * continuation_frames(history, 1)
        for step in range(1, STEPS + 1):
            if index == self.fail_at and step == 2:
                raise Interrupted("cancelled")
            task.report_step(step)
        return x


def loop(sampler, folder=None, **kw):
    kw.setdefault("seed", 1234)
    kw.setdefault("settings", {"cfg": 5.0, "model": "toy"})
    sections = kw.pop("sections", None) or plan()
    return SectionLoop(sections, sampler, [SlidingWindow(2)], steps=STEPS, folder=folder, **kw)


def test_section_seeds_are_deterministic_and_distinct():
    assert section_seed(1234, 0) == 1234
    assert section_seed(0, 1) == 0xE220A8397B1DCDAF  # splitmix64's first output from state 0
    seeds = [section_seed(7, k) for k in range(200)]
    assert seeds == [section_seed(7, k) for k in range(200)] and len(set(seeds)) == 200
    assert all(0 <= s < 2**64 for s in seeds)
    assert section_seed(7, 1) != section_seed(8, 0) and section_seed(7, 2) != section_seed(8, 1)


def test_forward_run_builds_the_whole_video_in_memory():
    sampler = FakeSampler()
    result = loop(sampler).run()
    assert result.latents.shape == (1, 4, 7, 4, 4) and result.latents.device.type == "cpu"
    assert sampler.calls == [0, 1, 2, 3]
    assert sampler.histories == {0: None, 1: 2, 2: 4, 3: 6}
    assert result.prompts == ["a red fox", "the fox sleeps", "snow falls", "snow falls"]
    assert result.seeds == [section_seed(1234, k) for k in range(4)]
    assert result.context_tokens == [0, 8, 8, 8]  # 2 window frames x 2 x 2 cells


def test_resume_after_interruption_is_bit_identical(tmp_path):
    reference = loop(FakeSampler(), tmp_path / "a").run().latents

    crashed = FakeSampler(fail_at=2)
    with pytest.raises(Interrupted):
        loop(crashed, tmp_path / "b").run()
    resumed_sampler = FakeSampler()
    result = loop(resumed_sampler, tmp_path / "b").run()
    assert resumed_sampler.calls == [2, 3]
    assert result.resumed_sections == 2 and "resumed 2" in result.summary
    assert torch.equal(result.latents, reference)
    assert torch.equal(loop(FakeSampler()).run().latents, reference)  # no folder: same video


def test_interruption_leaves_finished_sections_intact(tmp_path):
    with pytest.raises(Interrupted, match="cancelled"):
        loop(FakeSampler(fail_at=2), tmp_path).run()
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert [s["status"] for s in manifest["sections"]] == ["done", "done", "interrupted", "pending"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [MANIFEST, "section_0000.safetensors", "section_0001.safetensors"]
    reference = loop(FakeSampler()).run().latents
    state_loop = loop(FakeSampler(), tmp_path)
    assert torch.equal(state_loop.state.load(1), reference[:, :, 2:4])


def test_a_damaged_section_file_is_made_again_identically(tmp_path):
    reference = loop(FakeSampler(), tmp_path).run().latents
    (tmp_path / "section_0001.safetensors").write_bytes(b"garbage")
    sampler = FakeSampler()
    result = loop(sampler, tmp_path).run()
    assert sampler.calls == [1, 2, 3]  # everything after the damaged one in the order
    assert torch.equal(result.latents, reference)


def test_changed_setting_refuses_to_resume_naming_it(tmp_path):
    with pytest.raises(Interrupted):
        loop(FakeSampler(fail_at=1), tmp_path).run()
    with pytest.raises(ValueError, match="job '.*' was started with cfg = 5.0 but is queued with 6.0"):
        loop(FakeSampler(), tmp_path, settings={"cfg": 6.0, "model": "toy"})
    with pytest.raises(ValueError, match="started with seed = 1234 but is queued with 99"):
        loop(FakeSampler(), tmp_path, seed=99)
    with pytest.raises(ValueError, match=r"^job '.*' was started with.* order.* but is queued with"):
        loop(FakeSampler(), tmp_path, order=[[0, 3], [1, 2]])
    with pytest.raises(ValueError, match=r"started with sections\[0\]"):
        loop(FakeSampler(), tmp_path, sections=Storyboard.parse("0:00 a cat").assign(schedule_sections(3.0, 8, 2)))


def test_conflicting_seed_in_settings_is_refused(tmp_path):
    with pytest.raises(ValueError, match="setting 'seed' is 5 but the loop was given 1234"):
        loop(FakeSampler(), tmp_path, settings={"seed": 5})


def test_endpoints_first_order_and_its_resume(tmp_path):
    order = [[0, 3], [1, 2]]
    sampler = FakeSampler()
    reference = loop(sampler, tmp_path / "a", order=order).run().latents
    assert sampler.calls == [0, 3, 1, 2]
    assert sampler.histories == {0: None, 3: None, 1: 2, 2: 4}  # section 3 had no section 2 before it yet
    with pytest.raises(Interrupted):
        loop(FakeSampler(fail_at=1), tmp_path / "b", order=order).run()
    again = FakeSampler()
    result = loop(again, tmp_path / "b", order=order).run()
    assert again.calls == [1, 2] and torch.equal(result.latents, reference)


def test_a_framepack_context_sees_finished_sections_after_it_at_their_true_times():
    sampler = FakeSampler()
    pack = FramePackContext.from_dit(sampler.dit, "td_f4k1_g2")  # frames after: the before side mirrored
    seen = {}

    def sample(index, task, history, seed):
        frames = task.item.section.latent_frames
        ctx = task.payload.resolve(sampler.dit, SectionGrid(frames, 4, 4))
        times = ctx.positions[:, 0].unique().tolist()
        seen[index] = (
            [t for t in times if t < 0],
            [t for t in times if t >= frames],
            None if task.future is None else task.future.shape[2],
        )
        return sampler(index, task, history, seed)

    order = orders.endpoints(4, 2).section_order()  # sections of 2, 2, 2, 1 latent frames
    assert order == [[0], [3], [1], [2]]
    result = SectionLoop(plan(), sample, [pack], seed=1, steps=STEPS, order=order).run()
    # section 1 starts at 2: section 0 is before it, section 3 (from 6) 2 frames past its end, at t = 4
    assert seen[1] == ([-2.0, -1.0], [4.0], None)
    assert seen[2] == ([-4.0, -3.0, -2.0, -1.0], [2.0], 1)  # section 3 adjacent: also its native future
    # made right after section 0 and seeing it at its true time, 6 frames back, nothing in between
    assert seen[3] == ([-6.0, -5.0], [], None)
    assert result.context_tokens[1] == 3 * 4 and result.context_tokens[3] == 2 * 4


def test_inverted_order_with_a_history_limit_bounds_the_future_and_memory(tmp_path):
    sections = plan(seconds=6.0, fps=8, section_frames=2)  # 13 latent frames, 7 sections
    futures, sizes = {}, []
    sampler = FakeSampler()

    def sample(index, task, history, seed):
        sizes.append(len(job.cache))
        futures[index] = task.payload.future_offsets
        return sampler(index, task, history, seed)

    order = orders.inverted(7, 2).section_order()
    job = SectionLoop(
        sections, sample, [SlidingWindow(2)], seed=3, steps=STEPS, folder=tmp_path, history_limit=3, order=order
    )
    result = job.run()
    assert sampler.calls == [6, 5, 4, 3, 2, 1, 0] and set(sampler.histories.values()) == {None}
    assert futures[6] is None and futures[5] == [0] and futures[0] == [0, 1, 2]
    assert max(sizes) <= 2
    full = SectionLoop(
        sections, FakeSampler(), [SlidingWindow(2)], seed=3, steps=STEPS, history_limit=3, order=order
    ).run()
    assert torch.equal(result.latents, full.latents)


@pytest.mark.parametrize(
    "order, words",
    [
        ([[0, 1], [1, 2, 3]], "section 1 twice"),
        ([[0, 1, 2]], r"never makes section\(s\) \[3\]"),
        ([[0, 1, 2, 4]], "names section 4 but the video has sections 0..3"),
    ],
)
def test_bad_orders_are_named(order, words):
    with pytest.raises(ValueError, match=words):
        check_order(order, 4)
    assert check_order(forward_order(4), 4) == [[0], [1], [2], [3]]


def test_progress_counts_sections_times_steps_and_resumes_where_it_was(tmp_path):
    seen = []
    loop(FakeSampler(), progress=lambda v, t: seen.append((v, t))).run()
    assert all(t == 4 * STEPS for _, t in seen)
    values = [v for v, _ in seen]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 4 * STEPS
    assert set(range(4 * STEPS + 1)) <= set(values)

    with pytest.raises(Interrupted):
        loop(FakeSampler(fail_at=2), tmp_path).run()
    seen.clear()
    loop(FakeSampler(), tmp_path, progress=lambda v, t: seen.append(v)).run()
    assert seen[0] == 2 * STEPS and seen[-1] == 4 * STEPS


def test_history_limit_bounds_history_and_memory(tmp_path):
    sections = plan(seconds=6.0, fps=8, section_frames=2)  # 13 latent frames, 7 sections
    sampler = FakeSampler()
    sizes = []

    def sample(index, task, history, seed):
        sizes.append(len(job.cache))
        return sampler(index, task, history, seed)

    job = SectionLoop(sections, sample, [SlidingWindow(2)], seed=3, steps=STEPS, folder=tmp_path, history_limit=3)
    result = job.run()
    assert max(h for h in sampler.histories.values() if h is not None) == 3
    assert max(sizes) <= 2  # only the sections the next history can reach stay in memory
    full = SectionLoop(sections, FakeSampler(), [SlidingWindow(2)], seed=3, steps=STEPS, history_limit=3).run()
    assert result.latents.shape[2] == 13 and torch.equal(result.latents, full.latents)


def test_model_space_maps_only_what_the_dit_sees():
    seen = {}

    class Spy(FakeSampler):
        def __call__(self, index, task, history, seed):
            if history is not None:
                seen[index] = (task.payload.history.mean().item(), history.mean().item())
            return super().__call__(index, task, history, seed)

    loop(Spy(), model_space=lambda h: h * 2 + 1).run()
    for in_model, latent in seen.values():
        assert in_model == pytest.approx(latent * 2 + 1)


def test_sampler_returning_the_wrong_frames_is_named():
    def wrong(index, task, history, seed):
        return torch.zeros(1, 4, 5, 4, 4)

    with pytest.raises(
        ValueError, match=r"section 0 sampler returned \(1, 4, 5, 4, 4\) but must return .* 2 new latent frames"
    ):
        loop(wrong).run()

    def drifting(index, task, history, seed):
        return torch.zeros(1, 4, task.item.section.latent_frames, 4, 4 + index)

    with pytest.raises(ValueError, match="section 1 latents are"):
        loop(drifting).run()


def test_continuation_frames():
    history = torch.arange(2 * 5, dtype=torch.float32).reshape(1, 2, 5, 1, 1)
    assert torch.equal(continuation_frames(history, 2), history[:, :, 3:])
    assert continuation_frames(None, 2) is None
    assert continuation_frames(history[:, :, :0], 1) is None
    with pytest.raises(ValueError, match="continuation frames must be"):
        continuation_frames(history, 0)


def test_next_frames():
    future = torch.arange(2 * 5, dtype=torch.float32).reshape(1, 2, 5, 1, 1)
    assert torch.equal(next_frames(future, 2), future[:, :, :2])
    assert next_frames(None, 2) is None
    with pytest.raises(ValueError, match="continuation frames must be"):
        next_frames(future, 0)


def test_summary_reports_sections_video_time_and_context():
    text = loop(FakeSampler()).run().summary
    assert text.startswith("4 of 4 sections done (7 of 7 latent frames), 0:03 of 0:03 of video")
    assert "context up to 8 tokens per section" in text


def test_bad_loop_settings_are_named():
    with pytest.raises(ValueError, match="steps must be"):
        SectionLoop(plan(), FakeSampler(), seed=0, steps=0)
    with pytest.raises(ValueError, match="no sections"):
        SectionLoop([], FakeSampler(), seed=0)
    with pytest.raises(ValueError, match="history limit"):
        SectionLoop(plan(), FakeSampler(), seed=0, history_limit=0)


def test_a_finished_job_run_again_samples_nothing(tmp_path):
    reference = loop(FakeSampler(), tmp_path).run().latents
    sampler = FakeSampler()
    result = loop(sampler, tmp_path).run()
    assert sampler.calls == [] and result.resumed_sections == 4 and torch.equal(result.latents, reference)


def test_a_section_with_non_finite_values_stops_the_job_and_keeps_what_is_finished(tmp_path):
    class NaNAtTwo(FakeSampler):
        def __call__(self, index, task, history, seed):
            x = super().__call__(index, task, history, seed)
            return x * float("nan") if index == 2 else x

    with pytest.raises(ValueError, match=r"^section 2 came out with non-finite values .* the 2 finished section"):
        loop(NaNAtTwo(), tmp_path).run()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [MANIFEST, "section_0000.safetensors", "section_0001.safetensors"]
    resumed = loop(FakeSampler(), tmp_path).run()  # the finished sections are reused, the rest is made
    assert resumed.resumed_sections == 2 and torch.isfinite(resumed.latents).all()


@pytest.mark.parametrize("order", orders.ORDERS)
@pytest.mark.parametrize("image", [False, True])
def test_every_section_receives_the_context_its_plan_gives_it(order, image):
    """What each section's payload was given (frame times on both sides) is exactly the plan's context for the
    step that makes it: anchors see earlier anchors, the end section sees section 0, and the start image is the
    anchor of every section made before section 0."""
    sections = plan(seconds=5.5, fps=8, section_frames=2)  # 12 latent frames: 6 sections of 2
    assert {p.section.latent_frames for p in sections} == {2} and len(sections) == 6
    the_plan = orders.plan(order, 6, 2, image=image, anchors=[0, 3, 5])
    start = torch.full((1, 4, 1, 4, 4), 7.0)  # the start image's latent: section 0's first frame
    sampler = FakeSampler()
    job = SectionLoop(
        sections,
        sampler,
        [SlidingWindow(3)],
        seed=2,
        steps=STEPS,
        order=the_plan.section_order(),
        anchor=start if image else None,
    )
    job.run()
    for step in the_plan.steps:
        for section in step.generate:
            assert job.received[section] == the_plan.context_times(step, section), (order, section)
    if order in ("endpoints", "anchors"):
        assert job.received[5]["before"][:2] == [-10, -9]  # section 0, ten frames back
    if image and order == "inverted":
        assert all(job.received[i]["before"][0] == -2 * i for i in range(1, 6))  # the image at video frame 0


def test_the_start_image_reaches_the_context_at_its_time():
    sections = plan(seconds=5.5, fps=8, section_frames=2)
    start = torch.full((1, 4, 1, 4, 4), 7.0)
    seen = {}
    dit = ToyDiT(width=8, in_channels=4)

    def sample(index, task, history, seed):
        ctx = task.payload.resolve(dit, SectionGrid(2, 4, 4))
        seen[index] = ctx.positions[:, 0].unique().tolist()
        if index == 4:  # made second: section 5 is after it, the image 8 frames back; a window of 1 shows the image
            assert torch.equal(ctx.tokens, SlidingWindow(1).context(start, SectionGrid(2, 4, 4), dit).tokens)
        return torch.zeros(1, 4, 2, 4, 4)

    order = orders.inverted(6, 2).section_order()
    SectionLoop(sections, sample, [SlidingWindow(1)], seed=0, order=order, anchor=start).run()
    # the window looks back only: the image alone, at video frame 0, until section 0 (made last) holds it
    assert seen[5] == [-10.0] and seen[4] == [-8.0] and seen[1] == [-2.0] and seen[0] == []
