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
    base = dict(steps=3, learning_rate=1e-3, lora_rank=4, seed=0, output_name="hist", checkpoint_every=1,
                gradient_checkpointing=False)
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
    from comfyui_histenc.histenc_nodes import lora_train

    texts = []
    running = comfy_execution.utils.ExecutionContext(prompt_id="p", node_id="7", list_index=None)
    monkeypatch.setattr(comfy_execution.utils, "get_executing_context", lambda: running)
    monkeypatch.setattr(lora_train, "show_text", lambda text, node: texts.append((node, text)))

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", interrupt_at_two)
    with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
        PretrainHistoryEncoder.execute(model, encoder, latent=latent, positive=positive, history_frames=6,
                                       query_frames=2, **args())
    checkpoint = comfy_dirs / "output" / "histenc_training" / "hist" / CHECKPOINT_NAME
    assert read_metadata(checkpoint)["step"] == 2
    assert all(preview is None for _, preview in shown)  # a preview must be an image; the loss goes as text
    assert texts[0][0] == "7" and texts[0][1].startswith("step 1/3  loss ")

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", lambda: None)
    with torch.inference_mode():
        out_model, trained, plot, path = PretrainHistoryEncoder.execute(
            model, encoder, latent=latent, positive=positive, history_frames=6, query_frames=2, **args()).args
    assert read_metadata(checkpoint)["step"] == 3
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
            model, encoder, latent=latent, positive=positive, section_frames=2, max_history=6,
            **args(steps=2, lora_rank=0, output_name="ar")).args
    assert out_model is model  # lora_rank 0: only the encoder trains
    assert path.endswith("ar.safetensors")
    with pytest.raises(ValueError, match="connect a dataset"):
        FinetuneAutoregressive.execute(model, encoder, section_frames=2, max_history=6, **args())
    with pytest.raises(ValueError, match="needs a prompt"):
        FinetuneAutoregressive.execute(model, encoder, latent=latent, section_frames=2, max_history=6, **args())
    with pytest.raises(ValueError, match="learning rate is 0"), torch.inference_mode():
        FinetuneAutoregressive.execute(model, encoder, latent=latent, positive=positive, section_frames=2,
                                       max_history=6, **args(learning_rate=0.0, output_name="ar2"))
