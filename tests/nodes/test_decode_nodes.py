"""Chunked decoding against a full decode with the tiny Wan VAE; the streamed VIDEO path."""

import pytest
import torch


def test_chunked_decode_of_the_wan_vae_equals_a_full_decode(pack, load_vae):
    import comfyui_version
    from comfyui_histenc.histenc_nodes.decode import DecodeLongVideo, decode_chunks, wan_cache_api

    # both tested hosts stream the Wan VAE exactly, each through its own cache API
    assert wan_cache_api() == {"0.3.75": "count_conv3d", "0.33.0": "count_cache_layers"}[comfyui_version.__version__]
    vae = load_vae()
    latent = {"samples": torch.randn(1, 16, 9, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5}
    full = vae.decode(latent["samples"]).reshape(-1, 32, 32, 3)
    for chunk in (1, 2, 3, 4, 9):
        chunked = DecodeLongVideo.execute(vae, latent, chunk, 0).args[0]
        assert chunked.shape == full.shape == (33, 32, 32, 3)
        assert torch.equal(chunked, full), chunk  # the host's own decode calls, so bit for bit
    calls, parts, seen = [], [], []
    counter = vae.first_stage_model.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        decode_chunks(vae, latent, 3, 0, lambda images: (parts.append(images), seen.append(len(calls))))
    finally:
        counter.remove()
    assert [p.shape[0] for p in parts] == [9, 12, 12]  # a chunk of 3 latent frames at a time
    assert seen[0] < seen[-1] == len(calls)  # streamed: the first chunk leaves before the decode ends


def test_streamed_decode_leaves_the_vae_as_it_was(pack, load_vae):
    from comfyui_histenc.histenc_nodes.decode import DecodeLongVideo

    from comfyui_histenc.histenc_nodes.decode import decode_chunks

    vae = load_vae()
    samples = torch.randn(1, 16, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    DecodeLongVideo.execute(vae, {"samples": samples}, 2, 0)
    assert not vae.first_stage_model.decoder._forward_hooks

    def full_disk(images):
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        decode_chunks(vae, {"samples": samples}, 2, 0, full_disk)
    assert not vae.first_stage_model.decoder._forward_hooks  # a failed write leaves the VAE as it was too
    assert vae.decode(samples).shape == (1, 13, 32, 32, 3)


def test_a_host_without_a_known_wan_cache_api_decodes_with_warmup(pack, load_vae, monkeypatch, caplog):
    """Neither count_conv3d nor count_cache_layers: one sentence naming the host version, then the warm-up path."""
    import sys
    import types

    import comfy.ldm.wan
    import comfy.ldm.wan.vae as wan_vae
    import comfyui_version
    from comfyui_histenc.histenc_nodes import decode

    newer = types.ModuleType(wan_vae.__name__)  # a host whose module has the VAE but neither cache helper
    newer.WanVAE = wan_vae.WanVAE
    decode.wan_cache_api.cache_clear()
    try:
        with monkeypatch.context() as m, caplog.at_level("WARNING"):
            m.setitem(sys.modules, wan_vae.__name__, newer)
            m.setattr(comfy.ldm.wan, "vae", newer)
            assert decode.wan_cache_api() is None
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and f"ComfyUI {comfyui_version.__version__}'s Wan VAE" in warnings[0]
        assert warnings[0].count(". ") == 0 and "count_conv3d nor count_cache_layers" in warnings[0]
        vae = load_vae()
        latent = {"samples": torch.randn(1, 16, 9, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5}
        full = vae.decode(latent["samples"]).reshape(-1, 32, 32, 3)
        parts = []
        decode.decode_chunks(vae, latent, 3, 2, parts.append)
        assert [p.shape[0] for p in parts] == [9, 12, 12] and torch.equal(parts[0], full[:9])
        assert torch.cat(parts).shape == full.shape  # every frame in place; later chunks are close, not equal
    finally:
        decode.wan_cache_api.cache_clear()


def test_warmup_chunks_keep_every_frame_in_place(pack, load_vae):
    from comfyui_histenc.histenc_nodes.decode import warmup_chunks

    vae = load_vae()
    samples = torch.randn(1, 16, 9, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    full = vae.decode(samples).reshape(-1, 32, 32, 3)
    parts = list(warmup_chunks(vae, samples, 3, 2))
    assert [p.shape[0] for p in parts] == [9, 12, 12]  # 1 + 4 * 2, then 4 per latent frame
    assert torch.equal(parts[0], full[:9])  # the first chunk has no past: identical
    assert torch.cat(parts).shape == full.shape
    # with this random-weight VAE the causal context reaches further than any warm-up, so later
    # chunks are only checked for shape; a trained VAE's influence fades within a few frames


def test_trim_to_the_frames_the_sampler_asked_for(pack, load_vae):
    from comfyui_histenc.histenc_nodes.decode import DecodeLongVideo

    latent = {"samples": torch.zeros(1, 16, 4, 4, 4), "histenc_frames": 11}
    assert DecodeLongVideo.execute(load_vae(), latent, 2, 1).args[0].shape[0] == 11  # 13 decoded, 2 trimmed


def files_under(folder):
    return [p for p in folder.rglob("*") if p.is_file()]


def test_streamed_video_has_every_frame_and_leaves_no_file(pack, load_vae, comfy, tmp_path, monkeypatch):
    import folder_paths
    from comfyui_histenc.histenc_nodes.decode import DecodeLongVideoToFile
    import av

    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path / "temp"))
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path / "output"))
    latent = {"samples": torch.randn(1, 16, 5, 4, 4), "histenc_frames": 16}
    video = DecodeLongVideoToFile.execute(load_vae(), latent, 16.0, 2, 2, 23).args[0]
    with av.open(video.get_stream_source()) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16
    assert video.get_dimensions() == (32, 32) and video.get_frame_count() == 16
    video.save_to(str(tmp_path / "saved.mp4"))  # as SaveVideo does
    with av.open(str(tmp_path / "saved.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16
    assert files_under(tmp_path) == [tmp_path / "saved.mp4"]  # nothing in temp (or anywhere else) was left behind


@pytest.mark.parametrize("stop", ["interrupt", "error"])
def test_an_interrupted_or_failed_streamed_decode_leaves_no_file(pack, load_vae, comfy, tmp_path, monkeypatch, stop):
    import comfy.model_management
    import folder_paths
    from comfyui_histenc.histenc_nodes import decode

    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path / "temp"))
    real, chunks = decode.decode_chunks, []

    def stopped_after_one_chunk(vae, latent, chunk, warmup, emit):
        def once(images):
            emit(images)
            chunks.append(images.shape[0])
            if stop == "interrupt":
                raise comfy.model_management.InterruptProcessingException()  # the user pressed cancel
            raise RuntimeError("out of memory")

        real(vae, latent, chunk, warmup, once)

    monkeypatch.setattr(decode, "decode_chunks", stopped_after_one_chunk)
    latent = {"samples": torch.randn(1, 16, 5, 4, 4)}
    expected = comfy.model_management.InterruptProcessingException if stop == "interrupt" else RuntimeError
    with pytest.raises(expected):
        decode.DecodeLongVideoToFile.execute(load_vae(), latent, 16.0, 2, 2, 23)
    assert chunks == [5] and files_under(tmp_path) == []


def test_a_latent_of_another_vae_is_one_sentence(pack, load_vae):
    from comfyui_histenc.histenc_nodes.decode import DecodeLongVideo, DecodeLongVideoToFile

    wan22 = {"samples": torch.zeros(1, 48, 3, 4, 4)}  # Wan 2.2 5B's latent into the Wan 2.1 VAE
    sentence = r"^latent has 48 channels but this VAE decodes 16; connect the VAE of the model that made the latent"
    with pytest.raises(ValueError, match=sentence):
        DecodeLongVideo.execute(load_vae(), wan22, 2, 0)
    with pytest.raises(ValueError, match=sentence):
        DecodeLongVideoToFile.execute(load_vae(), wan22, 16.0, 2, 2, 23)
