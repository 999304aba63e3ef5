"""The Long Video Sampler follows the whole plan of each sampling order: what every section's context payload was
given (frame times on both sides) is the plan's context for the step that makes it, start image included."""

import pytest
import torch

from histenc.longvideo import orders
from histenc.longvideo.loop import SectionLoop
from histenc.window import SlidingWindow
from tests.nodes.test_long_video_nodes import T2V, _stubs, board, outdir, sample  # noqa: F401 (fixtures)

ORDER_NAMES = {
    "forward": "forward",
    "endpoints first": "endpoints",
    "inverted (anti-drifting, towards the start image)": "inverted",
    "one anchor per prompt": "anchors",
}


@pytest.fixture
def loops(monkeypatch):
    """Every SectionLoop the node runs."""
    made, real = [], SectionLoop.run

    def run(self):
        made.append(self)
        return real(self)

    monkeypatch.setattr(SectionLoop, "run", run)
    return made


@pytest.mark.parametrize("name", ORDER_NAMES)
def test_every_section_gets_the_context_its_plan_gives_it(pack, load_wan, load_vae, outdir, loops, name):  # noqa: F811
    # 3.5 s at 8 fps: 8 latent frames, 4 sections of 2; the prompts' cues are in force from sections 0 and 2
    story = board("0:00 a red kite\n0:01.5 a blue boat")
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    sample(
        load_wan(T2V),
        seconds=3.5,
        context=[SlidingWindow(3)],
        sampling_order=name,
        storyboard=story,
        vae=load_vae(),
        start_image=image,
    )
    (loop,) = loops
    plan = orders.plan(
        ORDER_NAMES[name], 4, 2, image=True, anchors=orders.first_of_each([p.cue for p in loop.sections])
    )
    assert loop.order == plan.section_order()
    for step in plan.steps:
        for section in step.generate:
            assert loop.received[section] == plan.context_times(step, section), (name, section)
    if ORDER_NAMES[name] == "inverted":  # the start image is in view of every section made before section 0
        assert [loop.received[i]["before"][:1] for i in (3, 2, 1)] == [[-6], [-4], [-2]]
