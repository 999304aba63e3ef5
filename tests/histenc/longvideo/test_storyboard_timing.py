"""One storyboard timing rule for generation and training: a cue holds until the next, a section takes the cue
in force at its middle, so every switch lands on the section boundary nearest the written time."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from histenc.longvideo.storyboard import MIDDLE, NEAREST, Cue, Section, Storyboard, schedule_sections
from histenc.longvideo.timing import (
    check_timing,
    cue_latent_position,
    first_frame,
    latent_section_cue,
    latent_section_prompt,
    section_cue,
)

EXAMPLE = "0:00 a woman knits\n0:20 she looks up\n0:40 the rain begins"  # the Storyboard node's own example


def first_sampled(board: Storyboard, schedule) -> dict[int, Section]:
    """The first section each cue is sampled in."""
    out = {}
    for item in board.assign(schedule):
        out.setdefault(item.cue, item.section)
    return out


def test_the_default_is_the_rule_the_node_promises():
    assert Storyboard.parse(EXAMPLE).timing == MIDDLE == "in force at the section's middle"
    assert Storyboard.parse(EXAMPLE, timing=NEAREST).timing == "nearest timestamp"
    with pytest.raises(ValueError, match=r"storyboard timing 'latest' is not a rule the pack knows; choose one of"):
        Storyboard.parse(EXAMPLE, timing="latest")
    assert Storyboard.parse(EXAMPLE) != Storyboard.parse(EXAMPLE, timing=NEAREST)  # the choice travels with it
    assert "timing='nearest timestamp'" in repr(Storyboard.parse(EXAMPLE, timing=NEAREST))


def test_the_nodes_example_switches_where_it_is_written():
    """60 s at 16 fps in sections of 9 latent frames (2.25 s): measured 11.06 s and 29.06 s with the nearest rule."""
    schedule = schedule_sections(60, 16, 9)
    middle = first_sampled(Storyboard.parse(EXAMPLE), schedule)
    assert [middle[k].start_s for k in (1, 2)] == [20.0625, 40.3125]
    nearest = first_sampled(Storyboard.parse(EXAMPLE, timing=NEAREST), schedule)
    assert [nearest[k].start_s for k in (1, 2)] == [11.0625, 29.0625]


def test_probe_a_cue_at_20_s_is_first_sampled_in_the_section_starting_at_20_s():
    board = Storyboard.parse("0:00 a harbour\n0:20 a storm")
    # 1-second sections that start on whole seconds: a VAE without time compression, 16 frames per section
    exact = first_sampled(board, schedule_sections(30, 16, 16, time_stride=1))[1]
    assert (exact.start_s, exact.end_s) == (20.0, 21.0)
    # Wan's causal VAE (stride 4): 1-second sections start 3 frames before each second, the cue goes to the one
    # that starts on the boundary nearest 0:20 (0:19.8125) and shows 0:20
    wan = first_sampled(board, schedule_sections(30, 16, 4))[1]
    assert (wan.start_s, wan.end_s) == (19.8125, 20.8125)
    before = schedule_sections(30, 16, 4).sections[wan.index - 1]
    assert board.cue_for(before, 16) == 0


def test_a_cue_exactly_at_a_sections_middle_is_in_force_there():
    board = Storyboard([Cue(0, "a"), Cue(2, "b")])
    assert board.cue_for(Section(0, 0, 1, 24, 72, 24), 24) == 1  # middle exactly 2 s
    assert board.cue_for(Section(0, 0, 1, 23, 72, 24), 24) == 0  # middle 1.979 s: 'a' still shows
    assert Storyboard([Cue(0.1, "a"), Cue(0.2, "b")]).cue_for(Section(0, 0, 1, 1, 3, 10), 10) == 1  # exact 0.2


def test_sections_before_the_first_cue_take_it_and_close_cues_keep_the_later():
    board = Storyboard([Cue(3, "late start"), Cue(10, "b"), Cue(10.2, "c")])
    prompts = [p.cue for p in board.assign(schedule_sections(12, 8, 4))]
    assert prompts[0] == 0 and 1 not in prompts and prompts[-1] == 2  # 'b' and 'c' share a section: 'c' wins


@settings(max_examples=150, deadline=None)
@given(
    st.floats(1, 90),
    st.sampled_from([8, 12, 15, 16, 23.976, 24, 25, 30]),
    st.integers(1, 21),
    st.lists(st.integers(0, 9000), min_size=1, max_size=8, unique=True),
)
def test_every_switch_lands_on_the_section_boundary_nearest_the_written_time(seconds, fps, section_frames, hundredths):
    schedule = schedule_sections(seconds, fps, section_frames)
    times = sorted(t / 100 for t in hundredths if t / 100 <= seconds)
    if not times:
        return
    board = Storyboard([Cue(t, f"p{i}") for i, t in enumerate(times)])
    chosen = [p.cue for p in board.assign(schedule)]
    starts = [s.start_s for s in schedule.sections]
    for i, (section, cue) in enumerate(zip(schedule.sections, chosen)):
        assert times[cue] <= section.mid_s + 1e-9 or cue == 0  # the cue is in force at the middle
        assert cue == len(times) - 1 or times[cue + 1] > section.mid_s - 1e-9  # and the latest one in force
        if i and cue != chosen[i - 1]:  # a switch: on the boundary nearest the written time
            gap = abs(times[cue] - section.start_s)
            assert all(gap <= abs(times[cue] - b) + 1e-9 for b in starts)


def test_section_cue_is_exact_and_unit_free():
    assert section_cue([0, 0.3], 0.2, 0.4) == 1  # middle 0.3: in force (floats would say 0.30000000000000004)
    assert section_cue([0, 0.3], 0.2, 0.4, NEAREST) == 1
    assert section_cue([0, 4], 0, 4, NEAREST) == 0  # middle 2: a tie keeps the earlier cue
    assert section_cue([5, 9], 0, 2) == 0  # before every cue: the first one
    with pytest.raises(ValueError, match="no cues"):
        section_cue([], 0, 1)
    with pytest.raises(ValueError, match="choose one of"):
        check_timing("middle")


# -- training asks the same rule ---------------------------------------------------------------------------


def test_a_16_fps_clip_switches_where_generation_does():
    """Cues at 0:00 and 0:04 on a 16 fps clip: generation and training switch at latent frame 16 (was 8 and 24)."""
    board = Storyboard.parse("0:00 a\n0:04 b")
    schedule = schedule_sections(6, 16, 8)
    generated = [p.section.latent_start for p in board.assign(schedule) if p.cue == 1][0]
    positions = [cue_latent_position(c.t, 16) for c in board.cues]
    trained = [a for a in range(0, schedule.latent_frames, 8) if latent_section_cue(positions, a, a + 8) == 1][0]
    assert generated == trained == 16
    # every 2nd frame of the same clip: 8 fps in the cache, the cue lands on latent frame 8's section
    halved = [cue_latent_position(c.t, 16, frame_stride=2) for c in board.cues]
    assert [latent_section_cue(halved, a, a + 4) for a in (0, 4, 8)] == [0, 0, 1]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([8, 12, 15, 16, 23.976, 24, 25, 30]),
    st.sampled_from([1, 2, 4]),  # fps / frame_stride stays the decimal it reads as
    st.integers(1, 12),
    st.integers(2, 60),
    st.lists(st.integers(0, 3000), min_size=1, max_size=6, unique=True),
)
@example(12, 2, 6, 6, [0, 175])  # 1.75 s is clip frame 10.5, the section's middle: 4 * 2 / 12 as a float misses it
def test_training_sections_take_the_cue_generation_gives_them(fps, frame_stride, section_frames, latents, hundredths):
    """A clip of ``latents`` latent frames cut like the sampler cuts a video at fps / frame_stride."""
    rate = fps / frame_stride
    frames = first_frame(latents) if latents > 1 else 1
    times = sorted(t / 100 for t in hundredths)
    board = Storyboard([Cue(t, f"p{i}") for i, t in enumerate(times)])
    positions = [cue_latent_position(t, fps, 4, frame_stride) for t in times]
    prompts = [(position, f"p{i}") for i, position in enumerate(positions)]
    schedule = schedule_sections(frames / rate, rate, section_frames)
    assert schedule.latent_frames == latents
    for section in schedule.sections:
        k = board.cue_for(section, rate)
        assert latent_section_cue(positions, section.latent_start, section.latent_end) == k
        assert latent_section_prompt(prompts, section.latent_start, section.latent_end) == f"p{k}"
