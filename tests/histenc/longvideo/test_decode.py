"""Chunk plans for decoding a long latent video with a causal VAE."""

import pytest

from histenc.longvideo.decode import chunk_plan, pixel_frames


@pytest.mark.parametrize("frames,chunk,warmup", [(1, 4, 2), (13, 4, 2), (13, 5, 0), (241, 8, 3), (9, 100, 2)])
def test_chunks_rebuild_every_pixel_frame_exactly_once(frames, chunk, warmup):
    plan = chunk_plan(frames, chunk, warmup)
    assert plan[0].start == 0 and plan[-1].end == frames
    assert all(a.end == b.start for a, b in zip(plan, plan[1:]))
    kept = 0
    for c in plan:
        decoded = pixel_frames(c.end - c.decode_start)
        assert c.start - c.decode_start <= max(1, warmup)
        kept += decoded - c.skip  # what the node keeps of this chunk
    assert kept == pixel_frames(frames)


def test_skip_drops_exactly_the_warmup_frames():
    plan = chunk_plan(10, 4, 2)
    assert [(c.decode_start, c.start, c.end, c.skip) for c in plan] == [(0, 0, 4, 0), (2, 4, 8, 5), (6, 8, 10, 5)]


@pytest.mark.parametrize(
    "args,message", [((0, 4), "nothing to decode"), ((5, 0), "chunk size"), ((5, 2, -1), "warm-up")]
)
def test_bad_plans_are_one_sentence(args, message):
    with pytest.raises(ValueError, match=message):
        chunk_plan(*args)


def test_a_later_chunk_always_gets_one_warmup_frame():
    assert [(c.decode_start, c.skip) for c in chunk_plan(9, 3, 0)] == [(0, 0), (2, 1), (5, 1)]
