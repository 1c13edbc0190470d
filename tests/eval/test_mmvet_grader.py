"""The MM-Vet grader (eval_mmvet) and mmvet.sh against a real chat-completions server on 127.0.0.1
(tests/eval/chat_server.py), whose grades are computed from the ground truth found in each prediction, so every
expected score below is worked out by hand from the data in this file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from chat_server import ChatServer
from judge_helpers import REPO, env_for, read_jsonl, run_module, run_script

from llava.eval import eval_mmvet

MMVET_PROMPT_FILE = REPO / "llava" / "eval" / "table" / "mmvet_grader_prompt.txt"

MMVET = {
    "v1_0": {"imagename": "v1_0.png", "capability": ["rec"], "question": "What is x in the equation?",
             "answer": "-1<AND>-5"},
    "v1_1": {"imagename": "v1_1.png", "capability": ["ocr", "rec"], "question": "What does the sign say?",
             "answer": "stop"},
    "v1_2": {"imagename": "v1_2.png", "capability": ["gen", "know", "rec"], "question": "Who painted this?",
             "answer": "Van Gogh"},
    "v1_3": {"imagename": "v1_3.png", "capability": ["math", "ocr"], "question": "What is the area?",
             "answer": "12"},
}
PREDICTIONS = {"v1_0": "x = -1", "v1_1": "a stop sign", "v1_2": "garbled text", "v1_3": "second-try: 12 m2"}
RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "


def mmvet_reply(body: dict, seen: int) -> str:
    """The test grader: the share of the ground truth's <AND> parts found in the prediction; the equation question
    gets 0.5 the first time and 0.3 after (runs differ); "garbled" answers never get a score, "second-try" ones
    only once asked for a digit."""
    content = body["messages"][-1]["content"]
    retry = content.endswith(RETRY_SUFFIX)
    row = (content[: -len(RETRY_SUFFIX)] if retry else content).split("\n")[-1]
    question, truth, prediction, blank = row.split(" | ")
    assert blank == ""
    if question == "What is x in the equation?":
        return "0.5" if seen == 0 else "0.3"
    if "garbled" in prediction:
        return "maybe"
    if "second-try" in prediction:
        return "0.7" if retry else "hmm"
    parts = [p.strip() for p in truth.split("<AND>")]
    return f"{sum(p in prediction for p in parts) / len(parts):.1f}"


@pytest.fixture
def mmvet(tmp_path):
    root = tmp_path / "mm-vet"
    root.mkdir()
    (root / "mm-vet.json").write_text(json.dumps(MMVET, indent=2))
    results = root / "results"
    results.mkdir()
    (results / "tiny.json").write_text(json.dumps(PREDICTIONS, indent=2))
    return root


def _grade(root, server, *extra, key="test"):
    return run_module("llava.eval.eval_mmvet", "--mmvet-path", root, "--result-file", root / "results" / "tiny.json",
                *extra, env=env_for(server, key))


def _csv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_mmvet_prompt_file_is_the_benchmark_prompt():
    text = MMVET_PROMPT_FILE.read_text()
    assert text.startswith("Compare the ground truth and prediction from AI models, to give a correctness score")
    assert "\nQuestion | Ground truth | Prediction | Correctness\n--- | --- | --- | ---\n" in text
    assert text.endswith(" | 1.0\n")
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "d1b3e0a5b4e72c888b77164489d705bba4dd149934fff564dfba6443d81afe3f")


def test_mmvet_grades_and_scores_per_capability(mmvet):
    with ChatServer(mmvet_reply, fail=lambda index: index == 1) as server:  # one failed request, retried
        result = _grade(mmvet, server)
    assert result.returncode == 0, result.stderr
    bodies = server.answered()
    # v1_0 1 reply, v1_1 1, v1_2 5 (never a score), v1_3 2 (a score once asked for a digit)
    assert len(bodies) == 9 and [r["status"] for r in server.requests].count(500) == 1
    assert {(b["model"], b["max_tokens"]) for b in bodies} == {("gpt-4-0613", 3)}
    prompt = MMVET_PROMPT_FILE.read_text()
    assert bodies[0]["messages"] == [
        {"role": "user", "content": prompt + "\nWhat is x in the equation? | -1 <AND> -5 | x = -1 | "}]
    garbled = bodies[2:7]
    assert [b["temperature"] for b in garbled] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert [b["messages"][0]["content"].endswith(RETRY_SUFFIX) for b in garbled] == [False] + [True] * 4

    # grades 0.5, 1.0, 0.0, 0.7; per capability (mean x 100):
    #   rec  v1_0 v1_1 v1_2: 1.5 / 3 = 50.0; ocr v1_1 v1_3: 1.7 / 2 = 85.0; know, gen v1_2: 0.0; math v1_3: 70.0;
    #   total 2.2 / 4 = 55.0
    results = mmvet / "results"
    assert _csv_lines(results / "tiny_gpt-4-0613-cap-score-1runs.csv") == [
        ",rec,ocr,know,gen,math,total,std,runs", "tiny,50.0,85.0,0.0,0.0,70.0,55.0,0.0,[55.0]"]
    assert _csv_lines(results / "tiny_gpt-4-0613-cap-int-score-1runs.csv") == [
        ",rec,rec_ocr,rec_know_gen,ocr_math,total,std,runs", "tiny,50.0,100.0,0.0,70.0,55.0,0.0,[55.0]"]
    grades = json.loads((results / "tiny_gpt-4-0613-grade-1runs.json").read_text())
    assert list(grades) == ["v1_0", "v1_1", "v1_2", "v1_3"]
    assert grades["v1_0"] == {"model": ["gpt-4-0613"], "content": ["0.5"], "score": [0.5], "answer": "x = -1"}
    assert grades["v1_2"]["score"] == [0.0] and grades["v1_2"]["content"] == ["maybe"]
    assert grades["v1_3"]["score"] == [0.7]
    out = result.stdout.splitlines()
    assert out[0] == "MM-Vet scores of tiny (graded by gpt-4-0613, 1 run(s), 4 samples; 4 grade(s) asked now)"
    assert out[1].split() == ["rec", "ocr", "know", "gen", "math", "total", "std", "runs"]
    assert out[2].split() == ["50.0", "85.0", "0.0", "0.0", "70.0", "55.0", "0.0", "[55.0]"]
    assert out[-1] == "graded 0.0 after 5 replies that were not a score (MM-Vet's rule): 1: v1_2 (run 1)"
    assert not list(results.glob(".*"))


def test_mmvet_runs_resume_and_follow_changed_answers(mmvet):
    results = mmvet / "results"
    # MM-Vet's own spelling of the arguments: --result_path + --model, --gpt_model, --num_run
    args = ["--result_path", results, "--model", "tiny", "--gpt_model", "gpt-4-0613", "--num_run", "2"]
    with ChatServer(mmvet_reply) as server:
        result = run_module("llava.eval.eval_mmvet", "--mmvet_path", mmvet, *args, env=env_for(server))
        assert result.returncode == 0, result.stderr
        assert len(server.answered()) == 18
        # run 2 grades v1_0 0.3: totals 55.0 and 50.0 -> 52.5, std 2.5; rec (50.0 + 43.33) / 2 -> 46.7
        cap = results / "tiny_gpt-4-0613-cap-score-2runs.csv"
        assert _csv_lines(cap) == [",rec,ocr,know,gen,math,total,std,runs",
                                   'tiny,46.7,85.0,0.0,0.0,70.0,52.5,2.5,"[55.0, 50.0]"']
        assert _csv_lines(results / "tiny_gpt-4-0613-cap-int-score-2runs.csv") == [
            ",rec,rec_ocr,rec_know_gen,ocr_math,total,std,runs", 'tiny,40.0,100.0,0.0,70.0,52.5,2.5,"[55.0, 50.0]"']

        again = run_module("llava.eval.eval_mmvet", "--mmvet_path", mmvet, *args, env=env_for(server))
        assert again.returncode == 0 and len(server.answered()) == 18  # nothing asked again

        (results / "tiny.json").write_text(json.dumps({**PREDICTIONS, "v1_1": "a STOP sign"}))  # now graded 0.0
        changed = run_module("llava.eval.eval_mmvet", "--mmvet_path", mmvet, *args, env=env_for(server))
    assert changed.returncode == 0, changed.stderr
    assert len(server.answered()) == 20  # v1_1's two runs only
    # rec (0.5 + 0 + 0) / 3 and (0.3 + 0 + 0) / 3 -> (16.67 + 10.0) / 2 = 13.3; ocr (0 + 0.7) / 2 -> 35.0;
    # totals 1.2 / 4 = 30.0 and 1.0 / 4 = 25.0 -> 27.5, std 2.5
    assert _csv_lines(cap)[1] == 'tiny,13.3,35.0,0.0,0.0,70.0,27.5,2.5,"[30.0, 25.0]"'


def test_mmvet_interrupted_grading_keeps_its_progress(mmvet):
    results = mmvet / "results"
    with ChatServer(mmvet_reply, fail=lambda index: index >= 3) as server:  # down during v1_2's second reply
        result = _grade(mmvet, server, "--max-retries", "0")
    assert result.returncode == 1
    assert "answered HTTP 500" in result.stderr and "the 2 grade(s) made so far are kept" in result.stderr
    assert not (results / "tiny_gpt-4-0613-grade-1runs.json").exists()
    assert not (results / "tiny_gpt-4-0613-cap-score-1runs.csv").exists()
    assert [r["id"] for r in read_jsonl(results / ".tiny_gpt-4-0613-grade-1runs.json.progress.jsonl")] == [
        "v1_0", "v1_1"]
    with ChatServer(mmvet_reply) as server:
        result = _grade(mmvet, server)
    assert result.returncode == 0, result.stderr
    assert len(server.answered()) == 7  # v1_2's five replies and v1_3's two
    assert _csv_lines(results / "tiny_gpt-4-0613-cap-score-1runs.csv")[1] == (
        "tiny,50.0,85.0,0.0,0.0,70.0,55.0,0.0,[55.0]")


def test_mmvet_user_mistakes(mmvet):
    with ChatServer(mmvet_reply) as server:
        result = _grade(mmvet, server, key=None)
        assert result.returncode == 2 and result.stderr.startswith("error: OPENAI_API_KEY is not set")
        (mmvet / "results" / "tiny.json").write_text(json.dumps({k: PREDICTIONS[k] for k in ("v1_0", "v1_1", "v1_2")}
                                                                | {"v9_9": "?"}))
        result = _grade(mmvet, server)
    assert result.returncode == 2
    assert ("no answer for 1 sample(s): v1_3; 1 answer(s) with ids MM-Vet does not have: v9_9"
            in result.stderr.splitlines()[-1])
    assert server.requests == []


def test_mmvet_grade_parsing():
    assert [eval_mmvet.parse_grade(c) for c in ["0.5", "1.0 because", "0.8\n", "1.2", "-0.1", "maybe", ""]] == [
        0.5, 1.0, 0.8, None, None, None, None]


FAKE_PYTHON = """#!/bin/bash
# records its calls; as an answering script, writes an empty --answers-file
echo "$*" >> "$FAKE_LOG"
prev=""
for arg in "$@"; do
    if [ "$prev" = "--answers-file" ]; then mkdir -p "$(dirname "$arg")"; : > "$arg"; fi
    prev="$arg"
done
"""


def test_mmvet_script_grades_only_with_a_key(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    log = tmp_path / "calls.log"
    bench = tmp_path / "eval" / "mm-vet"

    def run(key):
        log.unlink(missing_ok=True)
        env = env_for(key=key, EVAL_DIR=str(tmp_path / "eval"), CKPT="tiny", FAKE_LOG=str(log))
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        result = run_script("mmvet", env)
        return result, log.read_text().splitlines() if log.exists() else []

    result, calls = run(None)
    assert result.returncode == 0
    assert [c.split()[:2] for c in calls] == [["-m", "llava.eval.model_vqa"], ["scripts/convert_mmvet_for_eval.py",
                                                                                "--src"]]
    assert "not graded: OPENAI_API_KEY is not set" in result.stderr

    result, calls = run("test")  # a key, but no mm-vet.json: stops before answering
    assert result.returncode == 2 and calls == []
    assert f"missing: {bench}/mm-vet.json" in result.stderr

    (bench / "mm-vet.json").write_text("{}")
    result, calls = run("test")
    assert result.returncode == 0
    assert calls[-1] == (f"-m llava.eval.eval_mmvet --mmvet-path {bench} --result-file {bench}/results/tiny.json "
                         "--num-run 1")
