"""The GPT-judged benchmarks against a real chat-completions server on 127.0.0.1 (tests/eval/chat_server.py):
LLaVA-Bench reviews (eval_gpt_review_bench) and their summary (summarize_gpt_review), the MM-Vet grader
(eval_mmvet), the text-only answerer (model_qa), and the scripts llavabench.sh and mmvet.sh.

The judged CLIs run as real processes with OPENAI_BASE_URL / OPENAI_API_KEY pointing at the test server, whose
replies are computed from each request (scores from the answers' word counts, MM-Vet grades from the ground truth
found in the prediction), so every expected number below is worked out by hand from the data in this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from chat_server import ChatServer
from PIL import Image

from llava.eval import eval_gpt_review_bench, eval_mmvet, model_qa, summarize_gpt_review

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "v1_5" / "eval"
RULE_FILE = REPO / "llava" / "eval" / "table" / "rule.json"
MMVET_PROMPT_FILE = REPO / "llava" / "eval" / "table" / "mmvet_grader_prompt.txt"
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
SEPARATOR = "================================="


def _env(server: ChatServer | None = None, key: str | None = "test", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    if server is not None:
        env["OPENAI_BASE_URL"] = server.base_url
    if key is not None:
        env["OPENAI_API_KEY"] = key
    env.update(extra)
    return env


def _run(module: str, *args, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- LLaVA-Bench data and judge -------------------------------------------------------------------------------

QUESTIONS = [
    {"question_id": 0, "image": "001.jpg", "category": "conv", "text": "What does the sign say?"},
    {"question_id": 1, "image": "002.jpg", "category": "conv", "text": "What colour is the car?"},
    {"question_id": 2, "image": "001.jpg", "category": "detail", "text": "Describe the photo in detail."},
    {"question_id": 3, "image": "002.jpg", "category": "complex", "text": "Why might the car be parked here?"},
]
CONTEXT = [
    {"id": "001", "image": "001.jpg", "caption": ["A red stop sign at a corner.", "Trees behind it."]},
    {"id": "002", "image": "002.jpg", "caption": "A blue car parked by a shop."},
]
# word counts 8, 6, 13, 14: the judge below scores min(10, words)  ->  8, 6, 10, 10
REFERENCE = ["The sign says STOP in white capital letters.", "The car is a deep blue.",
             "A red stop sign stands at a street corner with trees behind it.",
             "The driver has probably stopped to go shopping in the small shop next door."]
# word counts 4, 6, 5, 7  ->  scores 4, 6, 5, 7
MODEL = ["The sign says stop.", "The car is blue, I think.", "A stop sign near trees.",
         "Its owner is probably in the shop."]
# the summary of those scores, worked out by hand (upstream's arithmetic: means rounded to 3 decimals, then
#   relative = mean2 / mean1 * 100 and both means x 10, each rounded to 1 decimal):
#   all     [8,4] [6,6] [10,5] [10,7]: means 8.5, 5.5  -> 64.7 (64.705...) 85.0 55.0
#   complex [10,7]                                     -> 70.0 100.0 70.0
#   conv    [8,4] [6,6]:   means 7.0, 5.0              -> 71.4 (71.428...) 70.0 50.0
#   detail  [10,5]                                     -> 50.0 100.0 50.0
SUMMARY = ["all 64.7 85.0 55.0", "llava_bench_complex 70.0 100.0 70.0", "llava_bench_conv 71.4 70.0 50.0",
           "llava_bench_detail 50.0 100.0 50.0"]
ANSWER_RE = re.compile(r"\[Assistant (\d)\]\n(.*?)\n\n\[End of Assistant \1\]", re.S)


def review_reply(body: dict, seen: int) -> str:
    """The test judge: each assistant scores min(10, its answer's word count); "UNPARSABLE" in an answer gives a
    review without scores."""
    answers = dict(ANSWER_RE.findall(body["messages"][-1]["content"]))
    if any("UNPARSABLE" in a for a in answers.values()):
        return "I would rather not give numbers.\nBoth answers are fine."
    n1, n2 = len(answers["1"].split()), len(answers["2"].split())
    return f"{min(10, n1)} {min(10, n2)}\nAssistant 1 used {n1} words and Assistant 2 used {n2}."


@pytest.fixture
def bench(tmp_path):
    """LLaVA-Bench files: questions, context, the reference answers and a model's answers."""
    root = tmp_path / "llava-bench-in-the-wild"
    _write_jsonl(root / "questions.jsonl", QUESTIONS)
    _write_jsonl(root / "context.jsonl", CONTEXT)
    _write_jsonl(root / "answers_gpt4.jsonl", [
        {"question_id": q["question_id"], "prompt": q["text"], "text": t, "answer_id": f"gpt4-{i}",
         "model_id": "gpt-4-0314", "metadata": {}} for i, (q, t) in enumerate(zip(QUESTIONS, REFERENCE))])
    write_model_answers(root, MODEL)
    return root


def write_model_answers(root: Path, texts: list[str], tag: str = "") -> Path:
    return _write_jsonl(root / "answers" / "tiny.jsonl", [
        {"question_id": q["question_id"], "prompt": q["text"], "text": t, "answer_id": f"m-{i}{tag}",
         "model_id": "llava-v1.5-tiny", "metadata": {}} for i, (q, t) in enumerate(zip(QUESTIONS, texts))])


def review_args(root: Path, output: Path, *extra) -> list:
    return ["--question", root / "questions.jsonl", "--context", root / "context.jsonl", "--rule", RULE_FILE,
            "--answer-list", root / "answers_gpt4.jsonl", root / "answers" / "tiny.jsonl", "--output", output, *extra]


def _review(root, output, server, *extra, key="test"):
    return _run("llava.eval.eval_gpt_review_bench", *review_args(root, output, *extra), env=_env(server, key))


def _summary_lines(stdout: str) -> list[str]:
    return stdout.strip().splitlines()


# --- rule file ------------------------------------------------------------------------------------------------


def test_rule_file_holds_the_benchmark_prompts():
    rules = json.loads(RULE_FILE.read_text())
    assert sorted(rules) == ["llava_bench_complex", "llava_bench_conv", "llava_bench_detail"]
    prompts = {rule["prompt"] for rule in rules.values()}
    assert {rule["role"] for rule in rules.values()} == {"Assistant"} and len(prompts) == 1
    prompt = prompts.pop()
    assert prompt.startswith("We would like to request your feedback on the performance of two AI assistants")
    assert ("Please first output a single line containing only two values indicating the scores for Assistant 1 "
            "and 2, respectively. The two scores are separated by a space.\n") in prompt
    # the judge's text decides the scores: pinned (it is upstream's, character for character)
    assert hashlib.sha256(prompt.encode()).hexdigest() == (
        "2ce22b562d6008864970ea863ac8a4d385ea6f2e64ab1313a23f825202a9529d")
    assert Path(eval_gpt_review_bench.DEFAULT_RULE_FILE) == RULE_FILE


@pytest.mark.parametrize("review, scores", [
    ("8 9\nAssistant 1 was better.", [8.0, 9.0]),
    ("8, 9\n", [8.0, 9.0]),
    ("8.5  7", [8.5, 7.0]),
    ("\n 7 6\nwhy", [7.0, 6.0]),
    ("Assistant 1: 8\nAssistant 2: 9", None),
    ("8 9 10\n", None),
    ("nan 3", None),
    ("", None),
])
def test_parse_score(review, scores):
    assert eval_gpt_review_bench.parse_score(review) == scores


# --- eval_gpt_review_bench + summarize_gpt_review -------------------------------------------------------------


def test_reviews_and_summary_through_a_real_chat_server(bench, tmp_path):
    output = tmp_path / "reviews" / "tiny.jsonl"
    with ChatServer(review_reply, fail=lambda index: index == 0) as server:  # the first request fails: retried
        result = _review(bench, output, server)
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in server.requests] == [500, 200, 200, 200, 200]
    assert server.requests[0]["body"] == server.requests[1]["body"]
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["authorization"] == "Bearer test"
        body = request["body"]
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("gpt-4-0314", 0.2, 1024)
        assert body["messages"][0] == {"role": "system", "content": SYSTEM}

    prompt = json.loads(RULE_FILE.read_text())["llava_bench_conv"]["prompt"]
    assert server.answered()[0]["messages"][1] == {"role": "user", "content": (
        "[Context]\nA red stop sign at a corner.\nTrees behind it.\n\n"  # a caption list: one sentence a line
        "[Question]\nWhat does the sign say?\n\n"
        "[Assistant 1]\nThe sign says STOP in white capital letters.\n\n[End of Assistant 1]\n\n"
        "[Assistant 2]\nThe sign says stop.\n\n[End of Assistant 2]\n\n"
        f"[System]\n{prompt}\n\n")}
    assert server.answered()[1]["messages"][1]["content"].startswith(
        "[Context]\nA blue car parked by a shop.\n\n[Question]\nWhat colour is the car?\n\n")  # a caption string

    rows = _read_jsonl(output)
    assert [{k: v for k, v in r.items() if k not in ("content", "judge_request_sha256")} for r in rows] == [
        {"id": 1, "question_id": 0, "answer1_id": "gpt4-0", "answer2_id": "m-0", "category": "llava_bench_conv",
         "tuple": [8.0, 4.0]},
        {"id": 2, "question_id": 1, "answer1_id": "gpt4-1", "answer2_id": "m-1", "category": "llava_bench_conv",
         "tuple": [6.0, 6.0]},
        {"id": 3, "question_id": 2, "answer1_id": "gpt4-2", "answer2_id": "m-2", "category": "llava_bench_detail",
         "tuple": [10.0, 5.0]},
        {"id": 4, "question_id": 3, "answer1_id": "gpt4-3", "answer2_id": "m-3", "category": "llava_bench_complex",
         "tuple": [10.0, 7.0]},
    ]
    assert rows[0]["content"] == "8 4\nAssistant 1 used 8 words and Assistant 2 used 4."
    # each line records the hash of the request it answers (what resuming compares)
    assert set(server.answered()[0]) == {"model", "messages", "temperature", "max_tokens"}
    assert [r["judge_request_sha256"] for r in rows] == [
        hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        for body in server.answered()]
    assert not list(output.parent.glob(".*"))  # no progress log or temporary file left behind

    summary = _run("llava.eval.summarize_gpt_review", "-f", output, env=_env())
    assert summary.returncode == 0, summary.stderr
    assert _summary_lines(summary.stdout) == ["tiny", *SUMMARY, SEPARATOR]


def test_reviews_resume_and_follow_changed_answers(bench, tmp_path):
    output = tmp_path / "reviews" / "tiny.jsonl"
    with ChatServer(review_reply) as server:
        assert _review(bench, output, server).returncode == 0
        first = output.read_text()
        # the same command again: every review is kept, nothing is asked
        again = _review(bench, output, server)
        assert again.returncode == 0, again.stderr
        assert len(server.answered()) == 4 and output.read_text() == first
        # review lines as upstream writes them (no request hash): kept when the question and answer ids match
        _write_jsonl(output, [{k: v for k, v in r.items() if k != "judge_request_sha256"} for r in _read_jsonl(output)])
        again = _review(bench, output, server)
        assert again.returncode == 0, again.stderr
        assert len(server.answered()) == 4 and output.read_text() == first
        # answered again (new answer_ids everywhere), with a new text for question 2: only that one is asked again
        write_model_answers(bench, [MODEL[0], MODEL[1], "A stop sign in front of some trees.", MODEL[3]], tag="b")
        changed = _review(bench, output, server)
    assert changed.returncode == 0, changed.stderr
    assert len(server.answered()) == 5
    assert "[Assistant 2]\nA stop sign in front of some trees.\n\n" in server.answered()[4]["messages"][1]["content"]
    rows = _read_jsonl(output)
    assert [r["tuple"] for r in rows] == [[8.0, 4.0], [6.0, 6.0], [10.0, 8.0], [10.0, 7.0]]
    assert [r["answer2_id"] for r in rows] == ["m-0b", "m-1b", "m-2b", "m-3b"]  # reused rows carry the new ids


def test_an_interrupted_review_keeps_its_progress(bench, tmp_path):
    output = tmp_path / "reviews" / "tiny.jsonl"
    with ChatServer(review_reply, fail=lambda index: index >= 2) as server:  # down after two reviews
        result = _review(bench, output, server, "--max-retries", "1")
    assert result.returncode == 1
    assert [r["status"] for r in server.requests] == [200, 200, 500, 500]  # the third request and its one retry
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("error: the judge at ") and "answered HTTP 500" in err and "question_id 2" in err
    assert "run the same command again" in err and "Traceback" not in result.stderr
    assert not output.exists()  # no review file that looks complete
    log = output.parent / ".tiny.jsonl.progress.jsonl"
    assert [r["question_id"] for r in _read_jsonl(log)] == [0, 1]

    with log.open("a") as f:  # a line cut short by a crash is dropped, not fatal
        f.write('{"id": 3, "question_id": 2, "answ')
    with ChatServer(review_reply) as server:
        result = _review(bench, output, server)
    assert result.returncode == 0, result.stderr
    asked = [b["messages"][1]["content"].split("[Question]\n")[1].split("\n")[0] for b in server.answered()]
    assert asked == ["Describe the photo in detail.", "Why might the car be parked here?"]
    assert [r["tuple"] for r in _read_jsonl(output)] == [[8.0, 4.0], [6.0, 6.0], [10.0, 5.0], [10.0, 7.0]]
    assert not log.exists()


def test_unparsable_reviews_are_marked_counted_and_asked_again(bench, tmp_path):
    output = tmp_path / "reviews" / "tiny.jsonl"
    write_model_answers(bench, [MODEL[0], "UNPARSABLE " + MODEL[1], MODEL[2], MODEL[3]])
    with ChatServer(review_reply) as server:
        result = _review(bench, output, server)
        assert result.returncode == 1
        err = result.stderr.strip().splitlines()
        assert any("question_id 1" in line and "not two scores" in line for line in err)  # logged when it came
        assert err[-1] == (f"error: 1 of 4 review(s) in {output} do not start with two scores (question_id 1): "
                           "their tuple is [-1, -1]; run the same command again to ask for those reviews again")
        rows = _read_jsonl(output)
        assert [r["tuple"] for r in rows] == [[8.0, 4.0], [-1, -1], [10.0, 5.0], [10.0, 7.0]]
        assert rows[1]["content"].startswith("I would rather not give numbers.")

        summary = _run("llava.eval.summarize_gpt_review", "-f", output, env=_env())
        # left out of the means, and said so (upstream averaged the -1s in):
        #   all [8,4] [10,5] [10,7]: means 9.333, 5.333 -> 57.1 (57.141...) 93.3 53.3; conv [8,4] -> 50.0 80.0 40.0
        assert summary.returncode == 1
        assert _summary_lines(summary.stdout) == [
            "tiny", "all 57.1 93.3 53.3", "llava_bench_complex 70.0 100.0 70.0", "llava_bench_conv 50.0 80.0 40.0",
            "llava_bench_detail 50.0 100.0 50.0",
            "not counted: 1 review(s) whose scores could not be parsed (question_id 1); run "
            "llava.eval.eval_gpt_review_bench again to ask for them again", SEPARATOR]

        again = _review(bench, output, server)  # only the unparsed one is asked again
    assert again.returncode == 1 and len(server.answered()) == 5
    assert "UNPARSABLE" in server.answered()[4]["messages"][1]["content"]


def test_review_without_a_key_is_a_one_line_error(bench, tmp_path):
    output = tmp_path / "reviews" / "tiny.jsonl"
    with ChatServer(review_reply) as server:
        result = _review(bench, output, server, key=None)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: OPENAI_API_KEY is not set: the judge needs an API key for OpenAI, or for any chat-completions "
        "server named by OPENAI_BASE_URL (e.g. OPENAI_BASE_URL=http://127.0.0.1:8000/v1)"]
    assert server.requests == [] and not output.exists()


def test_review_input_mistakes(bench, tmp_path, capsys):
    output = tmp_path / "reviews" / "tiny.jsonl"

    def run(*extra):
        rc = eval_gpt_review_bench.main([str(a) for a in [*review_args(bench, output), *extra]])
        return rc, capsys.readouterr().err

    _write_jsonl(bench / "answers" / "tiny.jsonl", [{"question_id": i, "text": t} for i, t in enumerate(MODEL[:3])]
                 + [{"question_id": "3", "text": MODEL[3]}])
    rc, err = run()
    assert rc == 2
    answers, questions = bench / "answers" / "tiny.jsonl", bench / "questions.jsonl"
    assert (f"{answers}: 1 answer(s) for ids that are not in {questions}: line 4: question_id '3'; and no answer "
            f"for 1 id(s) of {questions}: question_id 3 (line 4) (ids are compared with their JSON type") in err
    write_model_answers(bench, MODEL)

    _write_jsonl(bench / "questions.jsonl", QUESTIONS[:3] + [{**QUESTIONS[3], "category": "poem"}])
    rc, err = run()
    assert rc == 2 and "questions.jsonl:4: question_id 3: category 'poem' has no rule 'llava_bench_poem'" in err

    rc, err = run("--answer-list", bench / "answers" / "tiny.jsonl")
    assert rc == 2 and "--answer-list takes two answer files" in err
    assert not output.exists()


def test_summary_finds_and_filters_review_files_as_upstream(tmp_path, capsys):
    folder = tmp_path / "out"
    rows = [{"question_id": 1, "category": "llava_bench_conv", "tuple": [8, 6]},
            {"question_id": 2, "category": "llava_bench_conv", "tuple": [6, 3]}]
    _write_jsonl(folder / "review_a-0613.jsonl", rows)
    _write_jsonl(folder / "gpt4_text_b.jsonl", [{"question_id": 1, "score": [4, 5]}])  # an older review format
    _write_jsonl(folder / "other.jsonl", rows)  # neither review_, reviews_ nor gpt4_text, in a folder not named so
    (folder / "notes.txt").write_text("not a review")

    def run(*argv):
        rc = summarize_gpt_review.main([str(a) for a in argv])
        return rc, capsys.readouterr()

    rc, out = run("-d", folder)
    # a: means 7.0, 4.5 -> 64.3 (64.285...) 70.0 45.0; b: 4, 5 -> 125.0 40.0 50.0
    assert rc == 0 and out.out.splitlines() == [
        "b", "all 125.0 40.0 50.0", SEPARATOR,
        "review_a-0613", "all 64.3 70.0 45.0", "llava_bench_conv 64.3 70.0 45.0", SEPARATOR]
    rc, out = run("-d", folder, "-v", "0613", "-i", "2")  # only the 0613 judge's file, question 2 left out
    assert rc == 0 and out.out.splitlines() == [
        "review_a-0613", "all 75.0 80.0 60.0", "llava_bench_conv 75.0 80.0 60.0", SEPARATOR]
    rc, out = run("-d", folder, "-s", "b")
    assert rc == 0 and out.out.splitlines()[0] == "b"
    rc, out = run("-f", folder / "notes.txt")
    assert rc == 2 and "notes.txt:1: not valid JSON" in out.err
    rc, out = run("-d", folder, "-s", "nothing-matches")
    assert rc == 2 and "no review files to summarize" in out.err


# --- MM-Vet ---------------------------------------------------------------------------------------------------

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
    return _run("llava.eval.eval_mmvet", "--mmvet-path", root, "--result-file", root / "results" / "tiny.json",
                *extra, env=_env(server, key))


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
        result = _run("llava.eval.eval_mmvet", "--mmvet_path", mmvet, *args, env=_env(server))
        assert result.returncode == 0, result.stderr
        assert len(server.answered()) == 18
        # run 2 grades v1_0 0.3: totals 55.0 and 50.0 -> 52.5, std 2.5; rec (50.0 + 43.33) / 2 -> 46.7
        cap = results / "tiny_gpt-4-0613-cap-score-2runs.csv"
        assert _csv_lines(cap) == [",rec,ocr,know,gen,math,total,std,runs",
                                   'tiny,46.7,85.0,0.0,0.0,70.0,52.5,2.5,"[55.0, 50.0]"']
        assert _csv_lines(results / "tiny_gpt-4-0613-cap-int-score-2runs.csv") == [
            ",rec,rec_ocr,rec_know_gen,ocr_math,total,std,runs", 'tiny,40.0,100.0,0.0,70.0,52.5,2.5,"[55.0, 50.0]"']

        again = _run("llava.eval.eval_mmvet", "--mmvet_path", mmvet, *args, env=_env(server))
        assert again.returncode == 0 and len(server.answered()) == 18  # nothing asked again

        (results / "tiny.json").write_text(json.dumps({**PREDICTIONS, "v1_1": "a STOP sign"}))  # now graded 0.0
        changed = _run("llava.eval.eval_mmvet", "--mmvet_path", mmvet, *args, env=_env(server))
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
    assert [r["id"] for r in _read_jsonl(results / ".tiny_gpt-4-0613-grade-1runs.json.progress.jsonl")] == [
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


# --- model_qa -------------------------------------------------------------------------------------------------


def _greedy(loaded, prompt: str, max_new_tokens: int) -> str:
    """The oracle: a plain greedy loop on the language model, one token at a time."""
    tokenizer, model, _, _ = loaded
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    new = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_model_qa_answers_text_questions(tiny_checkpoint, tiny_loaded, tmp_path):
    questions = _write_jsonl(tmp_path / "qa.jsonl", [
        {"question_id": 7, "text": "What is a cat?", "category": "generic"},
        {"question_id": "q2", "text": "Name a colour."}])
    answers = tmp_path / "out" / "answers.jsonl"
    result = _run("llava.eval.model_qa", "--model-name", tiny_checkpoint, "--question-file", questions,
                  "--answers-file", answers, "--temperature", "0", "--max_new_tokens", "4", "--device", "cpu",
                  env=_env(key=None))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _read_jsonl(answers)
    assert [(r["question_id"], r["prompt"], r["model_id"], r["metadata"]) for r in rows] == [
        (7, "What is a cat?", "llava-v1.5-tiny", {}), ("q2", "Name a colour.", "llava-v1.5-tiny", {})]
    assert [list(r) for r in rows] == [["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]] * 2
    assert len({r["answer_id"] for r in rows}) == 2 and all(r["text"] for r in rows)
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
    assert [r["text"] for r in rows] == [_greedy(tiny_loaded, f"{system} USER: {q} ASSISTANT:", 4)
                                         for q in ("What is a cat?", "Name a colour.")]


def test_model_qa_refuses_image_questions_before_loading(tmp_path, capsys):
    questions = _write_jsonl(tmp_path / "qa.jsonl", [{"question_id": 1, "text": "<image>\nWhat is this?"}])
    rc = model_qa.main(["--model-path", str(tmp_path / "no-model"), "--question-file", str(questions),
                        "--answers-file", str(tmp_path / "a.jsonl")])
    assert rc == 2 and "question_id 1: the text has an <image> token" in capsys.readouterr().err


# --- scripts --------------------------------------------------------------------------------------------------


def _script(name: str, env: dict[str, str], *args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / f"{name}.sh"), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)


def test_llavabench_says_what_is_missing(tmp_path):
    result = _script("llavabench", _env(key=None, EVAL_DIR=str(tmp_path / "eval"), CKPT="tiny"))
    bench = tmp_path / "eval" / "llava-bench-in-the-wild"
    assert result.returncode == 2
    assert result.stderr.splitlines()[:6] == [
        "llavabench.sh: cannot run, missing:", f"  {bench}/questions.jsonl", f"  {bench}/images/",
        f"  {bench}/context.jsonl", f"  {bench}/answers_gpt4.jsonl",
        "  OPENAI_API_KEY is not set (the judge's API key; OPENAI_BASE_URL names another chat-completions server; "
        "ANSWER_ONLY=1 only answers)"]
    assert not (tmp_path / "eval").exists()  # nothing ran


def _llavabench_data(root: Path) -> Path:
    bench = root / "llava-bench-in-the-wild"
    (bench / "images").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(bench / "images" / "001.jpg")
    Image.new("RGB", (30, 44), (10, 10, 200)).save(bench / "images" / "002.jpg")
    questions = QUESTIONS[:3]
    _write_jsonl(bench / "questions.jsonl", questions)
    _write_jsonl(bench / "context.jsonl", CONTEXT)
    _write_jsonl(bench / "answers_gpt4.jsonl", [{"question_id": q["question_id"], "text": REFERENCE[i],
                                                 "answer_id": f"gpt4-{i}"} for i, q in enumerate(questions)])
    return bench


def test_llavabench_runs_the_whole_chain(tiny_checkpoint, tmp_path):
    bench = _llavabench_data(tmp_path / "eval")
    (bench / "context.jsonl").unlink()
    env = {"EVAL_DIR": str(tmp_path / "eval"), "CKPT": "tiny", "MODEL_PATH": str(tiny_checkpoint)}
    result = _script("llavabench", _env(key="test", **env))  # the key is there, the context is not
    assert result.returncode == 2 and result.stderr.splitlines()[:2] == [
        "llavabench.sh: cannot run, missing:", f"  {bench}/context.jsonl"]
    _write_jsonl(bench / "context.jsonl", CONTEXT)

    with ChatServer(lambda body, seen: "10 5\nThe second answer is shorter.") as server:
        result = _script("llavabench", _env(server, **env), "--device", "cpu", "--max_new_tokens", "3")
        assert result.returncode == 0, result.stderr[-3000:]
        answers = _read_jsonl(bench / "answers" / "tiny.jsonl")
        assert [a["question_id"] for a in answers] == [0, 1, 2]
        contents = [b["messages"][1]["content"] for b in server.answered()]
        assert len(contents) == 3
        for answer, content in zip(answers, contents):  # the judge read this run's answers
            assert f"[Assistant 2]\n{answer['text']}\n\n[End of Assistant 2]" in content
        assert [r["tuple"] for r in _read_jsonl(bench / "reviews" / "tiny.jsonl")] == [[10.0, 5.0]] * 3
        summary = ["tiny", "all 50.0 100.0 50.0", "llava_bench_conv 50.0 100.0 50.0",
                   "llava_bench_detail 50.0 100.0 50.0", SEPARATOR]
        assert _summary_lines(result.stdout)[-5:] == summary

        # again on the same answers: no model, no judge requests, the same scores
        again = _script("llavabench", _env(server, SKIP_ANSWER="1", **env))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(server.answered()) == 3 and _summary_lines(again.stdout) == summary


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
        env = _env(key=key, EVAL_DIR=str(tmp_path / "eval"), CKPT="tiny", FAKE_LOG=str(log))
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        result = _script("mmvet", env)
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
