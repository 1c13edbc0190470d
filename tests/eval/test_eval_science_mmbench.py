"""model_vqa_science and model_vqa_mmbench on the committed tiny samples (playground/data/eval/{scienceqa,mmbench}),
then their scorer / submission converter on the answers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llava.eval import eval_science_qa, model_vqa_mmbench, model_vqa_science

REPO = Path(__file__).resolve().parents[2]
SQA = REPO / "playground" / "data" / "eval" / "scienceqa"
MMB_TSV = REPO / "playground" / "data" / "eval" / "mmbench" / "mmbench_dev_20230712.tsv"
SUFFIX = "Answer with the option's letter from the given choices directly."


def _read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_science_answers_with_and_without_images(tiny_checkpoint, tmp_path, capsys):
    answers = tmp_path / "sqa.jsonl"
    argv = ["--model-path", str(tiny_checkpoint), "--question-file", str(SQA / "llava_test_CQM-A.json"),
            "--image-folder", str(SQA / "images" / "test"), "--answers-file", str(answers),
            "--single-pred-prompt", "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "3",
            "--device", "cpu"]
    assert model_vqa_science.main(argv) == 0
    rows = _read(answers)
    assert [r["question_id"] for r in rows] == ["101", "102", "103"]
    # image samples: "<image>\n" + question (its own <image> removed) + the single-letter instruction
    assert rows[0]["prompt"] == ("<image>\nContext: N/A\nQuestion: Which shape is shown?\n"
                                 "Options: (A) a square (B) a circle\n" + SUFFIX)
    assert rows[2]["prompt"] == ("Context: N/A\nQuestion: Which word is a noun?\nOptions: (A) run (B) apple\n"
                                 + SUFFIX)
    for row in rows[:2]:
        (count,) = row["metadata"]["visual_tokens"]
        assert 1 <= count < 576 and row["metadata"]["token_reduction"] == "prumerge"
    assert rows[2]["metadata"] == {"visual_tokens": [], "token_reduction": "prumerge"}

    # and the scorer reads it (whatever the random model said): 3 problems, 2 with images
    capsys.readouterr()
    out = tmp_path / "scored"
    assert eval_science_qa.main(["--base-dir", str(SQA), "--result-file", str(answers),
                                 "--output-file", str(out / "o.json"), "--output-result", str(out / "r.json")]) == 0
    assert capsys.readouterr().out.startswith("Total: 3, Correct: ")
    assert json.loads((out / "r.json").read_text())["count"] == 3


def test_science_bad_sample_is_named(tmp_path):
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps([{"id": "1", "conversations": [{"from": "human", "value": "x"}]},
                                     {"id": "2", "conversations": []}]))
    args = model_vqa_science.build_parser().parse_args(
        ["--model-path", str(tmp_path / "never-loaded"), "--question-file", str(questions)])
    with pytest.raises(ValueError, match=r"sample 1 \(id '2'\)"):
        model_vqa_science.eval_model(args)
    questions.write_text('[{"id": "1",\n "conversations": [}]')
    with pytest.raises(ValueError, match=f"{questions}:2:"):
        model_vqa_science.eval_model(args)


def test_mmbench_all_rounds_rotate_options_and_convert(tiny_checkpoint, tmp_path):
    answers = tmp_path / "answers" / "tiny.jsonl"
    argv = ["--model-path", str(tiny_checkpoint), "--question-file", str(MMB_TSV), "--answers-file", str(answers),
            "--single-pred-prompt", "--all-rounds", "--temperature", "0", "--conv-mode", "vicuna_v1",
            "--max_new_tokens", "2", "--device", "cpu"]
    assert model_vqa_mmbench.main(argv) == 0
    rows = _read(answers)
    # rows have 4, 2 and 3 options: one round per option
    assert [(r["question_id"], r["round_id"]) for r in rows] == \
        [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert rows[0]["prompt"] == "What shape is in the picture?\nA. circle\nB. square\nC. triangle\nD. star"
    assert rows[1]["prompt"] == "What shape is in the picture?\nA. square\nB. triangle\nC. star\nD. circle"
    assert rows[1]["options"] == ["square", "triangle", "star", "circle"]
    assert rows[1]["option_char"] == ["B", "C", "D", "A"]
    assert rows[4]["prompt"] == "The ball is on grass.\nWhat color is the ball?\nA. green\nB. yellow"  # the hint
    assert rows[6]["options"] == ["1", "2", "3"]  # numeric options stay text
    assert all(r["metadata"]["token_reduction"] == "prumerge" and len(r["metadata"]["visual_tokens"]) == 1
               for r in rows)
    assert len({r["metadata"]["visual_tokens"][0] for r in rows if r["question_id"] == 0}) == 1  # same image

    convert = _load_script("convert_mmbench_for_submission")
    upload = tmp_path / "upload"
    assert convert.main(["--annotation-file", str(MMB_TSV), "--result-dir", str(answers.parent),
                         "--upload-dir", str(upload), "--experiment", "tiny"]) == 0
    import pandas as pd

    table = pd.read_excel(upload / "tiny.xlsx", engine="openpyxl")
    assert list(table.columns) == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    round0 = {r["question_id"]: r["text"] for r in rows if r["round_id"] == 0}
    assert [("" if pd.isna(p) else str(p)) for p in table["prediction"]] == [round0[i] for i in (0, 1, 2)]


def test_mmbench_question_building():
    row = {"question": "Q?", "hint": float("nan"), "A": "x", "B": "y", "C": "None", "D": "z"}
    assert model_vqa_mmbench.get_options(row) == ["x", "y"]  # stops at the first empty option
    assert model_vqa_mmbench.build_question(row, ["x", "y"]) == "Q?\nA. x\nB. y"
    assert model_vqa_mmbench.SINGLE_PRED_PROMPT["cn"] == "请直接回答选项字母。"
