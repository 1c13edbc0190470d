"""Resumable answers files: a run killed (SIGKILL) or stopped by a corrupt image keeps its answers in one partial
file beside the answers file; the same command with ``--resume`` answers only the rest, and the finished file is
line for line what an uninterrupted run writes. Also the checks made before the model loads (answers path,
repeated question ids, a partial file from other questions)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from llava.eval import model_vqa, model_vqa_loader, model_vqa_mmbench, model_vqa_science

REPO = Path(__file__).resolve().parents[2]
SQA = REPO / "playground" / "data" / "eval" / "scienceqa"
MMB_TSV = REPO / "playground" / "data" / "eval" / "mmbench" / "mmbench_dev_20230712.tsv"
N_QUESTIONS = 8


def _read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _compared(rows: list[dict]) -> list[tuple]:
    """What must equal an uninterrupted run's (answer_id is new per run)."""
    return [(r["question_id"], r.get("round_id"), r["prompt"], r["text"], r["metadata"]) for r in rows]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """8 questions on 8 small, different images."""
    root = tmp_path_factory.mktemp("resume")
    (root / "images").mkdir()
    for i in range(N_QUESTIONS):
        image = Image.new("RGB", (30 + 3 * i, 24 + 2 * i), (20 * i, 200 - 15 * i, 90))
        image.paste((250, 250, 0), (2 + i, 3, 12 + 2 * i, 15))
        image.save(root / "images" / f"{i}.png")
    texts = ["What color is this?", "Describe the image.", "Is there a cat?", "How many squares?",
             "What is on the left?", "Is it bright?", "Name the shape.", "What is yellow?"]
    (root / "questions.jsonl").write_text("".join(
        json.dumps({"question_id": 10 + i, "image": f"{i}.png", "text": t}) + "\n" for i, t in enumerate(texts)))
    return root


def _vqa_args(ckpt, data: Path, answers: Path, *extra: str, images: Path | None = None) -> list[str]:
    return ["--model-path", str(ckpt), "--question-file", str(data / "questions.jsonl"),
            "--image-folder", str(images or data / "images"), "--answers-file", str(answers),
            "--temperature", "0", "--max_new_tokens", "4", "--device", "cpu", "--conv-mode", "vicuna_v1", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoint, data) -> list[dict]:
    """The answers of one uninterrupted model_vqa run."""
    answers = data / "reference" / "answers.jsonl"
    assert model_vqa.main(_vqa_args(tiny_checkpoint, data, answers)) == 0
    return _read(answers)


def _resume_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("--resume:")]


def test_killed_run_resumes_to_the_uninterrupted_answers(tiny_checkpoint, data, uninterrupted, tmp_path, caplog):
    out = tmp_path / "out"
    answers, partial = out / "answers.jsonl", out / ".answers.jsonl.partial"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "llava.eval.model_vqa",
                                 *_vqa_args(tiny_checkpoint, data, answers)], stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.is_file() and partial.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed: " + (tmp_path / "stderr.txt").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _hidden(out) == [".answers.jsonl.partial"]  # no answers file, one partial file
    kept = partial.read_text().splitlines(keepends=True)
    kept = kept if kept[-1].endswith("\n") else kept[:-1]  # a line cut by the kill is answered again
    assert 2 <= len(kept) < N_QUESTIONS

    with caplog.at_level(logging.INFO):
        assert model_vqa.main(_vqa_args(tiny_checkpoint, data, answers, "--resume")) == 0
    assert _resume_messages(caplog) == [f"--resume: {len(kept)} of {N_QUESTIONS} answers are in {partial}; "
                                        f"answering the remaining {N_QUESTIONS - len(kept)}"]
    assert _hidden(out) == ["answers.jsonl"]
    final = answers.read_text().splitlines(keepends=True)
    assert final[: len(kept)] == kept  # the killed run's answers, answer_id and all: not answered again
    assert _compared(_read(answers)) == _compared(uninterrupted)


def test_corrupt_image_in_a_loader_worker_stops_the_run_and_resume_finishes_it(tiny_checkpoint, data, uninterrupted,
                                                                                 tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(N_QUESTIONS):
        (images / f"{i}.png").write_bytes((data / "images" / f"{i}.png").read_bytes())
    (images / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n but the rest is not")  # question_id 13
    out = tmp_path / "out"
    answers, partial = out / "answers.jsonl", out / ".answers.jsonl.partial"
    argv = _vqa_args(tiny_checkpoint, data, answers, images=images)
    proc = subprocess.run([sys.executable, "-m", "llava.eval.model_vqa_loader", *argv, "--num-workers", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "question_id 13: " in errors[0] and str(images / "3.png") in errors[0], proc.stderr
    assert f"stopped after 3 answers; they are kept in {partial}" in proc.stderr
    assert _hidden(out) == [".answers.jsonl.partial"]
    assert [r["question_id"] for r in _read(partial)] == [10, 11, 12]

    # as if a later run had been killed while writing question 13's answer; then the image is repaired
    kept = partial.read_text()
    with open(partial, "a") as f:
        f.write('{"question_id": 13, "prompt": "How many squa')
    (images / "3.png").write_bytes((data / "images" / "3.png").read_bytes())
    with caplog.at_level(logging.INFO):
        assert model_vqa_loader.main(argv + ["--resume", "--num-workers", "0", "--batch-size", "2"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{partial}:4: dropped an incomplete last line (the run stopped while writing it)" in warnings
    assert _resume_messages(caplog) == [f"--resume: 3 of {N_QUESTIONS} answers are in {partial}; "
                                        f"answering the remaining {N_QUESTIONS - 3}"]
    assert _hidden(out) == ["answers.jsonl"]
    assert answers.read_text().startswith(kept)
    assert _compared(_read(answers)) == _compared(uninterrupted)


def _science_argv(ckpt, answers):
    return ["--model-path", str(ckpt), "--question-file", str(SQA / "llava_test_CQM-A.json"),
            "--image-folder", str(SQA / "images" / "test"), "--answers-file", str(answers), "--single-pred-prompt",
            "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "3", "--device", "cpu"]


def _mmbench_argv(ckpt, answers):
    return ["--model-path", str(ckpt), "--question-file", str(MMB_TSV), "--answers-file", str(answers),
            "--single-pred-prompt", "--all-rounds", "--temperature", "0", "--conv-mode", "vicuna_v1",
            "--max_new_tokens", "2", "--device", "cpu"]


@pytest.mark.parametrize("module, argv, kept", [
    (model_vqa_science, _science_argv, 2),  # keyed by the sample id
    (model_vqa_mmbench, _mmbench_argv, 5),  # keyed by (question_id, round_id): stopped after round 0 of question 1
])
def test_resume_by_key(module, argv, kept, tiny_checkpoint, tmp_path, caplog):
    full = tmp_path / "full.jsonl"
    assert module.main(argv(tiny_checkpoint, full)) == 0
    reference = full.read_text().splitlines(keepends=True)
    answers = tmp_path / "out" / "answers.jsonl"
    answers.parent.mkdir()
    (answers.parent / ".answers.jsonl.partial").write_text("".join(reference[:kept]))
    with caplog.at_level(logging.INFO):
        assert module.main(argv(tiny_checkpoint, answers) + ["--resume"]) == 0
    remaining = len(reference) - kept
    assert _resume_messages(caplog)[0].endswith(f"answering the remaining {remaining}")
    final = answers.read_text().splitlines(keepends=True)
    assert final[:kept] == reference[:kept]
    assert [json.loads(line)["answer_id"] for line in final[kept:]] != \
        [json.loads(line)["answer_id"] for line in reference[kept:]]  # these were answered again
    assert _compared(_read(answers)) == _compared(_read(full))


def test_without_resume_a_partial_file_is_replaced(tiny_checkpoint, data, uninterrupted, tmp_path, caplog):
    answers = tmp_path / "answers.jsonl"
    partial = tmp_path / ".answers.jsonl.partial"
    partial.write_text(json.dumps({"question_id": 10, "prompt": "x", "text": "stale"}) + "\n")
    with caplog.at_level(logging.INFO):
        assert model_vqa.main(_vqa_args(tiny_checkpoint, data, answers, "--max_new_tokens", "1")) == 0
    assert any(f"replacing the partial answers of an earlier run in {partial}" in r.getMessage()
               for r in caplog.records)
    assert _hidden(tmp_path) == ["answers.jsonl"]
    assert [r["question_id"] for r in _read(answers)] == [10 + i for i in range(N_QUESTIONS)]
    assert "stale" not in answers.read_text()


# --- what a resume refuses ------------------------------------------------------------------------------------------


def test_resume_refuses_partial_answers_of_other_questions_or_another_model(tiny_checkpoint, data, uninterrupted,
                                                                            tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    partial = tmp_path / ".answers.jsonl.partial"
    lines = [json.dumps(r) + "\n" for r in uninterrupted]
    never_loaded = _vqa_args(tmp_path / "never-loaded", data, answers, "--resume")

    partial.write_text(lines[0] + lines[2])  # question 11 missing: not what a stopped run of these questions leaves
    assert model_vqa.main(never_loaded) == 2
    err = capsys.readouterr().err
    assert (f"{partial}:2: answer for question_id 12 where {data / 'questions.jsonl'} has question_id 11" in err
            and "delete" in err and "run without --resume" in err), err

    partial.write_text("".join(lines[:2]) + "not json\n" + lines[3])
    assert model_vqa.main(never_loaded) == 2
    assert f"{partial}:3: not an answer line" in capsys.readouterr().err

    other = dict(uninterrupted[0], model_id="llava-v1.5-13b")
    partial.write_text(json.dumps(other) + "\n")
    assert model_vqa.main(_vqa_args(tiny_checkpoint, data, answers, "--resume")) == 2
    err = capsys.readouterr().err
    assert f"{partial}:1: model_id 'llava-v1.5-13b', but this run has 'llava-v1.5-tiny'" in err, err
    assert _hidden(tmp_path) == [".answers.jsonl.partial"] and partial.read_text() == json.dumps(other) + "\n"


# --- checked before the model loads ---------------------------------------------------------------------------------


def test_answers_path_is_checked_before_the_model_loads(data, tmp_path, capsys):
    never_loaded = tmp_path / "never-loaded"
    folder = tmp_path / "a-folder.jsonl"
    folder.mkdir()
    assert model_vqa.main(_vqa_args(never_loaded, data, folder)) == 2
    assert f"error: --answers-file {folder} is a folder" in capsys.readouterr().err

    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    for module in (model_vqa, model_vqa_loader):
        assert module.main(_vqa_args(never_loaded, data, blocker / "answers.jsonl")) == 2
        err = capsys.readouterr().err
        assert f"error: --answers-file {blocker / 'answers.jsonl'}: {blocker} is not a folder" in err, err


def test_repeated_question_ids_are_named_before_the_model_loads(data, tmp_path, capsys):
    never_loaded = str(tmp_path / "never-loaded")
    answers = tmp_path / "answers.jsonl"
    questions = tmp_path / "q.jsonl"
    rows = [{"question_id": "a", "image": "0.png", "text": "x"}, {"question_id": "b", "image": "1.png", "text": "y"},
            {"question_id": "a", "image": "2.png", "text": "z"}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for module in (model_vqa, model_vqa_loader):
        argv = ["--model-path", never_loaded, "--question-file", str(questions), "--image-folder",
                str(data / "images"), "--answers-file", str(answers)]
        assert module.main(argv) == 2
        assert f"error: {questions}:3: question_id 'a' is repeated (first at {questions}:1)" in \
            capsys.readouterr().err

    samples = json.loads((SQA / "llava_test_CQM-A.json").read_text())
    science = tmp_path / "sqa.json"
    science.write_text(json.dumps(samples + [samples[0]]))
    assert model_vqa_science.main(["--model-path", never_loaded, "--question-file", str(science),
                                   "--image-folder", str(SQA / "images" / "test"), "--answers-file",
                                   str(answers)]) == 2
    assert (f"error: {science}: sample {len(samples)}: id {samples[0]['id']!r} is repeated (first at {science}: "
            "sample 0)") in capsys.readouterr().err

    table = MMB_TSV.read_text().splitlines(keepends=True)
    mmbench = tmp_path / "mmb.tsv"
    mmbench.write_text("".join(table + [table[1]]))  # the first question again, as the last line
    assert model_vqa_mmbench.main(["--model-path", never_loaded, "--question-file", str(mmbench),
                                   "--answers-file", str(answers)]) == 2
    err = capsys.readouterr().err
    assert f"error: {mmbench}:{len(table) + 1}: index 0 is repeated (first at {mmbench}:2)" in err, err
    assert not answers.exists() and not (tmp_path / ".answers.jsonl.partial").exists()
