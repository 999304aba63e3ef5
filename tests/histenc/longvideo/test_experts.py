"""Where the high-noise expert hands over to the low-noise one, and which pairs of experts fit together."""

import pytest

from histenc.dit.info import ModelInfo
from histenc.longvideo.experts import Experts, check_pair, switch_at

T2V = ModelInfo("wan", "wan2.1", "t2v", 5120, 16, 16, 8, 4, (1, 2, 2), 40, 40, False)
I2V = ModelInfo("wan", "wan2.1", "i2v", 5120, 16, 36, 8, 4, (1, 2, 2), 40, 40, False)
NARROW = ModelInfo("wan", "wan2.1", "t2v", 1536, 16, 16, 8, 4, (1, 2, 2), 30, 12, False)
SIGMAS = [1.0, 0.96, 0.9, 0.85, 0.7, 0.4, 0.0]  # six steps


def test_a_step_switch_is_taken_as_it_is():
    assert switch_at(SIGMAS, 3, 0.875) == 3


def test_a_sigma_boundary_gives_the_high_noise_expert_every_step_at_or_above_it():
    assert switch_at(SIGMAS, 0, 0.875) == 3  # 1.0, 0.96, 0.9
    assert switch_at(SIGMAS, 0, 0.9) == 3  # at the boundary counts as high noise (Wan 2.2: t >= boundary)
    assert switch_at(SIGMAS, 0, 0.95) == 2


def test_a_switch_that_leaves_an_expert_no_step_is_one_sentence():
    with pytest.raises(ValueError, match=r"^switch_step 6 leaves the low-noise expert no step of the 6; pick 1 to 5"):
        switch_at(SIGMAS, 6, 0.875)
    with pytest.raises(ValueError, match=r"^switch_sigma 1.5 gives no step .* from 1.000 to 0.400 over the 6 steps"):
        switch_at(SIGMAS, 0, 1.5)
    with pytest.raises(ValueError, match=r"^switch_sigma 0.1 gives every step to the high-noise expert"):
        switch_at(SIGMAS, 0, 0.1)
    with pytest.raises(ValueError, match=r"^the expert switch is at step 0 of 4; each expert needs at least one step"):
        Experts(object(), 0, 4)


def test_experts_of_one_model_pass_and_others_are_named():
    check_pair(T2V, T2V, ("WAN21", "WAN21"))
    with pytest.raises(ValueError, match=r"^model_low_noise does not match model: its width is 1536 but model's is "):
        check_pair(T2V, NARROW, ("WAN21", "WAN21"))
    with pytest.raises(ValueError, match=r"its input channels is 36 but model's is 16 \(WAN21 and WAN21\); connect"):
        check_pair(T2V, I2V, ("WAN21", "WAN21"))
    with pytest.raises(ValueError, match=r"^model_low_noise is a WAN22 model but model is a WAN21 model; connect"):
        check_pair(T2V, T2V, ("WAN21", "WAN22"))
