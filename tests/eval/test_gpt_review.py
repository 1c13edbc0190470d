"""The LLaVA-Bench judge against a real chat-completions server on 127.0.0.1 (tests/eval/chat_server.py): reviews
(eval_gpt_review_bench), their summary (summarize_gpt_review) and the script llavabench.sh. The MM-Vet grader is
tested in test_mmvet_grader.py, the text-only answerer in test_model_qa.py.

The judged CLIs run as real processes with OPENAI_BASE_URL / OPENAI_API_KEY pointing at the test server, whose
replies are computed from each request (scores from the answers' word counts), so every expected number below is
worked out by hand from the data in this file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from chat_server import ChatServer
from judge_helpers import REPO, env_for, read_jsonl, run_module, run_script, write_jsonl
from PIL import Image

from llava.eval import eval_gpt_review_bench, summarize_gpt_review

RULE_FILE = REPO / "llava" / "eval" / "table" / "rule.json"
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
SEPARATOR = "================================="



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
    write_jsonl(root / "questions.jsonl", QUESTIONS)
    write_jsonl(root / "context.jsonl", CONTEXT)
    write_jsonl(root / "answers_gpt4.jsonl", [
        {"question_id": q["question_id"], "prompt": q["text"], "text": t, "answer_id": f"gpt4-{i}",
         "model_id": "gpt-4-0314", "metadata": {}} for i, (q, t) in enumerate(zip(QUESTIONS, REFERENCE))])
    write_model_answers(root, MODEL)
    return root


def write_model_answers(root: Path, texts: list[str], tag: str = "") -> Path:
    return write_jsonl(root / "answers" / "tiny.jsonl", [
        {"question_id": q["question_id"], "prompt": q["text"], "text": t, "answer_id": f"m-{i}{tag}",
         "model_id": "llava-v1.5-tiny", "metadata": {}} for i, (q, t) in enumerate(zip(QUESTIONS, texts))])


def review_args(root: Path, output: Path, *extra) -> list:
    return ["--question", root / "questions.jsonl", "--context", root / "context.jsonl", "--rule", RULE_FILE,
            "--answer-list", root / "answers_gpt4.jsonl", root / "answers" / "tiny.jsonl", "--output", output, *extra]


def _review(root, output, server, *extra, key="test"):
    return run_module("llava.eval.eval_gpt_review_bench", *review_args(root, output, *extra), env=env_for(server, key))


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

    rows = read_jsonl(output)
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

    summary = run_module("llava.eval.summarize_gpt_review", "-f", output, env=env_for())
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
        write_jsonl(output, [{k: v for k, v in r.items() if k != "judge_request_sha256"} for r in read_jsonl(output)])
        again = _review(bench, output, server)
        assert again.returncode == 0, again.stderr
        assert len(server.answered()) == 4 and output.read_text() == first
        # answered again (new answer_ids everywhere), with a new text for question 2: only that one is asked again
        write_model_answers(bench, [MODEL[0], MODEL[1], "A stop sign in front of some trees.", MODEL[3]], tag="b")
        changed = _review(bench, output, server)
    assert changed.returncode == 0, changed.stderr
    assert len(server.answered()) == 5
    assert "[Assistant 2]\nA stop sign in front of some trees.\n\n" in server.answered()[4]["messages"][1]["content"]
    rows = read_jsonl(output)
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
    assert [r["question_id"] for r in read_jsonl(log)] == [0, 1]

    with log.open("a") as f:  # a line cut short by a crash is dropped, not fatal
        f.write('{"id": 3, "question_id": 2, "answ')
    with ChatServer(review_reply) as server:
        result = _review(bench, output, server)
    assert result.returncode == 0, result.stderr
    asked = [b["messages"][1]["content"].split("[Question]\n")[1].split("\n")[0] for b in server.answered()]
    assert asked == ["Describe the photo in detail.", "Why might the car be parked here?"]
    assert [r["tuple"] for r in read_jsonl(output)] == [[8.0, 4.0], [6.0, 6.0], [10.0, 5.0], [10.0, 7.0]]
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
        rows = read_jsonl(output)
        assert [r["tuple"] for r in rows] == [[8.0, 4.0], [-1, -1], [10.0, 5.0], [10.0, 7.0]]
        assert rows[1]["content"].startswith("I would rather not give numbers.")

        summary = run_module("llava.eval.summarize_gpt_review", "-f", output, env=env_for())
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

    write_jsonl(bench / "answers" / "tiny.jsonl", [{"question_id": i, "text": t} for i, t in enumerate(MODEL[:3])]
                 + [{"question_id": "3", "text": MODEL[3]}])
    rc, err = run()
    assert rc == 2
    answers, questions = bench / "answers" / "tiny.jsonl", bench / "questions.jsonl"
    assert (f"{answers}: 1 answer(s) for ids that are not in {questions}: line 4: question_id '3'; and no answer "
            f"for 1 id(s) of {questions}: question_id 3 (line 4) (ids are compared with their JSON type") in err
    write_model_answers(bench, MODEL)

    write_jsonl(bench / "questions.jsonl", QUESTIONS[:3] + [{**QUESTIONS[3], "category": "poem"}])
    rc, err = run()
    assert rc == 2 and "questions.jsonl:4: question_id 3: category 'poem' has no rule 'llava_bench_poem'" in err

    rc, err = run("--answer-list", bench / "answers" / "tiny.jsonl")
    assert rc == 2 and "--answer-list takes two answer files" in err
    assert not output.exists()


def test_summary_finds_and_filters_review_files_as_upstream(tmp_path, capsys):
    folder = tmp_path / "out"
    rows = [{"question_id": 1, "category": "llava_bench_conv", "tuple": [8, 6]},
            {"question_id": 2, "category": "llava_bench_conv", "tuple": [6, 3]}]
    write_jsonl(folder / "review_a-0613.jsonl", rows)
    write_jsonl(folder / "gpt4_text_b.jsonl", [{"question_id": 1, "score": [4, 5]}])  # an older review format
    write_jsonl(folder / "other.jsonl", rows)  # neither review_, reviews_ nor gpt4_text, in a folder not named so
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


# --- scripts --------------------------------------------------------------------------------------------------


def test_llavabench_says_what_is_missing(tmp_path):
    result = run_script("llavabench", env_for(key=None, EVAL_DIR=str(tmp_path / "eval"), CKPT="tiny"))
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
    write_jsonl(bench / "questions.jsonl", questions)
    write_jsonl(bench / "context.jsonl", CONTEXT)
    write_jsonl(bench / "answers_gpt4.jsonl", [{"question_id": q["question_id"], "text": REFERENCE[i],
                                                 "answer_id": f"gpt4-{i}"} for i, q in enumerate(questions)])
    return bench


def test_llavabench_runs_the_whole_chain(tiny_checkpoint, tmp_path):
    bench = _llavabench_data(tmp_path / "eval")
    (bench / "context.jsonl").unlink()
    env = {"EVAL_DIR": str(tmp_path / "eval"), "CKPT": "tiny", "MODEL_PATH": str(tiny_checkpoint)}
    result = run_script("llavabench", env_for(key="test", **env))  # the key is there, the context is not
    assert result.returncode == 2 and result.stderr.splitlines()[:2] == [
        "llavabench.sh: cannot run, missing:", f"  {bench}/context.jsonl"]
    write_jsonl(bench / "context.jsonl", CONTEXT)

    with ChatServer(lambda body, seen: "10 5\nThe second answer is shorter.") as server:
        result = run_script("llavabench", env_for(server, **env), "--device", "cpu", "--max_new_tokens", "3")
        assert result.returncode == 0, result.stderr[-3000:]
        answers = read_jsonl(bench / "answers" / "tiny.jsonl")
        assert [a["question_id"] for a in answers] == [0, 1, 2]
        contents = [b["messages"][1]["content"] for b in server.answered()]
        assert len(contents) == 3
        for answer, content in zip(answers, contents):  # the judge read this run's answers
            assert f"[Assistant 2]\n{answer['text']}\n\n[End of Assistant 2]" in content
        assert [r["tuple"] for r in read_jsonl(bench / "reviews" / "tiny.jsonl")] == [[10.0, 5.0]] * 3
        summary = ["tiny", "all 50.0 100.0 50.0", "llava_bench_conv 50.0 100.0 50.0",
                   "llava_bench_detail 50.0 100.0 50.0", SEPARATOR]
        assert _summary_lines(result.stdout)[-5:] == summary

        # again on the same answers: no model, no judge requests, the same scores
        again = run_script("llavabench", env_for(server, SKIP_ANSWER="1", **env))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(server.answered()) == 3 and _summary_lines(again.stdout) == summary
