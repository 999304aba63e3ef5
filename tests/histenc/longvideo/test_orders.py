import pytest
import torch

from histenc.context import SectionGrid
from histenc.longvideo.orders import (
    Plan,
    Step,
    anchor_sections,
    anchored,
    endpoints,
    forward,
    inverted,
    plan,
    plan_for_schedule,
)
from histenc.framepack.packing import FramePackContext
from histenc.framepack.schedule import parse_schedule
from tests.helpers import ToyDiT


def test_forward_sees_everything_before():
    p = forward(4, 9)
    assert [s.generate for s in p.steps] == [(0,), (1,), (2,), (3,)]
    assert p.steps[3].context == (0, 1, 2)
    assert p.context_times(p.steps[2]) == {"before": list(range(-18, 0)), "after": []}


def test_endpoints_make_first_then_last_seeing_it_then_fill():
    p = endpoints(5, 9)
    assert [s.generate for s in p.steps] == [(0,), (4,), (1,), (2,), (3,)]
    # the end section sees section 0 at its true time: 36 frames back, sections 1-3 skipped
    assert p.steps[1].context == (0,)
    assert p.context_times(p.steps[1]) == {"before": list(range(-36, -27)), "after": []}
    step = p.steps[2]
    assert step.context == (0, 4)
    times = p.context_times(step)
    # random access: section 4 starts 27 frames after section 1; sections 2 and 3 are skipped
    assert times["before"] == list(range(-9, 0)) and times["after"] == list(range(27, 36))
    assert endpoints(1, 9).steps == (Step((0,), (), False),)


def test_inverted_goes_back_toward_the_image():
    p = inverted(3, 9)
    assert p.image_frames == 1 and [s.generate for s in p.steps] == [(2,), (1,), (0,)]
    last = p.steps[-1]
    assert last.context == (1, 2) and last.image
    # section 0 holds the image as its own first frame: nothing before it
    assert p.context_times(last) == {"before": [], "after": list(range(9, 27))}
    first = p.context_times(p.steps[0])  # only the image, far before: 17 frames of blank phases skipped
    assert first == {"before": [-18], "after": []}
    middle = p.context_times(p.steps[1])  # the image stays the anchor of every section
    assert middle == {"before": [-9], "after": list(range(9, 18))}


def test_anchors_one_per_prompt_then_gaps():
    p = anchored(6, 4, anchors=[0, 3, 5])
    assert [s.generate for s in p.steps] == [(0,), (3,), (5,), (1,), (2,), (4,)]
    assert p.steps[2].context == (0, 3) and p.steps[4].context == (0, 1, 3, 5)
    assert anchor_sections([0.0, 2.1, 5.0, 5.5, 99], sections=6, section_seconds=1.5) == [0, 1, 3, 5]
    with pytest.raises(ValueError, match="distinct indices"):
        anchored(3, 4, anchors=[0, 3])


def test_check_refuses_broken_plans():
    with pytest.raises(ValueError, match="before it is made"):
        Plan("x", 2, 4, 0, (Step((0,), (1,), False), Step((1,), (), False))).check()
    with pytest.raises(ValueError, match="never makes section 1"):
        Plan("x", 2, 4, 0, (Step((0,), (), False),)).check()
    with pytest.raises(ValueError, match="sampling order"):
        plan("sideways", 2, 4)
    with pytest.raises(ValueError, match="at least 1 section"):
        forward(0, 4)


def test_schedule_names_imply_their_order():
    assert plan_for_schedule(parse_schedule("td_f16k4f4k2f1k1_g9"), 3).order == "forward"
    assert plan_for_schedule(parse_schedule("td_f16k4f4k2f1k1_g9_x_f1k1"), 3).order == "endpoints"
    assert plan_for_schedule(parse_schedule("td_f16k4f4k2f1k1_g9_x_f1k1"), 3, anchors=[0, 2]).order == "anchors"
    inv = plan_for_schedule(parse_schedule("f1k1_x_g9_f1k1f4k2f16k4_td"), 3)
    assert inv.order == "inverted" and inv.section_frames == 9 and inv.image_frames == 1


def test_a_plan_step_drives_the_packer_with_its_time_indices():
    dit = ToyDiT(width=16, in_channels=4)
    schedule = parse_schedule("f1k1_x_g2_f1k1f4k2f16k4_td")
    p = plan_for_schedule(schedule, 4)
    video = torch.randn(1, 4, p.total_frames, 4, 4)
    step = p.steps[2]  # makes section 1; the image and sections 2, 3 exist
    times = p.context_times(step)
    origin = p.start(step.generate[0])
    before = video[:, :, [origin + t for t in times["before"]]]
    after = video[:, :, [origin + t for t in times["after"]]]
    pack = FramePackContext.from_dit(dit, schedule)
    ctx = pack.pack(SectionGrid(2, 4, 4), before, after, times["before"], times["after"])
    assert ctx.positions[:, 0].min() == -2 and ctx.positions[:4, 0].tolist() == [-2.0] * 4  # the image, 2 back
    assert ctx.count == pack.context_length(SectionGrid(2, 4, 4), 1, 4)


def test_plans_hand_the_section_loop_its_order():
    from histenc.longvideo.loop import check_order
    from histenc.longvideo.orders import first_of_each

    assert forward(3, 2).section_order() == [[0], [1], [2]]
    assert inverted(3, 2).section_order() == [[2], [1], [0]]
    # one anchor per prompt: the first section that shows each storyboard cue
    cues = [0, 0, 1, 1, 1, 2, 0]
    assert first_of_each(cues) == [0, 2, 5]
    steps = anchored(7, 2, first_of_each(cues)).section_order()
    assert steps == [[0], [2], [5], [1], [3], [4], [6]] and check_order(steps, 7) == steps
