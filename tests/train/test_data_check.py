"""The data check before training (``llava/train/data_check.py``): each problem kind on real files, the
``--bad_samples`` policy, the visual-token bound, and that ``train()`` runs it before the model loads."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from llava.train.args import parse_args
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.train.data import DataError, LazySupervisedDataset
from llava.train.data_check import (
    CheckSettings,
    VisualTokenBound,
    check_image,
    check_samples,
    check_training_data,
    excluded_samples,
    first_answer_bound,
)
from llava.train.model_setup import load_tokenizer
from llava.train.preprocess import conversation_for_version, move_image_to_front, preprocess

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = REPO / "playground" / "data" / "train_tiny"
V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
#: CLIP ViT-L/14-336, "pad", no reduction: exactly 576 visual tokens per image
PAD_BOUND = VisualTokenBound(patches_per_side=24, tile_size=336)


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return load_tokenizer(str(tiny_checkpoint), model_max_length=2048, padding_side="right")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Real files: a PNG, the same PNG cut in half, one with a flipped byte in its pixel data, a text file."""
    folder = tmp_path_factory.mktemp("check-images")
    Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / "ok.png")
    data = (folder / "ok.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    idat = data.index(b"IDAT")
    corrupt[idat + 8] ^= 0xFF  # inside the compressed pixels: only the chunk checksum tells
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "notes.png").write_text("not an image")
    return folder


def chat(question: str = "What is this?", answer: str = "A red square.") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def settings(image_folder, max_len: int = 2048, bound: VisualTokenBound | None = PAD_BOUND) -> CheckSettings:
    return CheckSettings(template=conversation_for_version("v1"), model_max_length=max_len,
                         image_folder=str(image_folder), visual_tokens=bound)


def test_image_header_check_on_real_files(image_folder):
    assert check_image(image_folder / "ok.png") == ((64, 48), None)
    for name, says in (("truncated.png", "Truncated"), ("corrupt.png", "broken PNG"),
                       ("notes.png", "cannot identify")):
        size, why = check_image(image_folder / name)
        assert size is None and str(image_folder / name) in why and says in why, why
    size, why = check_image(image_folder / "absent.png")
    assert size is None and why == f"image file {image_folder / 'absent.png'} does not exist"


#: (sample, reason fragment, unsupervised) for every problem kind; "fine" samples have no problem
PROBLEM_CASES = [
    ({"id": "good", "image": "ok.png", "conversations": chat("<image>\nWhat is this?")}, None, False),
    ({"id": "text", "conversations": chat()}, None, False),
    ({"id": "lost", "image": "absent.png", "conversations": chat("<image>\nWhat?")}, "does not exist", False),
    ({"id": "half", "image": "truncated.png", "conversations": chat("<image>\nWhat?")}, "Truncated File", False),
    ({"id": "flip", "image": "corrupt.png", "conversations": chat("<image>\nWhat?")}, "broken PNG file", False),
    ({"id": "tag", "conversations": chat("<image>\nWhat?")}, "mentions <image> but the sample has no 'image'", False),
    ({"id": "untagged", "image": "ok.png", "conversations": chat()}, "has an 'image' but no <image>", False),
    ({"id": "twice", "image": "ok.png", "conversations": chat("<image>\nWhat?", "It is <image>.")},
     "<image> appears in 2 turns", False),
    ({"id": "mute", "conversations": [{"from": "human", "value": "Hello?"}]}, "no assistant ('gpt') turn", True),
    ({"id": "order", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                       {"from": "gpt", "value": "c"}]}, "cannot be rendered", True),
]


def test_each_problem_kind_is_found(tokenizer, image_folder):
    samples = [case[0] for case in PROBLEM_CASES]
    problems = {p.sample_id: p for p in check_samples(samples, range(len(samples)), tokenizer, settings(image_folder))}
    for index, (sample, reason, unsupervised) in enumerate(PROBLEM_CASES):
        if reason is None:
            assert sample["id"] not in problems
            continue
        problem = problems[sample["id"]]
        assert problem.index == index and reason in problem.reason and problem.unsupervised == unsupervised, problem


def test_answer_truncated_away_by_the_image_tokens(tokenizer, image_folder):
    """An image sample's first answer token comes after BOS and the image: with 576 visual tokens per image it sits
    at position >= 1 + 576 = 577, so a limit of 577 cuts every answer off; 200 more positions leave room for this
    short prompt. The same text without an image fits either way."""
    samples = [{"id": "img", "image": "ok.png", "conversations": chat("<image>\nWhat is this?")},
               {"id": "txt", "conversations": chat()}]
    tight = check_samples(samples, [0, 1], tokenizer, settings(image_folder, max_len=577))
    assert [(p.sample_id, p.unsupervised) for p in tight] == [("img", True)]
    assert "truncated away" in tight[0].reason and "with 576 tokens per image" in tight[0].reason
    assert check_samples(samples, [0, 1], tokenizer, settings(image_folder, max_len=577 + 200)) == []
    # a long question alone pushes the answer past a text limit too
    long_question = {"id": "long", "conversations": chat(" ".join(["word"] * 300))}
    assert [p.sample_id for p in check_samples([long_question], [0], tokenizer, settings(image_folder, 100))] == [
        "long"]


def test_a_reduction_refuses_only_what_is_lost_whatever_it_keeps(tokenizer, image_folder):
    """At --model_max_length 256 an unreduced image (576 tokens) leaves no room for the answer. Adaptive PruMerge
    may keep as little as its extra token, so the sample is not refused; a fixed budget of 144 (PruMerge+: 144
    centres + 1) still fits; a budget of 250 does not."""
    samples = [{"id": "img", "image": "ok.png", "conversations": chat("<image>\nWhat is this?")}]
    adaptive = VisualTokenBound(24, 336, reduction="prumerge")
    assert [p.sample_id for p in check_samples(samples, [0], tokenizer, settings(image_folder, 256))] == ["img"]
    assert check_samples(samples, [0], tokenizer, settings(image_folder, 256, adaptive)) == []
    fixed = VisualTokenBound(24, 336, reduction="prumerge+", budget=144)
    assert check_samples(samples, [0], tokenizer, settings(image_folder, 256, fixed)) == []
    big = VisualTokenBound(24, 336, reduction="prumerge", budget=250)
    tight = check_samples(samples, [0], tokenizer, settings(image_folder, 256, big))
    assert [p.sample_id for p in tight] == ["img"] and "with 251 tokens per image" in tight[0].reason


def test_the_byte_bound_is_never_below_the_real_first_answer_position(tokenizer):
    """``first_answer_bound`` lets the check skip tokenizing: it must hold for any text. Oracle: the position of the
    first label the dataset's own tokenization gives (images counted at 577)."""
    questions = ["What is this?", "naïve café, 你好, 🙂 and ünïcödé", "1234567890 " * 20,
                 "a  b   c    d\n\n\te", "literal </s> and <s> and [INST]", "<image>\nDescribe it.", "x"]
    for version in ("v1", "llama_2", "mpt", "plain"):
        template = conversation_for_version(version)
        for question in questions:
            turns = chat(question if version != "plain" else "<image>\n" + question)
            if "<image>" in turns[0]["value"]:
                turns = move_image_to_front(turns)
            tokens = preprocess(turns, tokenizer, template)
            first = int((tokens.labels != IGNORE_INDEX).nonzero()[0])
            images = int((tokens.input_ids[:first] == IMAGE_TOKEN_INDEX).sum())
            assert first_answer_bound(turns, template, 577) >= first + images * 576, (version, question)


def test_samples_after_the_first_good_one_are_bounded_not_tokenized(tokenizer, image_folder, monkeypatch):
    """Once a sample is seen to have a supervised token, a sample is tokenized only when the byte bound does not
    place its answer within the limit; truncation is still found then."""
    import llava.train.data_check as data_check

    calls = []
    real = data_check.preprocess
    monkeypatch.setattr(data_check, "preprocess", lambda turns, *a, **k: calls.append(turns) or real(turns, *a, **k))
    samples = [{"id": "txt", "conversations": chat()},
               {"id": "img", "image": "ok.png", "conversations": chat("<image>\nWhat is this?")},
               {"id": "txt2", "conversations": chat("Short?")}]
    assert check_samples(samples, [0, 1, 2], tokenizer, settings(image_folder, max_len=2048)) == []
    assert len(calls) == 1  # only the first
    calls.clear()
    tight = check_samples(samples, [0, 1, 2], tokenizer, settings(image_folder, max_len=577))
    assert [p.sample_id for p in tight] == ["img"] and "truncated away" in tight[0].reason
    assert len(calls) == 2  # the first, and the image sample the bound could not clear


def test_visual_token_bound_by_hand():
    assert PAD_BOUND.fewest((640, 480)) == PAD_BOUND.most((640, 480)) == 576  # no reduction: exact
    adaptive = VisualTokenBound(24, 336, reduction="prumerge")
    assert (adaptive.fewest((640, 480)), adaptive.most((640, 480))) == (1, 577)  # the extra token .. every patch
    assert VisualTokenBound(24, 336, reduction="prumerge+", budget=160).fewest(None) == 80 + 82 + 1  # the plan
    assert VisualTokenBound(24, 336, reduction="prumerge", cls_kept=True, budget=64).fewest(None) == 64 + 1 + 1
    anyres = VisualTokenBound(24, 336, grid_pinpoints=V16_PINPOINTS, unpad=True)
    # 900x900 -> 672x672: 2x2 grid + base; nothing to unpad: 48 rows of 48 patches + a newline each
    assert anyres.fewest((900, 900)) == anyres.most((900, 900)) == 576 + 48 * 49 == 5 * 576 + 48
    # 500x300 -> 672x336 (2x1): the 24x48 grid keeps 40 of its 48 columns (what the model reads, see
    # request_limits); the bound counts every patch
    assert anyres.fewest((500, 300)) == 576 + 24 * 41 == 1560 and anyres.most((500, 300)) == 3 * 576 + 24
    # 1200x300 -> 1008x336: 3x1 tiles + base = 4 tiles; one grid row of tiles = 24 newlines
    reduced = VisualTokenBound(24, 336, reduction="prumerge", budget=320, grid_pinpoints=V16_PINPOINTS, unpad=True)
    assert reduced.most((1200, 300)) == 4 * 577 + 24
    assert reduced.fewest((1200, 300)) == 80 + 1  # the base tile's share and its extra token
    flat = VisualTokenBound(24, 336, grid_pinpoints=V16_PINPOINTS)
    assert flat.fewest((900, 900)) == flat.most((900, 900)) == 5 * 576
    # "pad" images with a spatial_unpad model: a one-tile batch is laid out flat (llava_arch), no newline
    lone = VisualTokenBound(24, 336, unpad=True)
    assert lone.fewest((64, 64)) == lone.most((64, 64)) == 576


def write_data(tmp_path, samples) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(samples))
    return path


def test_error_policy_lists_file_index_id_and_the_count(tokenizer, image_folder, tmp_path):
    path = write_data(tmp_path, [case[0] for case in PROBLEM_CASES])
    with pytest.raises(DataError) as err:
        check_training_data(str(path), tokenizer, settings(image_folder), "error")
    text = str(err.value)
    assert f"8 of the 10 samples of {path} cannot train" in text and "--bad_samples skip" in text
    assert f"{path}:2:'lost': image file {image_folder / 'absent.png'} does not exist" in text
    assert f"{path}:9:'order': the conversation cannot be rendered" in text


def test_skip_policy_removes_the_samples_from_the_dataset(tokenizer, image_folder, tiny_clip, tmp_path, caplog):
    from transformers import AutoImageProcessor

    from llava.train.args import DataArguments

    path = write_data(tmp_path, [case[0] for case in PROBLEM_CASES])
    with caplog.at_level(logging.WARNING, logger="llava.train"):
        samples, excluded = check_training_data(str(path), tokenizer, settings(image_folder), "skip")
    assert excluded == set(range(2, 10))
    assert "leaving out 8 of the 10 samples" in caplog.text

    data_args = DataArguments(data_path=str(path), image_folder=str(image_folder), image_aspect_ratio="pad",
                              is_multimodal=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llava.train"):
        dataset = LazySupervisedDataset(str(path), tokenizer, data_args, template=conversation_for_version("v1"),
                                        image_processor=AutoImageProcessor.from_pretrained(str(tiny_clip),
                                                                                           backend="pil"),
                                        samples=samples, exclude=excluded)
    assert [s["id"] for s in dataset.samples] == ["good", "text"] and dataset.indices == [0, 1]
    assert "8 of 10 samples left out" in caplog.text
    assert dataset[0]["image"].shape == (3, 336, 336)


def test_a_data_set_without_any_supervised_token_is_an_error_with_either_policy(tokenizer, image_folder, tmp_path):
    samples = [{"id": "a", "conversations": [{"from": "human", "value": "Hello?"}]},
               {"id": "b", "image": "ok.png", "conversations": chat("<image>\nWhat is this?")}]
    path = write_data(tmp_path, samples)
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match="no sample of .* has a supervised token .* loss 0"):
            check_training_data(str(path), tokenizer, settings(image_folder, max_len=300), policy)
    with pytest.raises(DataError, match="holds no samples"):
        excluded_samples([], 0, "empty.json", "skip")


def test_bad_samples_flag(tmp_path):
    base = ["--output_dir", str(tmp_path), "--use_cpu", "True", "--report_to", "none"]
    assert parse_args(base)[1].bad_samples == "error"
    assert parse_args(base + ["--bad_samples", "skip"])[1].bad_samples == "skip"
    with pytest.raises(ValueError, match="--bad_samples must be one of"):
        parse_args(base + ["--bad_samples", "ignore"])


# ---------------------------------------------------------------------------------------------- in train()
def train_argv(tiny_root, data: Path, folder: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(tiny_root / "llava-v1.5-tiny"), "--version", "v1",
            "--vision_tower", str(tiny_root / "clip-vit-tiny-patch14-336"), "--mm_projector_type", "mlp2x_gelu",
            "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad",
            "--data_path", str(data), "--image_folder", str(folder), "--output_dir", str(out),
            "--max_steps", "1", "--per_device_train_batch_size", "2", "--token-budget", "16",
            "--model_max_length", "1024",
            "--save_strategy", "no", "--report_to", "none", "--use_cpu", "True", *extra]


def test_train_checks_the_data_before_the_model_loads(tiny_root, tmp_path, monkeypatch):
    import llava.train.train as train_module

    samples = json.loads((TINY_DATA / "llava_tiny_finetune.json").read_text())
    samples[3]["image"] = "images/gone.png"
    path = write_data(tmp_path, samples)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data check")

    monkeypatch.setattr(train_module, "build_model_and_tokenizer", no_model)
    with pytest.raises(DataError, match=rf"{path}:3:'tiny-3': image file .*gone.png does not exist"):
        train_module.train(argv=train_argv(tiny_root, path, TINY_DATA, tmp_path / "out"))


def test_train_skips_bad_samples_when_asked(tiny_root, image_folder, tmp_path):
    from llava.train.train import train

    folder = tmp_path / "images-folder"
    shutil.copytree(TINY_DATA, folder)
    shutil.copy(image_folder / "truncated.png", folder / "images" / "truncated.png")
    samples = json.loads((TINY_DATA / "llava_tiny_finetune.json").read_text())
    samples[0]["image"] = "images/truncated.png"
    path = write_data(tmp_path, samples)
    trainer = train(argv=train_argv(tiny_root, path, folder, tmp_path / "out", "--bad_samples", "skip",
                                    "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8"))
    dataset = trainer.train_dataset
    assert len(dataset) == len(samples) - 1 and 0 not in dataset.indices
    assert trainer.state.global_step == 1
