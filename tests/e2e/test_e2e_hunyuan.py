"""HunyuanVideo through the real host: stock loader, storyboard sampler with a history encoder."""

HUNYUAN = "histenc_tiny_hunyuan_video.safetensors"


def test_hunyuan_storyboard_with_encoder_context(host):
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": HUNYUAN, "weight_dtype": "default"}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 7.0}},
        "3": {"class_type": "HistEncTestTextEncoder", "inputs": {}},
        "4": {
            "class_type": "HistEncStoryboard",
            "inputs": {"clip": ["3", 0], "storyboard": "0:00 a harbour\n0:02 fog", "global_prompt": ""},
        },
        "5": {"class_type": "HistEncTestConditioning", "inputs": {"text": "low quality"}},
        "6": {
            "class_type": "HistEncInitHistoryEncoder",
            "inputs": {"model": ["2", 0], "rate": "2x2x2", "variant": "full", "seed": 0},
        },
        "7": {"class_type": "HistEncHistoryEncoderContext", "inputs": {"encoder": ["6", 0], "window_frames": 1}},
        "8": {
            "class_type": "HistEncLongVideoSampler",
            "inputs": {
                "model": ["2", 0],
                "storyboard": ["4", 0],
                "negative": ["5", 0],
                "seconds": 4.0,
                "fps": 8.0,
                "section_frames": 3,
                "width": 32,
                "height": 32,
                "seed": 3,
                "steps": 2,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "continuation_frames": 1,
                "job_name": "",
                "context": ["7", 0],
            },
        },
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["8", 1]}},
    }
    entry = host.run(prompt, timeout=300)
    # 4 s at 8 fps: 32 frames -> 9 latent frames in sections of 3. 32 px is 4x4 latent pixels (x8 VAE): the
    # last section's 6 history frames are 3 encoder tokens (2 frames x 4x4 pixels each), plus 2x2 cells of the
    # one-frame window: 7 tokens
    assert entry["outputs"]["9"]["text"] == [
        "3 of 3 sections done (9 of 9 latent frames), 0:04 of 0:04 of video, context up to 7 tokens per section."
    ]
