"""Every scorer pairs answers with labels by question_id, never by position, and refuses an answers file it cannot
score (repeated, missing or extra id, no question_id, text null or not a string, no prompt, empty file) with exit
status 2 and a message naming the file, the line and the id.

The benchmarks are the committed tiny samples under playground/data/eval (read, never written); answers are written
to tmp_path and scored through each scorer's command line, in-process (one subprocess run checks the script form).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from llava.eval import eval_pope, eval_science_qa, eval_textvqa

REPO = Path(__file__).resolve().parents[2]
EVAL_DATA = REPO / "playground" / "data" / "eval"
POPE = EVAL_DATA / "pope"
SQA = EVAL_DATA / "scienceqa"
TEXTVQA = EVAL_DATA / "textvqa"


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _questions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Scorer:
    name: str
    rows: list[dict]  # a complete, valid answers file in question order
    run: Callable[[Path, Path], int]  # (answers file, tmp dir) -> exit status


def _run_pope(answers: Path, tmp: Path) -> int:
    return eval_pope.main(["--annotation-dir", str(POPE / "coco"), "--question-file",
                           str(POPE / "llava_pope_test.jsonl"), "--result-file", str(answers)])


def _run_sqa(answers: Path, tmp: Path) -> int:
    return eval_science_qa.main(["--base-dir", str(SQA), "--result-file", str(answers),
                                 "--output-file", str(tmp / "out" / "o.json"),
                                 "--output-result", str(tmp / "out" / "r.json")])


def _run_textvqa(answers: Path, tmp: Path) -> int:
    return eval_textvqa.main(["--annotation-file", str(TEXTVQA / "TextVQA_0.5.1_val.json"),
                              "--result-file", str(answers)])


def _pope_rows() -> list[dict]:
    # labels: adversarial (ids 1, 2): yes, no; random (ids 3, 4): yes, no. All answered right.
    texts = {1: "Yes, there is.", 2: "No.", 3: "Yes", 4: "There is not a dog."}
    return [{"question_id": q["question_id"], "prompt": q["text"], "text": texts[q["question_id"]],
             "answer_id": "x", "model_id": "tiny", "metadata": {}}
            for q in _questions(POPE / "llava_pope_test.jsonl")]


def _sqa_rows() -> list[dict]:
    # answers: 101 is B (right), 102 is A (given C: wrong), 103 is B (right, no image) -> 2 of 3, images 1 of 2
    return [{"question_id": "101", "prompt": "<image>\nWhich shape?", "text": "B"},
            {"question_id": "102", "prompt": "<image>\nWhich colour?", "text": "C"},
            {"question_id": "103", "prompt": "Which word is a noun?", "text": "The answer is B."}]


def _textvqa_rows() -> list[dict]:
    # "Stop" matches 7 of 10 humans -> 1.0; "2" matches 1 of 10 -> 0.3; mean 65.00%
    questions = _questions(TEXTVQA / "llava_textvqa_val_v051_ocr.jsonl")
    return [{"question_id": q["question_id"], "prompt": q["text"], "text": t} for q, t in zip(questions, ["Stop", "2"])]


SCORERS = {
    "pope": lambda: Scorer("pope", _pope_rows(), _run_pope),
    "science_qa": lambda: Scorer("science_qa", _sqa_rows(), _run_sqa),
    "textvqa": lambda: Scorer("textvqa", _textvqa_rows(), _run_textvqa),
}


# --- the same score in any order ----------------------------------------------------------------------------------


def test_pope_shuffled_answers_score_as_ordered(tmp_path, capsys):
    rows = _pope_rows()
    assert _run_pope(_write(tmp_path / "ordered.jsonl", rows), tmp_path) == 0
    ordered = capsys.readouterr().out
    # reversed: within each category the answers come in the other order (paired by position, F1 would be 0)
    assert _run_pope(_write(tmp_path / "shuffled.jsonl", rows[::-1]), tmp_path) == 0
    shuffled = capsys.readouterr().out
    assert shuffled == ordered
    # by hand: every answer right -> TP=1 TN=1 in each category, F1 = accuracy = precision = recall = 1, yes ratio 1/2
    assert ordered.count("1.000, 1.000, 1.000, 1.000, 0.500") == 2
    metrics = eval_pope.evaluate(str(POPE / "coco"), str(POPE / "llava_pope_test.jsonl"),
                                 str(tmp_path / "shuffled.jsonl"))
    assert {c: (m["f1"], m["accuracy"]) for c, m in metrics.items()} == {"adversarial": (1.0, 1.0),
                                                                          "random": (1.0, 1.0)}


def test_pope_shuffled_mixed_answers_by_hand(tmp_path, capsys):
    # a wrong answer for id 2 (label "no", answered "Yes"): adversarial TP=1 FP=1 -> precision 1/2, recall 1,
    # F1 = 2/3, accuracy 1/2, yes ratio 1; random stays perfect
    rows = _pope_rows()
    rows[1]["text"] = "Yes"
    for order in (rows, [rows[2], rows[1], rows[3], rows[0]]):
        metrics = eval_pope.evaluate(str(POPE / "coco"), str(POPE / "llava_pope_test.jsonl"),
                                     str(_write(tmp_path / "a.jsonl", order)))
        assert metrics["adversarial"]["f1"] == pytest.approx(2 / 3)
        assert metrics["adversarial"]["accuracy"] == pytest.approx(0.5)
        assert metrics["random"]["f1"] == pytest.approx(1.0)
    capsys.readouterr()


def test_science_qa_shuffled_answers_score_as_ordered(tmp_path, capsys):
    rows = _sqa_rows()
    for name, order in (("ordered", rows), ("shuffled", [rows[2], rows[0], rows[1]])):
        assert _run_sqa(_write(tmp_path / f"{name}.jsonl", order), tmp_path) == 0
        assert capsys.readouterr().out.strip() == "Total: 3, Correct: 2, Accuracy: 66.67%, IMG-Accuracy: 50.00%"
        result = json.loads((tmp_path / "out" / "r.json").read_text())
        assert result["results"] == {"101": 1, "102": 2, "103": 1}


def test_textvqa_shuffled_answers_score_as_ordered(tmp_path, capsys):
    rows = _textvqa_rows()
    for name, order in (("ordered", rows), ("shuffled", rows[::-1])):
        assert _run_textvqa(_write(tmp_path / f"{name}.jsonl", order), tmp_path) == 0
        assert capsys.readouterr().out == f"{name}\nSamples: 2\nAccuracy: 65.00%\n\n"


# --- answers files that cannot be scored --------------------------------------------------------------------------


def _duplicated(rows):  # the first answer again, on the last line
    return rows + [dict(rows[0])], len(rows) + 1, rows[0]["question_id"], ["repeats", "of line 1"]


def _no_question_id(rows):
    bad = {k: v for k, v in rows[1].items() if k != "question_id"}
    return [rows[0], bad] + rows[2:], 2, None, ["no 'question_id' field"]


def _extra_id(rows):
    extra = dict(rows[0], question_id=rows[0]["question_id"] * 2 + type(rows[0]["question_id"])(7))
    return rows + [extra], len(rows) + 1, extra["question_id"], ["not in"]


def _missing_id(rows):  # the last question unanswered: the id is named (with its question-file line for pope)
    return rows[:-1], None, rows[-1]["question_id"], ["no answer for 1 id(s)"]


def _text_null(rows):
    return [rows[0], dict(rows[1], text=None)] + rows[2:], 2, rows[1]["question_id"], ["'text' is null"]


def _text_not_string(rows):
    return [rows[0], dict(rows[1], text=5)] + rows[2:], 2, rows[1]["question_id"], ["'text' is int 5"]


def _no_prompt(rows):
    bad = {k: v for k, v in rows[1].items() if k != "prompt"}
    return [rows[0], bad] + rows[2:], 2, rows[1]["question_id"], ["no 'prompt' field"]


def _prompt_null(rows):
    return [rows[0], dict(rows[1], prompt=None)] + rows[2:], 2, rows[1]["question_id"], ["'prompt' is null"]


def _empty(rows):
    return [], None, None, ["no answers"]


BAD_CASES = {
    "duplicated_id": _duplicated, "no_question_id": _no_question_id, "extra_id": _extra_id, "missing_id": _missing_id,
    "text_null": _text_null, "text_not_string": _text_not_string, "no_prompt": _no_prompt,
    "prompt_null": _prompt_null, "empty": _empty,
}


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("scorer_name", list(SCORERS))
def test_bad_answers_file_is_named(scorer_name, case, tmp_path, capsys):
    scorer = SCORERS[scorer_name]()
    rows, line, qid, phrases = BAD_CASES[case](scorer.rows)
    answers = _write(tmp_path / "answers.jsonl", rows)
    assert scorer.run(answers, tmp_path) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(f"error: {answers}") and err.count("\n") == 1, err  # one line, no traceback
    if line is not None:
        assert f"{answers}:{line}:" in err or f"line {line}" in err, err
    if qid is not None:
        assert f"question_id {qid!r}" in err, err
    for phrase in phrases:
        assert phrase in err, err
    assert "Accuracy" not in captured.out and "F1" not in captured.out  # no score printed
    assert not (tmp_path / "out").exists()  # science_qa writes no result files


def test_blank_lines_only_is_an_empty_file(tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n  \n")
    for name, make in SCORERS.items():
        assert make().run(answers, tmp_path) == 2, name
        assert f"error: {answers}: no answers" in capsys.readouterr().err


def test_missing_id_names_the_question_file_line(tmp_path, capsys):
    rows = _pope_rows()
    answers = _write(tmp_path / "a.jsonl", rows[:1] + rows[2:])  # question_id 2 (line 2) unanswered
    assert _run_pope(answers, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"no answer for 1 id(s) of {POPE / 'llava_pope_test.jsonl'}: question_id 2 (line 2)" in err


def test_missing_and_extra_ids_are_both_named(tmp_path, capsys):
    rows = _sqa_rows()
    answers = _write(tmp_path / "a.jsonl", rows[:2] + [dict(rows[2], question_id="999")])
    assert _run_sqa(answers, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{answers}: 1 answer(s) for ids that are not in split 'test' of {SQA / 'pid_splits.json'}: " \
           "line 3: question_id '999'" in err
    assert "no answer for 1 id(s) of split 'test'" in err and "question_id '103'" in err


def test_integer_ids_for_string_problems_get_a_hint(tmp_path, capsys):
    answers = _write(tmp_path / "a.jsonl", [dict(r, question_id=int(r["question_id"])) for r in _sqa_rows()])
    assert _run_sqa(answers, tmp_path) == 2
    err = capsys.readouterr().err
    assert "line 1: question_id 101" in err and "question_id '101'" in err
    assert 'ids are compared with their JSON type: 1 and "1" differ' in err


def test_many_bad_ids_are_counted_not_all_listed(tmp_path, capsys):
    rows = _sqa_rows()
    extra = [dict(rows[0], question_id=f"x{i}") for i in range(5)]
    answers = _write(tmp_path / "a.jsonl", rows + extra)
    assert _run_sqa(answers, tmp_path) == 2
    err = capsys.readouterr().err
    assert "5 answer(s) for ids that are not in" in err and "and 2 more" in err and "'x3'" not in err


def test_not_json_line_is_named(tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps(_sqa_rows()[0]) + "\n{not json\n")
    for name, make in SCORERS.items():
        assert make().run(answers, tmp_path) == 2, name
        assert f"error: {answers}:2: not valid JSON" in capsys.readouterr().err


def test_no_such_answers_file(tmp_path, capsys):
    for name, make in SCORERS.items():
        assert make().run(tmp_path / "nope.jsonl", tmp_path) == 2, name
        assert f"not found: {tmp_path / 'nope.jsonl'}" in capsys.readouterr().err


# --- scorer-specific pairing rules --------------------------------------------------------------------------------


def _pope_dir(tmp_path: Path, labels: dict[str, list[dict]]) -> Path:
    for category, rows in labels.items():
        _write(tmp_path / "coco" / f"coco_pope_{category}.json", rows)
    return tmp_path / "coco"


def test_pope_repeated_question_id_in_question_file(tmp_path, capsys):
    ann = _pope_dir(tmp_path, {"random": [{"label": "yes"}, {"label": "no"}]})
    questions = _write(tmp_path / "q.jsonl", [{"question_id": 1, "category": "random"},
                                              {"question_id": 1, "category": "random"}])
    answers = _write(tmp_path / "a.jsonl", [{"question_id": 1, "prompt": "q", "text": "yes"}])
    assert eval_pope.main(["--annotation-dir", str(ann), "--question-file", str(questions),
                           "--result-file", str(answers)]) == 2
    assert f"error: {questions}:2: question_id 1 repeats line 1" in capsys.readouterr().err


def test_pope_question_and_label_images_must_agree(tmp_path, capsys):
    ann = _pope_dir(tmp_path, {"random": [{"image": "a.jpg", "label": "yes"}, {"image": "b.jpg", "label": "no"}]})
    questions = _write(tmp_path / "q.jsonl", [{"question_id": 7, "image": "b.jpg", "category": "random"},
                                              {"question_id": 8, "image": "a.jpg", "category": "random"}])
    answers = _write(tmp_path / "a.jsonl", [{"question_id": 7, "prompt": "q", "text": "yes"},
                                            {"question_id": 8, "prompt": "q", "text": "no"}])
    assert eval_pope.main(["--annotation-dir", str(ann), "--question-file", str(questions),
                           "--result-file", str(answers)]) == 2
    err = capsys.readouterr().err
    assert f"{questions}:1: question_id 7 (image 'b.jpg') does not match {ann / 'coco_pope_random.json'}:1" in err


def test_pope_label_line_without_label(tmp_path, capsys):
    ann = _pope_dir(tmp_path, {"random": [{"label": "yes"}, {"question_id": 2}]})
    questions = _write(tmp_path / "q.jsonl", [{"question_id": 1, "category": "random"},
                                              {"question_id": 2, "category": "random"}])
    answers = _write(tmp_path / "a.jsonl", [{"question_id": i, "prompt": "q", "text": "yes"} for i in (2, 1)])
    assert eval_pope.main(["--annotation-dir", str(ann), "--question-file", str(questions),
                           "--result-file", str(answers)]) == 2
    assert f"error: {ann / 'coco_pope_random.json'}:2: no 'label' field" in capsys.readouterr().err


def test_pope_category_without_annotation_file_is_reported(tmp_path, capsys):
    ann = _pope_dir(tmp_path, {"random": [{"label": "yes"}]})
    questions = _write(tmp_path / "q.jsonl", [{"question_id": 1, "category": "random"},
                                              {"question_id": 2, "category": "popular"}])
    answers = _write(tmp_path / "a.jsonl", [{"question_id": i, "prompt": "q", "text": "yes"} for i in (2, 1)])
    assert eval_pope.main(["--annotation-dir", str(ann), "--question-file", str(questions),
                           "--result-file", str(answers)]) == 0
    captured = capsys.readouterr()
    assert "Category: random, # samples: 1" in captured.out and "popular" not in captured.out
    assert "warning: 1 questions of category 'popular'" in captured.err


def test_pope_no_annotation_files(tmp_path, capsys):
    (tmp_path / "coco").mkdir()
    questions = _write(tmp_path / "q.jsonl", [{"question_id": 1, "category": "random"}])
    answers = _write(tmp_path / "a.jsonl", [{"question_id": 1, "prompt": "q", "text": "yes"}])
    assert eval_pope.main(["--annotation-dir", str(tmp_path / "coco"), "--question-file", str(questions),
                           "--result-file", str(answers)]) == 2
    assert "no coco_pope_<category>.json annotation files" in capsys.readouterr().err


def _textvqa_annotations(tmp_path: Path, entries: list[tuple[str, str, list[str]]]) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"data": [{"image_id": i, "question": q, "answers": a} for i, q, a in entries]}))
    return path


def test_textvqa_matches_by_image_id_and_question(tmp_path, capsys):
    # LLaVA's TextVQA question_id is the image id: one image, two questions -> the same question_id twice is fine
    ann = _textvqa_annotations(tmp_path, [("img", "what is it?", ["cat"] * 10), ("img", "what colour?", ["red"] * 10)])
    answers = _write(tmp_path / "a.jsonl", [
        {"question_id": "img", "prompt": "What colour?\nAnswer briefly.", "text": "red"},
        {"question_id": "img", "prompt": "What is it?\nAnswer briefly.", "text": "dog"},
    ])
    assert eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(answers)]) == 0
    assert capsys.readouterr().out == "a\nSamples: 2\nAccuracy: 50.00%\n\n"
    # the same (image, question) answered twice is a repeat, named with both lines
    _write(answers, [{"question_id": "img", "prompt": "What is it?\nAnswer briefly.", "text": "cat"}] * 2
           + [{"question_id": "img", "prompt": "What colour?\nAnswer briefly.", "text": "red"}])
    assert eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(answers)]) == 2
    assert "line 2 repeats question_id 'img' with question 'what is it?' of line 1" in capsys.readouterr().err


def test_textvqa_pair_listed_twice_in_annotations_takes_two_answers(tmp_path, capsys):
    ann = _textvqa_annotations(tmp_path, [("img", "what is it?", ["cat"] * 10)] * 2)
    row = {"question_id": "img", "prompt": "What is it?\nAnswer briefly.", "text": "cat"}
    answers = _write(tmp_path / "a.jsonl", [row, row])
    assert eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(answers)]) == 0
    assert "Samples: 2\nAccuracy: 100.00%" in capsys.readouterr().out
    _write(answers, [row] * 3)
    assert eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(answers)]) == 2
    assert "line 3 repeats question_id 'img'" in capsys.readouterr().err


def test_textvqa_unreadable_prompt_is_named(tmp_path, capsys):
    rows = _textvqa_rows()
    answers = _write(tmp_path / "a.jsonl", [rows[0], dict(rows[1], prompt="one line only")])
    assert _run_textvqa(answers, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"error: {answers}:2: question_id {rows[1]['question_id']!r}: cannot find the question" in err


def test_textvqa_result_dir_names_the_bad_file(tmp_path, capsys):
    rows = _textvqa_rows()
    _write(tmp_path / "runs" / "a_good.jsonl", rows)
    bad = _write(tmp_path / "runs" / "b_bad.jsonl", rows[:1])
    assert eval_textvqa.main(["--annotation-file", str(TEXTVQA / "TextVQA_0.5.1_val.json"),
                              "--result-dir", str(tmp_path / "runs")]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("a_good\nSamples: 2\nAccuracy: 65.00%\n")
    assert captured.err.startswith(f"error: {bad}: no answer for 1 id(s)")


def test_pope_script_exits_2_without_a_traceback(tmp_path):
    rows = _pope_rows()
    answers = _write(tmp_path / "a.jsonl", rows + [rows[0]])
    result = subprocess.run([sys.executable, str(REPO / "llava" / "eval" / "eval_pope.py"),
                             "--annotation-dir", str(POPE / "coco"), "--question-file",
                             str(POPE / "llava_pope_test.jsonl"), "--result-file", str(answers)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"error: {answers}: 1 repeated id(s): line 5 repeats question_id 1 of line 1\n"
