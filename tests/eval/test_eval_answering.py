"""model_vqa / model_vqa_loader on the tiny checkpoint: answer files, visual-token metadata, sharding, batching,
and the errors a user's mistake gives (file:line, image + question_id, no half-written answers)."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from PIL import Image

from llava.eval import model_vqa, model_vqa_loader

N_PATCHES = 576  # CLIP ViT-L/14-336 geometry: the tiny tower keeps it


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def vqa_data(tmp_path_factory):
    """3 questions on 3 different images (different sizes and contents, so PruMerge keeps different counts)."""
    root = tmp_path_factory.mktemp("vqa")
    images = root / "images"
    images.mkdir()
    looks = [((40, 30), (200, 10, 10)), ((47, 33), (10, 200, 10)), ((54, 36), (10, 10, 200))]
    for i, (size, colour) in enumerate(looks):
        image = Image.new("RGB", size, colour)
        image.paste((250, 250, 0), (5 + 3 * i, 4, 20 + 5 * i, 18))
        image.save(images / f"{i}.png")
    questions = root / "questions.jsonl"
    texts = ["What color is this?", "Describe the image in detail.", "Is there a cat?"]
    questions.write_text("".join(json.dumps({"question_id": i + 1, "image": f"{i}.png", "text": t}) + "\n"
                                 for i, t in enumerate(texts)))
    return root


def _args(ckpt, data, answers, *extra):
    return ["--model-path", str(ckpt), "--question-file", str(data / "questions.jsonl"),
            "--image-folder", str(data / "images"), "--answers-file", str(answers), "--temperature", "0",
            "--max_new_tokens", "5", "--device", "cpu", "--conv-mode", "vicuna_v1", *extra]


@pytest.fixture(scope="module")
def prumerge_run(tiny_checkpoint, vqa_data):
    """One full model_vqa run (default PruMerge); the log records of the run are kept for the logging test."""
    answers = vqa_data / "out" / "answers.jsonl"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        assert model_vqa.main(_args(tiny_checkpoint, vqa_data, answers)) == 0
    finally:
        logging.getLogger().removeHandler(handler)
    return _read(answers), records


def test_model_vqa_writes_upstream_fields_and_visual_tokens(prumerge_run, tiny_loaded, vqa_data):
    rows, _ = prumerge_run
    assert [r["question_id"] for r in rows] == [1, 2, 3]
    assert [r["prompt"] for r in rows] == ["What color is this?", "Describe the image in detail.", "Is there a cat?"]
    for row in rows:
        assert list(row) == ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
        assert isinstance(row["text"], str)
        assert row["model_id"] == "llava-v1.5-tiny"
        assert isinstance(row["answer_id"], str) and len(row["answer_id"]) == 22  # shortuuid
        assert row["metadata"]["token_reduction"] == "prumerge"
        (count,) = row["metadata"]["visual_tokens"]
        assert 1 <= count < N_PATCHES
    assert len({r["answer_id"] for r in rows}) == 3
    # the count is what the tower itself gives that image
    _, model, image_processor, _ = tiny_loaded
    from llava.mm_utils import process_images

    for i, row in enumerate(rows):
        pixels = process_images([Image.open(vqa_data / "images" / f"{i}.png").convert("RGB")], image_processor,
                                model.config)
        with torch.no_grad():
            (features,) = model.get_vision_tower()(pixels)
        assert row["metadata"]["visual_tokens"] == [features.shape[0]]


def test_model_vqa_logs_the_mode_once(prumerge_run):
    _, records = prumerge_run
    messages = [r.getMessage() for r in records if "token reduction:" in r.getMessage()]
    assert len(messages) == 1 and "prumerge" in messages[0]


def test_token_reduction_none_keeps_all_576(tiny_checkpoint, vqa_data):
    answers = vqa_data / "out" / "none.jsonl"
    assert model_vqa.main(_args(tiny_checkpoint, vqa_data, answers, "--token-reduction", "none",
                                "--max_new_tokens", "1")) == 0
    rows = _read(answers)
    assert [r["metadata"] for r in rows] == [{"visual_tokens": [N_PATCHES], "token_reduction": "none"}] * 3


def test_two_chunks_merge_back_to_the_full_run(prumerge_run, tiny_checkpoint, vqa_data):
    full, _ = prumerge_run
    merged = []
    for idx in (0, 1):
        answers = vqa_data / "out" / f"2_{idx}.jsonl"
        assert model_vqa.main(_args(tiny_checkpoint, vqa_data, answers, "--num-chunks", "2",
                                    "--chunk-idx", str(idx))) == 0
        merged.append(_read(answers))
    assert [[r["question_id"] for r in chunk] for chunk in merged] == [[1, 2], [3]]  # ceil(3 / 2) = 2 per chunk
    flat = merged[0] + merged[1]
    assert [(r["question_id"], r["text"], r["metadata"]) for r in flat] == \
        [(r["question_id"], r["text"], r["metadata"]) for r in full]


def test_loader_batch_of_two_equals_one_at_a_time(prumerge_run, tiny_checkpoint, vqa_data):
    full, _ = prumerge_run
    runs = {}
    for batch_size in ("1", "2"):
        answers = vqa_data / "out" / f"loader_bs{batch_size}.jsonl"
        assert model_vqa_loader.main(_args(tiny_checkpoint, vqa_data, answers, "--batch-size", batch_size,
                                           "--num-workers", "0")) == 0
        runs[batch_size] = [(r["question_id"], r["prompt"], r["text"], r["metadata"]) for r in _read(answers)]
    assert runs["2"] == runs["1"]
    # different visual-token counts in one batch: the left padding really was exercised
    assert len({m["visual_tokens"][0] for *_, m in runs["2"][:2]}) == 2
    assert runs["1"] == [(r["question_id"], r["prompt"], r["text"], r["metadata"]) for r in full]


def test_chunks_use_upstreams_ceil_rule():
    from llava.eval._io import get_chunk, split_list

    assert split_list(list(range(5)), 4) == [[0, 1], [2, 3], [4]]  # ceil(5 / 4) = 2 per chunk: only 3 chunks
    assert [get_chunk(list(range(5)), 4, k) for k in range(4)] == [[0, 1], [2, 3], [4], []]  # upstream: IndexError
    assert [get_chunk(list(range(7)), 3, k) for k in range(3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert get_chunk([], 2, 1) == []
    with pytest.raises(ValueError, match="--chunk-idx must be in"):
        get_chunk([1, 2], 2, 2)


# --- a user's mistakes --------------------------------------------------------------------------------------------


def test_bad_question_line_names_file_and_line(tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "image": "a.png", "text": "hi"}\n{"question_id": 2, "image": \n')
    argv = ["--model-path", str(tmp_path / "never-loaded"), "--question-file", str(questions),
            "--answers-file", str(tmp_path / "a.jsonl")]
    with pytest.raises(ValueError, match=re.escape(f"{questions}:2:")):
        model_vqa.eval_model(model_vqa.build_parser().parse_args(argv))
    assert model_vqa_loader.main(argv) == 2
    assert f"{questions}:2:" in capsys.readouterr().err
    questions.write_text('{"question_id": 1, "text": "hi"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{questions}:1: missing key 'image'")):
        model_vqa.eval_model(model_vqa.build_parser().parse_args(argv))
    assert not (tmp_path / "a.jsonl").exists()


def test_missing_image_names_file_and_question_id(vqa_data, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 7, "image": "0.png", "text": "a"}) + "\n"
                         + json.dumps({"question_id": "q-8", "image": "nope.png", "text": "b"}) + "\n")
    argv = ["--model-path", str(tmp_path / "never-loaded"), "--question-file", str(questions),
            "--image-folder", str(vqa_data / "images"), "--answers-file", str(tmp_path / "a.jsonl")]
    for module in (model_vqa, model_vqa_loader):
        with pytest.raises(FileNotFoundError) as info:
            module.eval_model(module.build_parser().parse_args(argv))
        message = str(info.value)
        assert str(vqa_data / "images" / "nope.png") in message and "'q-8'" in message
    assert not (tmp_path / "a.jsonl").exists()


def test_failure_midway_leaves_no_half_written_answers(tiny_checkpoint, vqa_data, tmp_path):
    """The 2nd image exists but is not an image: the run fails after answering the 1st question, which is kept in
    the one partial file (never under the answers file's name)."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes((vqa_data / "images" / "0.png").read_bytes())
    (images / "broken.png").write_bytes(b"not a png")
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "image": "good.png", "text": "a"}) + "\n"
                         + json.dumps({"question_id": 2, "image": "broken.png", "text": "b"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()

    def argv(answers):
        return ["--model-path", str(tiny_checkpoint), "--question-file", str(questions), "--image-folder",
                str(images), "--answers-file", str(answers), "--temperature", "0", "--max_new_tokens", "1",
                "--device", "cpu"]

    # no previous answers file: none afterwards
    with pytest.raises(ValueError, match=r"question_id 2: .*broken\.png"):
        model_vqa.eval_model(model_vqa.build_parser().parse_args(argv(out / "vqa.jsonl")))
    # a previous complete answers file: left as it was
    previous = out / "loader.jsonl"
    previous.write_text('{"question_id": 1, "text": "old"}\n')
    with pytest.raises(ValueError, match=r"question_id 2: .*broken\.png"):
        model_vqa_loader.eval_model(model_vqa_loader.build_parser().parse_args(
            argv(previous) + ["--num-workers", "0"]))
    # one partial file per answers file, nothing else (no pid-named temporary files piling up)
    assert sorted(p.name for p in out.iterdir()) == [".loader.jsonl.partial", ".vqa.jsonl.partial", "loader.jsonl"]
    assert previous.read_text() == '{"question_id": 1, "text": "old"}\n'
    for name in (".loader.jsonl.partial", ".vqa.jsonl.partial"):
        assert [r["question_id"] for r in _read(out / name)] == [1]
