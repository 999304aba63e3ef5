"""Pretrain History Encoder / Finetune Autoregressive nodes in-process on the tiny native Wan fixture."""

import pytest
import torch

from histenc.encoder.io import load_encoder
from histenc.train.loop import CHECKPOINT_NAME
from histenc.weights import read_metadata


@pytest.fixture
def comfy_dirs(comfy, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda name: [str(tmp_path / "models" / name)])
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path / "input"))
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    return tmp_path


def setup(pack, load_wan):
    from comfyui_histenc.histenc_nodes.history_encoder import InitHistoryEncoder

    torch.set_num_threads(1)
    model = load_wan()
    encoder = InitHistoryEncoder.execute(model, "4x4x2", "full", 0).args[0]
    latent = {"samples": torch.randn(2, 16, 8, 8, 8, generator=torch.Generator().manual_seed(0))}
    positive = [[torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(1)), {}]]
    return model, encoder, latent, positive


def args(**over):
    base = dict(
        steps=3,
        learning_rate=1e-3,
        lora_rank=4,
        seed=0,
        output_name="hist",
        checkpoint_every=1,
        gradient_checkpointing=False,
    )
    base.update(over)
    return base


def test_pretrain_node_trains_saves_and_resumes_after_interrupt(pack, load_wan, comfy_dirs, monkeypatch):
    import comfy.model_management
    from comfyui_histenc.histenc_nodes.history_encoder import model_dit
    from comfyui_histenc.histenc_nodes.train_history import PretrainHistoryEncoder

    model, encoder, latent, positive = setup(pack, load_wan)
    import comfy.utils

    shown = []
    original = comfy.utils.ProgressBar.update_absolute

    def record(self, value, total=None, preview=None):
        shown.append((value, preview))
        return original(self, value, total, preview)

    def interrupt_at_two():  # the user presses cancel once the bar shows step 2
        if shown and shown[-1][0] == 2:
            raise comfy.model_management.InterruptProcessingException()

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", record)
    import comfy_execution.utils
    from comfyui_histenc.histenc_nodes import _common

    texts = []
    running = comfy_execution.utils.ExecutionContext(prompt_id="p", node_id="7", list_index=None)
    monkeypatch.setattr(comfy_execution.utils, "get_executing_context", lambda: running)
    monkeypatch.setattr(_common, "show_text", lambda text, node: texts.append((node, text)))

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", interrupt_at_two)
    with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
        PretrainHistoryEncoder.execute(
            model, encoder, latent=latent, positive=positive, history_frames=6, query_frames=2, **args()
        )
    checkpoint = comfy_dirs / "output" / "histenc_training" / "hist" / CHECKPOINT_NAME
    assert read_metadata(checkpoint)["step"] == 2
    assert all(preview is None for _, preview in shown)  # a preview must be an image; the loss goes as text
    assert texts[0][0] == "7" and texts[0][1].startswith("step 1/3  loss ")

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", lambda: None)
    with torch.inference_mode():
        out = PretrainHistoryEncoder.execute(
            model, encoder, latent=latent, positive=positive, history_frames=6, query_frames=2, **args()
        )
    out_model, trained, plot, path = out.args
    assert not checkpoint.exists()  # a finished run removes its resumable state unless keep_checkpoint is on
    summary = out.ui.as_dict()["text"][0]
    assert summary.startswith("trained 3 steps (resumed from step 2), last loss ")
    assert "training checkpoint removed (" in summary and " MB freed)" in summary
    assert plot.shape[-1] == 3
    loaded = load_encoder(path, dit=model_dit(model), family="wan2.1")
    assert loaded.hr_out.weight.abs().sum() > 0  # the zero-initialised HR output learned something
    assert (comfy_dirs / "models" / "loras" / "hist.safetensors").is_file()
    assert out_model is not model and len(out_model.patches) > 0  # the LoRA is applied the stock way


def test_autoregressive_node_and_bad_input(pack, load_wan, comfy_dirs):
    from comfyui_histenc.histenc_nodes.train_history import FinetuneAutoregressive

    model, encoder, latent, positive = setup(pack, load_wan)
    with torch.inference_mode():
        out_model, trained, _, path = FinetuneAutoregressive.execute(
            model,
            encoder,
            latent=latent,
            positive=positive,
            section_frames=2,
            max_history=6,
            **args(steps=2, lora_rank=0, output_name="ar"),
        ).args
    assert out_model is model  # lora_rank 0: only the encoder trains
    assert path.endswith("ar.safetensors")
    with pytest.raises(ValueError, match="connect a dataset"):
        FinetuneAutoregressive.execute(model, encoder, section_frames=2, max_history=6, **args())
    with pytest.raises(ValueError, match="needs a prompt"):
        FinetuneAutoregressive.execute(model, encoder, latent=latent, section_frames=2, max_history=6, **args())
    wan22 = {"samples": torch.zeros(1, 48, 8, 8, 8)}  # a Wan 2.2 5B latent: refused before the host's latent format
    with pytest.raises(ValueError, match=r"^latent has 48 latent channels but the model expects 16; use a latent"):
        FinetuneAutoregressive.execute(
            model, encoder, latent=wan22, positive=positive, section_frames=2, max_history=6, **args()
        )
    with pytest.raises(ValueError, match=r"^dataset /etc is outside the folders this server may read and write"):
        FinetuneAutoregressive.execute(model, encoder, dataset="/etc", section_frames=2, max_history=6, **args())
    with pytest.raises(ValueError, match="learning rate is 0"), torch.inference_mode():
        FinetuneAutoregressive.execute(
            model,
            encoder,
            latent=latent,
            positive=positive,
            section_frames=2,
            max_history=6,
            **args(learning_rate=0.0, output_name="ar2"),
        )


def test_the_cli_and_the_node_write_the_same_weights_for_the_same_settings(
    pack, load_wan, fixture_models, comfy_dirs, tmp_path
):
    """One trainer under both: the node on ComfyUI's DiT and ``python -m histenc.train`` on the plain-torch one."""
    from comfyui_histenc.histenc_nodes.history_encoder import InitHistoryEncoder
    from comfyui_histenc.histenc_nodes.train_history import PretrainHistoryEncoder
    from safetensors.torch import load_file

    from histenc.encoder.io import save_encoder
    from histenc.train.__main__ import run
    from histenc.train.config import TrainConfig
    from histenc.train.dataset import build_cache
    from histenc.train.procedural import generate, write_image_sequence

    torch.set_num_threads(1)
    model = load_wan()
    encoder = InitHistoryEncoder.execute(model, "4x4x2", "full", 0).args[0]
    save_encoder(tmp_path / "start.safetensors", encoder, family="wan2.1")  # both runs start from these weights
    write_image_sequence(generate(0, frames=20, size=16, objects=1), tmp_path / "data" / "clip")
    latents = torch.randn(1, 16, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(1))
    cache = tmp_path / "models" / "histenc_datasets" / "clips"  # where the Video Dataset node puts caches
    build_cache(tmp_path / "data", cache, lambda frames: latents, lambda prompt: text, 16, 16)
    fmt = model.model.latent_format  # the CLI's latent_mean / latent_std are the node's process_latent_in
    steps, lr, seed, rank = 3, 1e-3, 0, 4

    with torch.inference_mode():
        PretrainHistoryEncoder.execute(
            model,
            encoder,
            dataset=str(cache),
            history_frames=6,
            query_frames=2,
            **args(steps=steps, learning_rate=lr, seed=seed, lora_rank=rank, output_name="same", checkpoint_every=10),
        )
    fixture = fixture_models / "diffusion_models" / "histenc_tiny_wan21_t2v.safetensors"
    cli = tmp_path / "cli"
    run(
        TrainConfig(
            objective="frame_query",
            out_dir=str(cli),
            steps=steps,
            lr=lr,
            seed=seed,
            checkpoint_every=10,
            device="cpu",
            lora={"rank": rank},
            frame_query={"history_frames": 6, "query_frames": 2},
            model={"kind": "toy", "dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 2, "weights": str(fixture)},
            data={
                "kind": "cache",
                "path": str(cache),
                "latent_mean": fmt.latents_mean.flatten().tolist(),
                "latent_std": fmt.latents_std.flatten().tolist(),
            },
            context={"kind": "encoder", "weights": str(tmp_path / "start.safetensors")},
        )
    )

    models = comfy_dirs / "models"
    for node_file, cli_file in [
        (models / "history_encoders" / "same.safetensors", cli / "history_encoder.safetensors"),
        (models / "loras" / "same.safetensors", cli / "lora.safetensors"),
    ]:
        a, b = load_file(str(node_file)), load_file(str(cli_file))
        assert a.keys() == b.keys(), node_file.name
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=f"{cli_file.name}:{key}")
    assert (
        read_metadata(cli / "lora.safetensors")["rank"] == read_metadata(models / "loras" / "same.safetensors")["rank"]
    )
    node_losses = (comfy_dirs / "output" / "histenc_training" / "same" / "loss.csv").read_text().splitlines()[1:]
    cli_losses = (cli / "loss.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[1]) for r in node_losses] == pytest.approx(
        [float(r.split(",")[1]) for r in cli_losses], rel=1e-5
    )


def test_training_nodes_run_on_inputs_made_under_inference_mode_and_leave_them_as_they_were(pack, load_wan, comfy_dirs):
    """As the server runs a graph: the MODEL loaded, the encoder made, the latents and the node run, all under
    torch.inference_mode. The node trains a plain-tensor copy of the encoder and returns it; the encoder the
    graph holds (New History Encoder's cached output) keeps its values."""
    import csv
    import math

    from comfyui_histenc.histenc_nodes.history_encoder import InitHistoryEncoder
    from comfyui_histenc.histenc_nodes.train_history import FinetuneAutoregressive, PretrainHistoryEncoder

    torch.set_num_threads(1)
    with torch.inference_mode():
        model = load_wan()
        encoder = InitHistoryEncoder.execute(model, "4x4x2", "full", 0).args[0]
        latent = {"samples": torch.randn(2, 16, 8, 8, 8, generator=torch.Generator().manual_seed(0))}
        positive = [[torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(1)), {}]]
    assert all(p.is_inference() for p in encoder.parameters())  # what the server's New History Encoder gives
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.inference_mode():
        _, trained, _, _ = PretrainHistoryEncoder.execute(
            model, encoder, latent=latent, positive=positive, history_frames=6, query_frames=2, **args(output_name="im")
        ).args
    rows = list(csv.DictReader(open(comfy_dirs / "output" / "histenc_training" / "im" / "loss.csv")))
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert trained is not encoder and not any(p.is_inference() for p in trained.parameters())
    assert not torch.equal(trained.hr_out.weight, encoder.hr_out.weight)  # the copy learned
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key  # the graph's encoder did not change
    with torch.inference_mode():
        FinetuneAutoregressive.execute(
            model,
            encoder,
            latent=latent,
            positive=positive,
            section_frames=2,
            max_history=6,
            **args(steps=2, output_name="im_ar"),
        )
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
