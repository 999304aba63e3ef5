"""Bad input through the real server, as one table: each row is a prompt (API format) and what the user must get.

A refused row must answer with its one sentence (a regex, searched) and never succeed: either POST /prompt answers
400 with exactly one error on the row's node (``when="queue"``: the node's ``validate_inputs``), or the prompt runs
and stops at the row's node with a ValueError carrying the sentence (``when="run"``); ``when="any"`` takes either,
for inputs a newer host checks itself before the run (a file combo on ComfyUI 0.33). No raw Python error, no
traceback text, one line. A row with ``check`` instead of a sentence must run and pass the check (the behaviour).

To add a case: append a ``Row`` to ``ROWS``, building its prompt from tests/e2e/prompt_pieces.py (``wan``, ``wan_vae``,
``latent48`` ..., ``preview`` to give it an output). Files a row needs in ComfyUI's input folder go in ``INPUT_FILES``.
Every row runs on the one session server (tests/conftest.py ``host``), so the table stays a few seconds long.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from histenc.train.dataset import ANY_FOLDER_ENV
from histenc.train.procedural import generate, write_image_sequence
from scripts.host import output_files
from tests.e2e.prompt_pieces import (
    WAN21,
    conditioning,
    dataset_node,
    encoder,
    latent48,
    long_video,
    merge,
    node,
    preview,
    sliding_window,
    text_encoder,
    train_history,
    train_lora,
    wan,
    wan_vae,
)
from tests.e2e.test_e2e_storyboard_bad_input import post_prompt
from tests.helpers import frame_count

RAW = re.compile(r"Traceback|Error:|KeyError|IndexError|TypeError|RuntimeError|invalid literal|size of tensor")


# --- the table ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    id: str
    prompt: dict
    node: str  # the node whose sentence it is
    sentence: str | None = None  # a regex the one sentence must match (re.search); None: the row must run
    when: str = "run"  # "queue" (400 from validate_inputs), "run" (the node raises), "any"
    check: Callable[[dict, object], None] | None = field(default=None, compare=False)  # (history entry, host)
    confined: bool = False  # needs the server's folder confinement (skipped when it runs with the opt-in)


def report_names_only_media(entry: dict, host) -> None:
    report = entry["outputs"]["99"]["text"][0]
    assert report.startswith("1 clip(s) encoded, 0 reused from the cache, 0 skipped, 2 other file(s) ignored"), report
    assert "id_rsa" not in report and "passwords" not in report, report
    index = re.search(r"index: (\S+)", report).group(1)
    assert index.startswith(str(host.base / "models" / "histenc_datasets")), index  # where /view serves nothing


def streamed_video_leaves_no_file(entry: dict, host) -> None:
    videos = [p for p in output_files(entry, host.base) if p.suffix == ".mp4"]
    assert len(videos) == 1 and frame_count(videos[0]) == 9, videos
    left = [p for p in (host.base / "temp").rglob("*") if p.is_file() and p.suffix == ".mp4"]
    assert not left, f"the decode left {left} behind"


def every_section_done_with_context(entry: dict, host) -> None:
    text = entry["outputs"]["99"]["text"][0]
    done = re.match(r"(\d+) of (\d+) sections done", text)
    assert done and done.group(1) == done.group(2) and int(done.group(1)) >= 3, text
    tokens = re.search(r"context up to ([\d,]+) tokens", text)
    assert tokens and int(tokens.group(1).replace(",", "")) > 0, text


def write_encoder_file(path, **wrong) -> None:
    """A history-encoder file whose metadata says ``wrong`` (refused before its tensors are read)."""
    from histenc.encoder.io import ENCODER_FORMAT
    from histenc.encoder.model import EncoderConfig
    from histenc.weights import save_weights

    meta = {"format": ENCODER_FORMAT, "version": 1, "family": "wan2.1", **EncoderConfig(width=128).to_meta(), **wrong}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, {"lr_embed.weight": torch.zeros(1)}, meta)


ENCODER_FILES = {"table_hidden.safetensors": {"hidden": []}, "table_heads.safetensors": {"heads": 0}}

INPUT_FILES = {  # ComfyUI's input folder, made once for the table
    "not_a_folder.mp4": b"",
    "mixed/id_rsa": b"-----BEGIN KEY-----",
    "mixed/passwords.txt": b"hunter2",
}
MIXED_CLIP = "mixed/clip"  # a procedural image sequence written next to them

OUTSIDE = r" is outside the folders this server may read and write \(.*\); .*, or start ComfyUI with " + ANY_FOLDER_ENV

ROWS = [
    Row(
        "framepack-hunyuan weight_dtype fp4",
        merge(
            node("10", "HistEncLoadFramePackHunyuan", checkpoint=WAN21, weight_dtype="fp4", save_projections_as=""),
            preview("10"),
        ),
        "10",
        r"^weight_dtype - weight_dtype 'fp4' is not one of its options \('default', 'fp8_e4m3fn', ",
        when="queue",
    ),
    Row(
        "framepack-hunyuan missing checkpoint",
        merge(
            node(
                "10",
                "HistEncLoadFramePackHunyuan",
                checkpoint="gone.safetensors",
                weight_dtype="default",
                save_projections_as="",
            ),
            preview("10"),
        ),
        "10",
        r"checkpoint:? 'gone.safetensors' (is not one of its options|not in)",  # 0.33 checks file combos itself
        when="any",
    ),
    Row(
        "block swap abc",
        merge(
            wan(), node("10", "HistEncBlockSwap", model=["1", 0], blocks_to_swap="abc", prefetch=False), preview("10")
        ),
        "10",
        r"^blocks_to_swap - blocks_to_swap 'abc' is not one of its options \('auto', '0', ",
        when="queue",
    ),
    Row(
        "train lora blocks",
        merge(wan(), train_lora(blocks="first"), preview("10", 2)),
        "10",
        r"^blocks - blocks 'first' is not one of its options \('all', 'latter_half', 'list'\); pick one",
        when="queue",
    ),
    Row(
        "train lora dataset outside",
        merge(wan(), train_lora(dataset="/etc"), preview("10", 2)),
        "10",
        r"^dataset /etc" + OUTSIDE,
        confined=True,
    ),
    Row(
        "pretrain dataset outside",
        merge(wan(), encoder(), train_history("HistEncPretrainHistoryEncoder", dataset="/etc"), preview("10", 3)),
        "10",
        r"^dataset /etc" + OUTSIDE,
        confined=True,
    ),
    Row(
        "video dataset folder outside",
        merge(wan_vae(), text_encoder(), dataset_node("/etc"), preview("10", 1)),
        "10",
        r"^dataset folder /etc" + OUTSIDE,
        confined=True,
    ),
    Row(
        "video dataset folder dot-dot",
        merge(wan_vae(), text_encoder(), dataset_node("../.."), preview("10", 1)),
        "10",
        r"^dataset folder \S+/input/\.\./\.\." + OUTSIDE,
        confined=True,
    ),
    Row(
        "video dataset folder is a file",
        merge(wan_vae(), text_encoder(), dataset_node("not_a_folder.mp4"), preview("10", 1)),
        "10",
        r"^dataset folder \S+/not_a_folder.mp4 is a file, not a folder; give the folder that holds your clips",
    ),
    Row(
        "video dataset cache outside",
        merge(wan_vae(), text_encoder(), dataset_node("mixed", "/tmp/histenc_cache"), preview("10", 1)),
        "10",
        r"^cache_folder /tmp/histenc_cache" + OUTSIDE,
        confined=True,
    ),
    Row(
        "video dataset cache under output",
        merge(wan_vae(), text_encoder(), dataset_node("mixed", "../../output/cache"), preview("10", 1)),
        "10",
        r"^cache_folder \S+/output/cache" + OUTSIDE,
        confined=True,
    ),
    Row(
        "video dataset report names only media",
        merge(wan_vae(), text_encoder(), dataset_node("mixed"), preview("10", 1)),
        "10",
        check=report_names_only_media,
    ),
    Row(
        "apply context wan22 latent",
        merge(
            wan(),
            wan_vae(),
            latent48(),
            sliding_window(),
            node("10", "HistEncApplyContext", model=["1", 0], context=["6", 0], history=["5", 0]),
            preview("10"),
        ),
        "10",
        r"^history has 48 latent channels but the model expects 16; use a latent made by this model family's VAE",
    ),
    Row(
        "decode wan22 latent",
        merge(
            wan_vae(),
            latent48(),
            node("10", "HistEncDecodeLongVideo", vae=["2", 0], latent=["5", 0], chunk_frames=8, warmup_frames=2),
            preview("10"),
        ),
        "10",
        r"^latent has 48 channels but this VAE decodes 16; connect the VAE of the model that made the latent",
    ),
    Row(
        "decode to video wan22 latent",
        merge(
            wan_vae(),
            latent48(),
            node(
                "10",
                "HistEncDecodeLongVideoToVideo",
                vae=["2", 0],
                latent=["5", 0],
                fps=16.0,
                chunk_frames=8,
                warmup_frames=2,
                crf=19,
            ),
            preview("10"),
        ),
        "10",
        r"^latent has 48 channels but this VAE decodes 16",
    ),
    Row(
        "decode to video leaves no temp file",
        merge(
            wan_vae(),
            node("5", "EmptyHunyuanLatentVideo", width=32, height=32, length=9, batch_size=1),
            node(
                "10",
                "HistEncDecodeLongVideoToVideo",
                vae=["2", 0],
                latent=["5", 0],
                fps=16.0,
                chunk_frames=1,
                warmup_frames=0,
                crf=23,
            ),
            node("11", "SaveVideo", video=["10", 0], filename_prefix="histenc/table", format="mp4", codec="h264"),
        ),
        "10",
        check=streamed_video_leaves_no_file,
    ),
    Row(
        "pretrain wan22 latent",
        merge(
            wan(),
            wan_vae(),
            latent48(),
            conditioning(),
            encoder(),
            train_history("HistEncPretrainHistoryEncoder", latent=["5", 0], positive=["4", 0]),
            preview("10", 3),
        ),
        "10",
        r"^latent has 48 latent channels but the model expects 16",
    ),
    Row(
        "finetune autoregressive wan22 latent",
        merge(
            wan(),
            wan_vae(),
            latent48(),
            conditioning(),
            encoder(),
            train_history("HistEncFinetuneAutoregressive", latent=["5", 0], positive=["4", 0]),
            preview("10", 3),
        ),
        "10",
        r"^latent has 48 latent channels but the model expects 16",
    ),
    Row("long video cfg nan", long_video(cfg=float("nan")), "5", r"^cfg is nan; give a finite guidance scale"),
    Row(
        "long video seconds nan",
        long_video(seconds=float("nan")),
        "5",
        r"^total seconds must be a positive number, got nan",
    ),
    Row("long video fps nan", long_video(fps=float("nan")), "5", r"^fps must be a positive number, got nan"),
    Row(
        "long video job name 300 characters",
        long_video(job_name="x" * 300),
        "5",
        r"^job name 'x{57}\.\.\.' is 300 characters long; use at most \d+; use a plain name",
        when="any",
    ),
    Row(
        "long video job name NUL",
        long_video(job_name="a\x00b"),
        "5",
        r"^job name 'a\\x00b' contains a control",
        when="any",
    ),
    Row(
        "long video job name a/../../x",
        long_video(job_name="a/../../x"),
        "5",
        r"contains a slash, backslash or colon",
        when="any",
    ),
    Row(
        "long video job name D:evil",
        long_video(job_name="D:evil"),
        "5",
        r"^job name 'D:evil' contains a slash, backslash or colon",
        when="any",
    ),
    Row(
        "history encoder file hidden []",
        merge(
            wan(),
            node("10", "HistEncLoadHistoryEncoder", model=["1", 0], encoder_name="table_hidden.safetensors"),
            preview("10"),
        ),
        "10",
        r"^weights file table_hidden.safetensors is not a usable history encoder: "
        r"encoder hidden is \[\]; use channel counts",
    ),
    Row(
        "history encoder file heads 0",
        merge(
            wan(),
            node("10", "HistEncLoadHistoryEncoder", model=["1", 0], encoder_name="table_heads.safetensors"),
            preview("10"),
        ),
        "10",
        r"^weights file table_heads.safetensors is not a usable history encoder: encoder heads is 0; use a head count",
    ),
    Row(
        "4x4x2 encoder with 1-frame sections",
        merge(
            long_video(context=["8", 0], seconds=3.0),
            encoder(),
            node("8", "HistEncHistoryEncoderContext", encoder=["7", 0], window_frames=0),
        ),
        "5",
        check=every_section_done_with_context,
    ),
]


# --- running a row --------------------------------------------------------------------------------------------
def one_sentence(text: str) -> None:
    text = text.strip()  # the host ends an exception message with a newline
    assert "\n" not in text and text.endswith("."), text
    assert not RAW.search(text), f"a raw Python error reached the user: {text}"


@pytest.fixture(scope="module")
def input_files(host):
    for name, data in INPUT_FILES.items():
        path = host.base / "input" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    write_image_sequence(generate(0, frames=20, size=64, objects=1), host.base / "input" / MIXED_CLIP)
    for name, wrong in ENCODER_FILES.items():
        write_encoder_file(host.base / "models" / "history_encoders" / name, **wrong)
    return host.base / "input"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_table(host, input_files, row):
    if row.confined and os.environ.get(ANY_FOLDER_ENV, "").strip() == "1":
        pytest.skip(f"the server runs with {ANY_FOLDER_ENV}=1, which lets it use any folder")
    status, answer = post_prompt(host, row.prompt)
    if row.sentence is None:
        assert status == 200, answer
        entry = host.wait(answer["prompt_id"], timeout=300)
        assert entry["status"]["status_str"] == "success", entry["status"]
        row.check(entry, host)
        return
    if status == 400:
        assert row.when in ("queue", "any"), f"refused before the run, expected while running: {answer}"
        errors = answer["node_errors"][row.node]["errors"]
        assert len(errors) == 1, errors  # once, not once per input of validate_inputs
        details = errors[0]["details"]
        assert re.search(row.sentence, details), details
        if errors[0]["type"] == "custom_validation_failed":
            one_sentence(details)
        return
    assert status == 200 and row.when in ("run", "any"), answer
    entry = host.wait(answer["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "error", f"the bad input ran to success: {entry['status']}"
    failures = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert len(failures) == 1 and failures[0]["node_id"] == row.node, failures
    assert failures[0]["exception_type"] == "ValueError", failures[0]["exception_type"]
    message = failures[0]["exception_message"]
    assert re.search(row.sentence, message), message
    one_sentence(message)
