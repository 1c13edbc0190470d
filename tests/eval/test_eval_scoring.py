"""Scoring scripts and converters on hand-made answers, with the expected numbers worked out by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llava.eval import eval_pope, eval_science_qa, eval_textvqa
from llava.eval.m4c_evaluator import EvalAIAnswerProcessor, TextVQAAccuracyEvaluator, vqa_accuracy

REPO = Path(__file__).resolve().parents[2]
EVAL_DATA = REPO / "playground" / "data" / "eval"


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- POPE ---------------------------------------------------------------------------------------------------------


def test_pope_yes_no_parsing():
    assert eval_pope.parse_yes_no("Yes, there is a dog.") == "yes"
    assert eval_pope.parse_yes_no("No, there isn't.") == "no"  # comma removed: "No" is a word
    assert eval_pope.parse_yes_no("There is not a dog") == "no"
    assert eval_pope.parse_yes_no("Yes. There is no cat though.") == "yes"  # only the first sentence counts
    assert eval_pope.parse_yes_no("Nope") == "yes"  # whole words only


def test_pope_metrics_by_hand(tmp_path, capsys):
    # labels:       yes    yes   no     no    yes
    # predictions:  yes    no    no     yes   no     -> TP=1 FP=1 TN=1 FN=2
    # precision 1/2, recall 1/3, F1 = 2 * (1/2) * (1/3) / (1/2 + 1/3) = 0.4, accuracy 2/5, yes ratio 2/5
    texts = ["Yes, there is.", "No.", "There is no dog.", "Yes", "It is not clear. Yes"]
    labels = ["yes", "yes", "no", "no", "yes"]
    ann = tmp_path / "coco"
    _jsonl(ann / "coco_pope_random.json", [{"question_id": i, "label": lab} for i, lab in enumerate(labels)])
    # a second category, one question: answered "yes", label "yes" -> TP=1, precision = recall = F1 = 1
    _jsonl(ann / "coco_pope_popular.json", [{"question_id": 0, "label": "yes"}])
    (ann / "README.txt").write_text("not an annotation file")
    questions = _jsonl(tmp_path / "q.jsonl", [{"question_id": 10 + i, "category": "random"} for i in range(5)]
                       + [{"question_id": 99, "category": "popular"}])
    results = _jsonl(tmp_path / "a.jsonl", [{"question_id": 99, "prompt": "q", "text": "Yes"}]
                     + [{"question_id": 10 + i, "prompt": "q", "text": t} for i, t in enumerate(texts)])
    assert eval_pope.main(["--annotation-dir", str(ann), "--question-file", str(questions),
                           "--result-file", str(results)]) == 0
    out = capsys.readouterr().out
    random_part = out.split("Category: random, # samples: 5\n")[1]
    assert random_part.startswith("TP\tFP\tTN\tFN\t\n1\t1\t1\t2\n")
    assert "0.400, 0.400, 0.500, 0.333, 0.400" in random_part
    assert "Category: popular, # samples: 1\nTP\tFP\tTN\tFN\t\n1\t0\t0\t0\n" in out
    metrics = eval_pope.evaluate(str(ann), str(questions), str(results))
    assert metrics["random"]["precision"] == pytest.approx(1 / 2)
    assert metrics["random"]["recall"] == pytest.approx(1 / 3)
    assert metrics["random"]["f1"] == pytest.approx(0.4)
    assert metrics["random"]["accuracy"] == pytest.approx(0.4)
    assert metrics["popular"]["f1"] == pytest.approx(1.0)


def test_pope_count_mismatch_is_an_error(tmp_path, capsys):
    ann = tmp_path / "coco"
    _jsonl(ann / "coco_pope_random.json", [{"label": "yes"}, {"label": "no"}])
    questions = _jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "category": "random"}])
    results = _jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "prompt": "q", "text": "yes"}])
    assert eval_pope.main(["--annotation-dir", str(ann), "--question-file", str(questions),
                           "--result-file", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ann / 'coco_pope_random.json'}: 2 labels but {questions} has 1 questions of "
                          "category 'random'")


# --- ScienceQA ----------------------------------------------------------------------------------------------------


def test_science_qa_score_by_hand(tmp_path, capsys):
    problems = {  # answer indexes: B, A, C, A, B
        "1": {"choices": ["x", "y"], "answer": 1},
        "2": {"choices": ["x", "y"], "answer": 0},
        "3": {"choices": ["x", "y", "z"], "answer": 2},
        "4": {"choices": ["x", "y"], "answer": 0},
        "5": {"choices": ["x", "y"], "answer": 1},
        "6": {"choices": ["x", "y"], "answer": 1},  # not in the test split
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "4", "5"], "val": ["6"]}))
    results = _jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "1", "prompt": "<image>\nq", "text": "B"},                   # letter: correct, image
        {"question_id": "2", "prompt": "<image>\nq", "text": "A. x"},                # "A. ": correct, image
        {"question_id": "3", "prompt": "q", "text": "The answer is C."},            # pattern: correct
        {"question_id": "4", "prompt": "<image>\nq", "text": "C"},                   # C is not a choice: wrong, image
        {"question_id": "5", "prompt": "q", "text": "I am not sure."},             # no letter: FAILED, wrong
    ])
    out = tmp_path / "out"
    argv = ["--base-dir", str(tmp_path), "--result-file", str(results), "--output-file", str(out / "o.json"),
            "--output-result", str(out / "r.json")]
    assert eval_science_qa.main(argv) == 0
    captured = capsys.readouterr()
    # 3 of 5 correct; image answers: 1, 2 correct, 4 wrong -> 2 of 3
    assert captured.out.strip() == "Total: 5, Correct: 3, Accuracy: 60.00%, IMG-Accuracy: 66.67%"
    assert captured.err == ""
    result = json.loads((out / "r.json").read_text())
    assert (result["acc"], result["correct"], result["count"]) == (60.0, 3, 5)
    assert result["results"] == {"1": 1, "2": 0, "3": 2, "4": -1, "5": -1}
    analysis = json.loads((out / "o.json").read_text())
    assert [a["question_id"] for a in analysis["incorrect"]] == ["4", "5"]
    assert analysis["incorrect"][1]["parsed_ans"] == "FAILED"


def test_science_answer_letter_rules():
    options = list("ABCDE")
    assert eval_science_qa.parse_answer_letter("D", options) == "D"
    assert eval_science_qa.parse_answer_letter("B. because", options) == "B"
    assert eval_science_qa.parse_answer_letter("So. The answer is E. Done", options) == "E"
    assert eval_science_qa.parse_answer_letter("The answer is A. or The answer is B.", options) == "FAILED"
    assert eval_science_qa.parse_answer_letter("b", options) == "FAILED"


# --- VQA normalisation and accuracy -------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "normalised"), [
    ("Two dogs.", "2 dogs"),          # number word, final period
    ("The cat", "cat"),               # article
    ("an apple a day", "apple day"),
    ("none", "0"),
    ("3.5", "3.5"),                   # a decimal point stays
    ("yes!", "yes"),                  # punctuation not touching a space becomes a space
    ("a-b", "b"),                     # "-" -> " ", then the article "a" goes
    ("x - y", "x y"),                 # punctuation touching a space is deleted
    ("1,000", "1000"),                # commas are dropped
    ("dont know", "don't know"),      # contraction apostrophes restored
    ("couldnt've", "couldn't've"),
    ("couldn'tve", "couldn't've"),
    ("its", "its"),                   # an ordinary word stays
    ("It's John's", "it 's john 's"),  # possessive split off
    ("Red\tand\nblue", "red and blue"),
    ("What?", "what"),
])
def test_answer_normaliser(raw, normalised):
    assert EvalAIAnswerProcessor()(raw) == normalised


@pytest.mark.parametrize(("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_by_hand(matches, expected):
    # m of 10 humans agree. Leaving out one of the m: min((m-1)/3, 1), m times; one of the others: min(m/3, 1),
    # 10-m times. m=1: 9 * (1/3) / 10 = 0.3; m=2: (2/3 + 8 * 2/3) / 10 = 0.6; m=3: (3 * 2/3 + 7) / 10 = 0.9
    humans = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("cat", humans) == pytest.approx(expected)


def test_textvqa_evaluator_normalises_both_sides():
    humans = ["Two", "2", "two", "2.", "three", "3", "3", "3", "3", "3"]  # "2" four times after normalising
    evaluator = TextVQAAccuracyEvaluator()
    assert evaluator.eval_pred_list([{"pred_answer": "two", "gt_answers": humans}]) == pytest.approx(1.0)
    assert evaluator.eval_pred_list([{"pred_answer": "2", "gt_answers": humans},
                                     {"pred_answer": "4", "gt_answers": humans}]) == pytest.approx(0.5)


def test_eval_textvqa_on_the_committed_sample(tmp_path, capsys):
    textvqa = EVAL_DATA / "textvqa"
    questions = [json.loads(line) for line in (textvqa / "llava_textvqa_val_v051_ocr.jsonl").read_text().splitlines()]
    # "Stop" matches 7 of 10 -> 1.0; "2" matches 1 of 10 -> 0.3; mean 65.00%
    results = _jsonl(tmp_path / "llava-tiny.jsonl", [
        {"question_id": questions[0]["question_id"], "prompt": questions[0]["text"], "text": "Stop"},
        {"question_id": questions[1]["question_id"], "prompt": questions[1]["text"], "text": "2"},
    ])
    assert eval_textvqa.main(["--annotation-file", str(textvqa / "TextVQA_0.5.1_val.json"),
                              "--result-file", str(results)]) == 0
    assert capsys.readouterr().out == "llava-tiny\nSamples: 2\nAccuracy: 65.00%\n\n"


def test_textvqa_prompt_processor():
    assert eval_textvqa.prompt_processor("What is it?\nReference OCR token: A, B\nAnswer briefly.") == "what is it?"
    assert eval_textvqa.prompt_processor("Reference OCR token: A\nWhat is it?\nAnswer.") == "what is it?"
    assert eval_textvqa.prompt_processor("What is it?\nAnswer.") == "what is it?"
    assert eval_textvqa.prompt_processor("OCR tokens: a b Question: Why? Short answer:") == "why?"
    with pytest.raises(ValueError, match="cannot find the question"):
        eval_textvqa.prompt_processor("one line only")


# --- converters ---------------------------------------------------------------------------------------------------


def test_gqa_and_mmvet_converters(tmp_path):
    answers = _jsonl(tmp_path / "merge.jsonl", [{"question_id": "201", "text": "Yes."},
                                                 {"question_id": "202", "text": "The Left..."}])
    assert _load_script("convert_gqa_for_eval").main(["--src", str(answers), "--dst", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text()) == [{"questionId": "201", "prediction": "yes"},
                                                             {"questionId": "202", "prediction": "the left"}]
    assert _load_script("convert_mmvet_for_eval").main(["--src", str(answers), "--dst", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text()) == {"v1_201": "Yes.", "v1_202": "The Left..."}


def test_vqav2_converter_normalises_and_fills_unanswered(tmp_path):
    split, ckpt = "llava_vqav2_mscoco_test-dev2015", "tiny"
    _jsonl(tmp_path / "answers" / split / ckpt / "merge.jsonl", [{"question_id": 1, "text": "Two."}])
    _jsonl(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", [{"question_id": 1}, {"question_id": 2}])
    convert = _load_script("convert_vqav2_for_submission")
    assert convert.main(["--dir", str(tmp_path), "--split", split, "--ckpt", ckpt]) == 0
    upload = json.loads((tmp_path / "answers_upload" / split / f"{ckpt}.json").read_text())
    assert upload == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": ""}]


def test_vizwiz_converter_requires_every_answer(tmp_path, capsys):
    questions = _jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image": "a.jpg"},
                                              {"question_id": 2, "image": "b.jpg"}])
    answers = _jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "The cat."}])
    convert = _load_script("convert_vizwiz_for_submission")
    argv = ["--annotation-file", str(questions), "--result-file", str(answers),
            "--result-upload-file", str(tmp_path / "up" / "x.json")]
    assert convert.main(argv) == 2
    assert "question_id 2" in capsys.readouterr().err
    _jsonl(answers, [{"question_id": 1, "text": "The cat."}, {"question_id": 2, "text": "unanswerable"}])
    assert convert.main(argv) == 0
    assert json.loads((tmp_path / "up" / "x.json").read_text()) == [{"image": "a.jpg", "answer": "cat"},
                                                                   {"image": "b.jpg", "answer": "unanswerable"}]


def test_seed_converter_accuracy_by_type(tmp_path, capsys):
    annotation = tmp_path / "SEED-Bench.json"
    annotation.write_text(json.dumps({
        "question_type": {"Scene Understanding": 1, "Instance Counting": 2},
        "questions": [
            {"question_id": "1", "answer": "A", "question_type_id": 1, "data_type": "image"},
            {"question_id": "2", "answer": "B", "question_type_id": 1, "data_type": "image"},
            {"question_id": "3", "answer": "C", "question_type_id": 2, "data_type": "image"},
            {"question_id": "4_v", "answer": "D", "question_type_id": 2, "data_type": "video"},
        ]}))
    answers = _jsonl(tmp_path / "merge.jsonl", [{"question_id": 1, "text": "A"}, {"question_id": 2, "text": "C"},
                                                 {"question_id": 3, "text": "C"}, {"question_id": "4_v", "text": "A"}])
    convert = _load_script("convert_seed_for_submission")
    assert convert.main(["--annotation-file", str(annotation), "--result-file", str(answers),
                         "--result-upload-file", str(tmp_path / "up.jsonl")]) == 0
    # type 1: 1 of 2 = 50%; type 2: 1 of 2 = 50%; total 2 of 4; image 2 of 3 = 66.67%; video 0 of 1
    assert capsys.readouterr().out.splitlines() == [
        "Scene Understanding: 50.00%", "Instance Counting: 50.00%", "Total accuracy: 50.00%",
        "image accuracy: 66.67%", "video accuracy: 0.00%"]
    assert [json.loads(x) for x in (tmp_path / "up.jsonl").read_text().splitlines()] == [
        {"question_id": "1", "prediction": "A"}, {"question_id": "2", "prediction": "C"},
        {"question_id": "3", "prediction": "C"}, {"question_id": "4_v", "prediction": "A"}]


def test_mme_converter_matches_ground_truth(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("convert_answer_to_mme",
                                                  EVAL_DATA / "MME" / "convert_answer_to_mme.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    data = tmp_path / "MME_Benchmark_release_version"
    (data / "artwork" / "images").mkdir(parents=True)  # layout 1: images/ + questions_answers_YN/
    (data / "artwork" / "questions_answers_YN").mkdir()
    (data / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this a painting? Please answer yes or no.\tYes\nIs this a photo?  Please answer yes or no.\tNo\n")
    (data / "OCR").mkdir()  # layout 2: question files beside the images
    (data / "OCR" / "0001.txt").write_text("Does it say STOP? Please answer yes or no.\tYes\n")
    short = "Answer the question using a single word or phrase."
    _jsonl(tmp_path / "answers" / "exp.jsonl", [
        {"question_id": "artwork/10002.jpg", "prompt": f"Is this a painting?\n{short}", "text": "Yes"},
        {"question_id": "artwork/10002.jpg", "prompt": f"Is this a photo?\n{short}", "text": "Yes"},  # 2 spaces
        {"question_id": "OCR/0001.jpg", "prompt": "Does it say STOP? Please answer yes or no.", "text": "No\n"},
    ])
    monkeypatch.chdir(tmp_path)
    assert convert.main(["--experiment", "exp"]) == 0
    out = tmp_path / "eval_tool" / "answers" / "exp"
    assert (out / "artwork.txt").read_text() == (
        "10002.txt\tIs this a painting? Please answer yes or no.\tYes\tYes\n"
        "10002.txt\tIs this a photo?  Please answer yes or no.\tNo\tYes\n")
    assert (out / "OCR.txt").read_text() == "0001.txt\tDoes it say STOP? Please answer yes or no.\tYes\tNo \n"
