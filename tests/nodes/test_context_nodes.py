"""Sliding Window Context and Apply History Context in-process on the tiny Wan fixtures."""

import pytest
import torch


def test_apply_context_attaches_a_window_to_a_clone(pack, load_wan):
    from comfyui_histenc.histenc_nodes.context import ApplyContext, SlidingWindowContext

    from histenc.dit.payload import PAYLOAD_KEY

    model = load_wan()
    context = SlidingWindowContext.execute(2).args[0]
    out = ApplyContext.execute(model, context, {"samples": torch.randn(1, 16, 3, 4, 4)}).args[0]
    payload = out.model_options["transformer_options"][PAYLOAD_KEY]
    assert out is not model and PAYLOAD_KEY not in model.model_options.get("transformer_options", {})
    assert payload.history.shape == (1, 16, 3, 4, 4)


@pytest.mark.parametrize(
    "fixture, channels, expected",
    [("histenc_tiny_wan21_t2v.safetensors", 48, 16), ("histenc_tiny_wan22_ti2v.safetensors", 16, 48)],
)
def test_a_history_of_another_model_family_is_one_sentence(pack, load_wan, fixture, channels, expected):
    """A Wan 2.2 5B latent (48 channels) into a Wan 2.1 model and back: the sentence, not the host's shape error."""
    from comfyui_histenc.histenc_nodes.context import ApplyContext, SlidingWindowContext

    context = SlidingWindowContext.execute(2).args[0]
    history = {"samples": torch.zeros(1, channels, 3, 4, 4)}
    with pytest.raises(ValueError, match=rf"^history has {channels} latent channels but the model expects {expected}"):
        ApplyContext.execute(load_wan(fixture), context, history)
