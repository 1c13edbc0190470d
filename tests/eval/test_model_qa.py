"""model_qa: upstream's text-only answerer, run as a real process on the tiny checkpoint; the oracle is a plain
greedy loop on the language model."""

from __future__ import annotations

import torch
from judge_helpers import env_for, read_jsonl, run_module, write_jsonl

from llava.eval import model_qa


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
    questions = write_jsonl(tmp_path / "qa.jsonl", [
        {"question_id": 7, "text": "What is a cat?", "category": "generic"},
        {"question_id": "q2", "text": "Name a colour."}])
    answers = tmp_path / "out" / "answers.jsonl"
    result = run_module("llava.eval.model_qa", "--model-name", tiny_checkpoint, "--question-file", questions,
                  "--answers-file", answers, "--temperature", "0", "--max_new_tokens", "4", "--device", "cpu",
                  env=env_for(key=None))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_jsonl(answers)
    assert [(r["question_id"], r["prompt"], r["model_id"], r["metadata"]) for r in rows] == [
        (7, "What is a cat?", "llava-v1.5-tiny", {}), ("q2", "Name a colour.", "llava-v1.5-tiny", {})]
    assert [list(r) for r in rows] == [["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]] * 2
    assert len({r["answer_id"] for r in rows}) == 2 and all(r["text"] for r in rows)
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
    assert [r["text"] for r in rows] == [_greedy(tiny_loaded, f"{system} USER: {q} ASSISTANT:", 4)
                                         for q in ("What is a cat?", "Name a colour.")]


def test_model_qa_refuses_image_questions_before_loading(tmp_path, capsys):
    questions = write_jsonl(tmp_path / "qa.jsonl", [{"question_id": 1, "text": "<image>\nWhat is this?"}])
    rc = model_qa.main(["--model-path", str(tmp_path / "no-model"), "--question-file", str(questions),
                        "--answers-file", str(tmp_path / "a.jsonl")])
    assert rc == 2 and "question_id 1: the text has an <image> token" in capsys.readouterr().err
