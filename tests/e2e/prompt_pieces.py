"""Pieces of API-format prompts for the bad-input table (tests/e2e/test_e2e_bad_input_table.py): each returns
``{node_id: node}`` so a row's prompt is ``merge(...)`` of pieces, on the tiny Wan 2.1 fixture and its VAE."""

from __future__ import annotations

WAN21 = "histenc_tiny_wan21_t2v.safetensors"
WAN21_VAE = "histenc_tiny_wan21_vae.safetensors"


def wan(node="1") -> dict:
    return {node: {"class_type": "UNETLoader", "inputs": {"unet_name": WAN21, "weight_dtype": "default"}}}


def wan_vae(node="2") -> dict:
    return {node: {"class_type": "VAELoader", "inputs": {"vae_name": WAN21_VAE}}}


def text_encoder(node="3") -> dict:
    return {node: {"class_type": "HistEncTestTextEncoder", "inputs": {}}}


def conditioning(node="4", text="a lighthouse") -> dict:
    return {node: {"class_type": "HistEncTestConditioning", "inputs": {"text": text}}}


def latent48(node="5", vae="2") -> dict:
    """A Wan 2.2 5B latent (48 channels), made by the host's own node."""
    inputs = {"vae": [vae, 0], "width": 64, "height": 64, "length": 9, "batch_size": 1}
    return {node: {"class_type": "Wan22ImageToVideoLatent", "inputs": inputs}}


def sliding_window(node="6") -> dict:
    return {node: {"class_type": "HistEncSlidingWindow", "inputs": {"frames": 2}}}


def encoder(node="7", model="1") -> dict:
    return {
        node: {
            "class_type": "HistEncInitHistoryEncoder",
            "inputs": {"model": [model, 0], "rate": "4x4x2", "variant": "full", "seed": 0},
        }
    }


def preview(source: str, output: int = 0, node="99") -> dict:
    """An output node, so the host validates and runs the node under test."""
    return {node: {"class_type": "PreviewAny", "inputs": {"source": [source, output]}}}


def node(node_id: str, class_type: str, **inputs) -> dict:
    return {node_id: {"class_type": class_type, "inputs": inputs}}


def dataset_node(folder: str, cache_folder: str = "", node_id="10") -> dict:
    return node(
        node_id,
        "HistEncVideoDataset",
        folder=folder,
        vae=["2", 0],
        clip=["3", 0],
        width=64,
        height=64,
        max_frames=9,
        frame_stride=1,
        default_caption="",
        cache_folder=cache_folder,
    )


def train_lora(node_id="10", **over) -> dict:
    inputs = dict(
        model=["1", 0],
        dataset="histenc_datasets/none",
        steps=1,
        rank=4,
        alpha=4.0,
        learning_rate=1e-4,
        blocks="all",
        targets="all",
        seed=0,
        output_name="table_lora",
        checkpoint_every=1,
        timestep_shift=3.0,
        gradient_checkpointing=False,
    )
    return node(node_id, "HistEncTrainLoRA", **{**inputs, **over})


def train_history(class_type: str, node_id="10", **over) -> dict:
    inputs = dict(
        model=["1", 0],
        encoder=["7", 0],
        steps=1,
        learning_rate=1e-4,
        lora_rank=0,
        seed=0,
        output_name="table_history",
        checkpoint_every=1,
        gradient_checkpointing=False,
    )
    if class_type == "HistEncPretrainHistoryEncoder":
        inputs.update(history_frames=4, query_frames=2)
    else:
        inputs.update(section_frames=2, max_history=4)
    return node(node_id, class_type, **{**inputs, **over})


def long_video(context: list | None = None, **over) -> dict:
    """The Long Video Sampler (node 5) on the tiny Wan 2.1 (node 1): 1 s at 4 fps in 1-latent-frame sections."""
    api = merge(
        wan(),
        text_encoder("2"),
        node("3", "HistEncStoryboard", clip=["2", 0], storyboard="0:00 a red kite", global_prompt=""),
        conditioning("4", "low quality"),
        preview("5", 1),
    )
    inputs = dict(model=["1", 0], storyboard=["3", 0], negative=["4", 0], seconds=1.0, fps=4.0, section_frames=1)
    inputs.update(width=32, height=32, seed=5, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple")
    inputs.update(continuation_frames=1, job_name="", **({"context": context} if context else {}))
    inputs.update(over)
    return merge(api, node("5", "HistEncLongVideoSampler", **inputs))


def merge(*pieces: dict) -> dict:
    out: dict = {}
    for piece in pieces:
        out.update(piece)
    return out
