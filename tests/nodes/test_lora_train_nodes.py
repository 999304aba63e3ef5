"""Dataset and Train LoRA nodes in-process on the tiny Wan fixtures, run the way ComfyUI runs nodes."""

import csv
import logging
import re
from pathlib import Path

import pytest
import torch

from histenc.train.dataset import build_cache
from histenc.train.procedural import generate, write_image_sequence
from histenc.weights import load_weights, read_metadata


def fake_text(prompt):
    g = torch.Generator().manual_seed(len(prompt))
    return torch.randn(1, 6, 4096, generator=g)


@pytest.fixture
def vae(load_vae):
    return load_vae()


@pytest.fixture
def dataset(pack, vae, tmp_path):
    """One procedural clip, 5 frames at 32x32, encoded by the real (tiny) Wan VAE: a repeated sample."""
    from comfyui_histenc.histenc_nodes.dataset import time_stride, vae_encoder

    write_image_sequence(generate(0, frames=40, size=32, objects=2), tmp_path / "data" / "clip")
    cache = tmp_path / "models" / "histenc_datasets" / "clip"  # where the Video Dataset node puts caches
    with torch.inference_mode():
        build_cache(
            tmp_path / "data", cache, vae_encoder(vae), fake_text, 32, 32, max_frames=5, time_stride=time_stride(vae)
        )
    return str(cache)


@pytest.fixture
def comfy_dirs(comfy, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda name: [str(tmp_path / "models" / name)])
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path / "input"))
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    return tmp_path


def eval_loss(model, latents, text, seeds=4):
    """Flow-matching loss at fixed noise and times (the same for every model compared), loaded as a sampler would."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    dm = model.get_model_object("diffusion_model")
    x0 = model.model.process_latent_in(latents)
    total = 0.0
    with torch.no_grad():
        for s in range(seeds):
            g = torch.Generator().manual_seed(100 + s)
            noise, t = torch.randn(x0.shape, generator=g), torch.tensor([0.2 + 0.2 * s])
            x_t = (1 - t) * x0 + t * noise
            total += float(torch.nn.functional.mse_loss(dm(x_t, t * 1000, text), noise - x0))
    return total / seeds


def node_args(dataset, **over):
    args = dict(
        dataset=dataset,
        steps=25,
        rank=4,
        alpha=4.0,
        learning_rate=5e-3,
        blocks="all",
        targets="all",
        seed=0,
        output_name="tiny_style",
        checkpoint_every=10,
        timestep_shift=1.0,
        gradient_checkpointing=False,
    )
    args.update(over)
    return args


class FakeClip:  # the Video Dataset node only calls tokenize and encode_from_tokens_scheduled
    cond_stage_model = object()

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        return [[fake_text(tokens), {}]]


def test_dataset_node_caches_with_the_real_vae(pack, vae, comfy_dirs, tmp_path):
    from comfyui_histenc.histenc_nodes.dataset import VideoDataset

    write_image_sequence(generate(1, frames=40, size=32, objects=2), tmp_path / "input" / "d" / "a")
    (tmp_path / "input" / "d" / "readme.md").write_text("x")
    with torch.inference_mode():
        out = VideoDataset.execute("d", vae, FakeClip(), 32, 32, 9, 1)  # relative: inside the input folder
    cache, report = out.args
    assert report.startswith("1 clip(s) encoded, 0 reused from the cache, 0 skipped, 1 other file(s) ignored")
    assert "readme" not in report
    assert cache.startswith(str(tmp_path / "models" / "histenc_datasets" / "d-"))  # never where /view serves files
    tensors, _ = load_weights(next((Path(cache) / "latents").iterdir()))
    assert tensors["latents"].shape == (1, 16, 3, 4, 4)  # 9 frames -> 1 + 8/4 latent frames, 32/8 pixels
    with torch.inference_mode():
        named = VideoDataset.execute(str(tmp_path / "input" / "d"), vae, FakeClip(), 32, 32, 9, 1, cache_folder="mine")
    assert named.args[0] == str(tmp_path / "models" / "histenc_datasets" / "mine")
    with pytest.raises(ValueError, match="dataset folder is empty"):
        VideoDataset.execute("  ", vae, FakeClip(), 32, 32, 9, 1)


@pytest.mark.parametrize(
    "folder, cache_folder, sentence",
    [
        ("d/a/00000.png", "", r"^dataset folder .*00000.png is a file, not a folder; give the folder that holds"),
        ("/etc", "", r"^dataset folder /etc is outside the folders this server may read and write \(.*input, "),
        ("../..", "", r"^dataset folder .*input/../.. is outside the folders"),
        ("d", "/tmp/elsewhere", r"^cache_folder /tmp/elsewhere is outside the folders .*; give a plain name"),
        ("d", "../../output/c", r"^cache_folder .*output/c is outside the folders .*models\); give a plain name"),
    ],
)
def test_dataset_node_reads_and_writes_only_in_comfyuis_folders(
    pack, vae, comfy_dirs, tmp_path, monkeypatch, folder, cache_folder, sentence
):
    from comfyui_histenc.histenc_nodes.dataset import VideoDataset

    monkeypatch.delenv("HISTENC_ALLOW_ANY_FOLDER", raising=False)
    write_image_sequence(generate(1, frames=20, size=32, objects=1), tmp_path / "input" / "d" / "a")
    opt_in = r".*, or start ComfyUI with HISTENC_ALLOW_ANY_FOLDER=1 to allow any folder\.$"
    with pytest.raises(ValueError, match=sentence + ("" if "is a file" in sentence else opt_in)):
        VideoDataset.execute(folder, vae, FakeClip(), 32, 32, 9, 1, cache_folder=cache_folder)


def test_any_folder_is_the_servers_opt_in(pack, vae, comfy_dirs, tmp_path, monkeypatch):
    from comfyui_histenc.histenc_nodes.dataset import VideoDataset

    write_image_sequence(generate(1, frames=20, size=32, objects=1), tmp_path / "elsewhere" / "a")
    monkeypatch.setenv("HISTENC_ALLOW_ANY_FOLDER", "1")
    with torch.inference_mode():
        cache, report = VideoDataset.execute(
            str(tmp_path / "elsewhere"), vae, FakeClip(), 32, 32, 9, 1, cache_folder=str(tmp_path / "c")
        ).args
    assert cache == str(tmp_path / "c") and report.startswith("1 clip(s) encoded")


def test_train_lora_learns_saves_loads_stock_and_resumes(pack, load_wan, dataset, comfy_dirs, caplog, monkeypatch):
    import comfy.model_management
    import comfy.utils
    from comfyui_histenc.histenc_nodes.lora_train import TrainLoRA

    from histenc.train.dataset import CachedDataset

    with torch.inference_mode():  # ComfyUI loads models and runs nodes in inference mode
        model = load_wan()
    item = CachedDataset(dataset)[0]
    before = eval_loss(model, item["latents"], item["text"])

    # the user presses cancel when the bar shows step 12; ComfyUI raises at its next check (inside step 13's forward)
    state = {"cancel": False}
    real_update = comfy.utils.ProgressBar.update_absolute

    def update(self, value, total=None, preview=None):
        state["cancel"] |= value == 12
        return real_update(self, value, total, preview)

    def check():
        if state["cancel"]:
            raise comfy.model_management.InterruptProcessingException()

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", update)
    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", check)
    with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
        TrainLoRA.execute(model, **node_args(dataset))
    ckpt = comfy_dirs / "output" / "histenc_training" / "tiny_style" / "checkpoint.safetensors"
    assert read_metadata(ckpt)["step"] == 12
    state["cancel"] = False

    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        out = TrainLoRA.execute(model, **node_args(dataset, keep_checkpoint=True))
    patched, plot, path = out.args
    summary = out.ui.as_dict()["text"][0]
    size = ckpt.stat().st_size / 2**20
    assert f"training checkpoint kept: {ckpt} ({size:.1f} MB), to resume or extend this run" in summary
    assert summary.startswith("trained 25 steps (resumed from step 12), last loss ") and f"wrote {path}" in summary
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()], caplog.text
    rows = list(csv.reader(open(ckpt.parent / "loss.csv")))
    assert len(rows) == 26  # header + 25 steps: 12 before the interrupt, 13 after resuming
    assert plot.shape == (1, 320, 640, 3)
    meta = read_metadata(path)
    assert (meta["rank"], meta["width"], meta["training"]["steps"]) == (4, 128, 25)

    after = eval_loss(patched, item["latents"], item["text"])
    print(f"held-out-noise flow-matching loss: before {before:.4f}, after 25 steps {after:.4f}")
    assert after < 0.8 * before, (before, after)
    assert eval_loss(model, item["latents"], item["text"]) == before  # the input MODEL is untouched

    with pytest.raises(ValueError, match="made with rank 4 but this run uses rank 8"):
        with torch.inference_mode():
            TrainLoRA.execute(model, **node_args(dataset, rank=8))


def test_bad_inputs_are_one_sentence(pack, load_wan, dataset, comfy_dirs):
    from comfyui_histenc.histenc_nodes.lora_train import TrainLoRA

    model = load_wan()
    with pytest.raises(ValueError, match="rank is 0"):
        TrainLoRA.execute(model, **node_args(dataset, rank=0))
    with pytest.raises(ValueError, match="learning rate is 0"):
        TrainLoRA.execute(model, **node_args(dataset, learning_rate=0.0))
    with pytest.raises(ValueError, match="output name '../x'"):
        TrainLoRA.execute(model, **node_args(dataset, output_name="../x"))
    with pytest.raises(ValueError, match="latents have 16 channels but this model uses 48"):
        TrainLoRA.execute(load_wan("histenc_tiny_wan22_ti2v.safetensors"), **node_args(dataset))
    with pytest.raises(ValueError, match="36 input channels"):
        TrainLoRA.execute(load_wan("histenc_tiny_wan21_i2v.safetensors"), **node_args(dataset))
    sentence = r"^blocks 'first' is not one of its options \('all', 'latter_half', 'list'\); pick one of them"
    assert re.match(sentence, TrainLoRA.validate_inputs(blocks="first"))
    assert TrainLoRA.validate_inputs(blocks="list") is True and TrainLoRA.validate_inputs() is True  # None: linked
    with pytest.raises(ValueError, match=sentence):
        TrainLoRA.execute(model, **node_args(dataset, blocks="first"))
    with pytest.raises(ValueError, match=r"^dataset /etc is outside the folders this server may read and write"):
        TrainLoRA.execute(model, **node_args("/etc"))


def test_a_finished_run_removes_its_checkpoint_unless_kept(pack, load_wan, dataset, comfy_dirs):
    from comfyui_histenc.histenc_nodes.lora_train import TrainLoRA

    with torch.inference_mode():
        model = load_wan()
        out = TrainLoRA.execute(model, **node_args(dataset, steps=2, output_name="gone"))
    folder = comfy_dirs / "output" / "histenc_training" / "gone"
    assert sorted(p.name for p in folder.iterdir()) == ["loss.csv", "loss.png"]  # the state is gone, the curve stays
    summary = out.ui.as_dict()["text"][0]
    assert re.search(r"training checkpoint removed \(\d+\.\d MB freed\); re-running starts from step 0$", summary)


def one_step(model, dataset, out_dir, targets="all"):
    """One training step of a rank-4 LoRA through the nodes' train_on_model; returns the job."""
    import comfy.model_management
    from comfyui_histenc.histenc_nodes._common import train_on_model

    from histenc.train.dataset import CachedDataset
    from histenc.train.loop import TrainSettings
    from histenc.train.trainer import LoRASpec, PlainLoRAObjective

    objective = PlainLoRAObjective(CachedDataset(dataset), model.model.process_latent_in, 1.0)
    settings = TrainSettings(steps=1, lr=1e-3, checkpoint_every=1)
    seen = []
    real = comfy.model_management.load_models_gpu

    def load(models, *args, **kwargs):
        seen.extend(models)
        return real(models, *args, **kwargs)

    comfy.model_management.load_models_gpu = load
    try:
        with torch.inference_mode():
            _, job = train_on_model(model, objective, LoRASpec(4, 4.0, targets, "all", 0), settings, out_dir)
    finally:
        comfy.model_management.load_models_gpu = real
    return job, seen


def test_one_step_reaches_every_targeted_lora_layer_with_the_host_switch_on(pack, load_wan, dataset, tmp_path):
    """ffn.2 included: a host whose fused MLP reads ffn[2].weight directly would leave its LoRA without a gradient."""
    import comfy.model_management
    from comfyui_histenc.histenc_nodes._common import HOST_TRAINING_SWITCH

    model = load_wan()
    switch = []
    dm = model.get_model_object("diffusion_model")
    hook = dm.blocks[0].register_forward_hook(
        lambda *_: switch.append(getattr(comfy.model_management, "in_training", None))
    )
    try:
        job, _ = one_step(model, dataset, tmp_path / "run")
    finally:
        hook.remove()
    assert len(job.lora.names) == 2 * 10  # two blocks, every linear layer of each
    missing = [n for n, layer in zip(job.lora.names, job.lora.layers) if not layer.up.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached the LoRA on {missing}"
    assert "blocks.1.ffn.2" in job.lora.names
    assert switch and set(switch) == ({True} if HOST_TRAINING_SWITCH else {None})
    if HOST_TRAINING_SWITCH:
        assert comfy.model_management.in_training is False  # restored after the run


def test_host_training_switch_is_restored_after_an_error(pack):
    import comfy.model_management
    from comfyui_histenc.histenc_nodes._common import HOST_TRAINING_SWITCH, host_training

    if not HOST_TRAINING_SWITCH:
        with host_training():
            assert not hasattr(comfy.model_management, "in_training")  # nothing is added to a host without it
        return
    with pytest.raises(RuntimeError, match="boom"), host_training():
        assert comfy.model_management.in_training is True
        raise RuntimeError("boom")
    assert comfy.model_management.in_training is False


def as_dynamic(model):
    """The host's dynamic-VRAM patcher class over the CPU fixture: ComfyUI builds a real one only for a GPU."""
    from comfy.model_patcher import ModelPatcher, ModelPatcherDynamic

    patcher = object.__new__(ModelPatcherDynamic)
    ModelPatcher.__init__(patcher, model.model, model.load_device, model.offload_device, model.model_size())
    patcher.cached_patcher_init = model.cached_patcher_init
    return patcher


def test_a_dynamic_vram_model_trains_on_a_plain_patcher_rebuilt_by_the_host(pack, load_wan, dataset, tmp_path):
    """Dynamic VRAM streams weights per layer, so a full load would leave them in RAM: the host rebuilds the MODEL."""
    from comfyui_histenc.histenc_nodes._common import DYNAMIC_PATCHER, dynamic_vram

    if DYNAMIC_PATCHER is None:
        pytest.skip("this ComfyUI has no dynamic VRAM patcher")
    model = load_wan()
    dynamic = as_dynamic(model)
    assert dynamic_vram(dynamic) and not dynamic_vram(model)
    job, loaded = one_step(dynamic, dataset, tmp_path / "run")
    assert len(loaded) == 1 and not dynamic_vram(loaded[0])
    assert loaded[0].model is not model.model  # a fresh model from the loader, the input MODEL stays as it was
    assert all(layer.up.grad.abs().sum() > 0 for layer in job.lora.layers)

    dynamic.cached_patcher_init = None  # a custom loader that registered no way to rebuild its MODEL
    with pytest.raises(ValueError, match="no cached_patcher_init.*--disable-dynamic-vram"):
        one_step(dynamic, dataset, tmp_path / "other")
