"""``python -m llava.serve.cli``: the interactive chat, fed through stdin, on the tiny checkpoint."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from llava.serve import cli

DEMO_IMAGE = Path(__file__).resolve().parents[2] / "assets" / "demo.png"


def run_chat(monkeypatch, capsys, lines: str, *extra: str, checkpoint) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    code = cli.main(["--model-path", str(checkpoint), "--image-file", str(DEMO_IMAGE), "--device", "cpu",
                     "--temperature", "0", "--max-new-tokens", "8", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_chat_two_turns_then_eof(monkeypatch, capsys, tiny_checkpoint, tiny_loaded, demo_image):
    code, out, _ = run_chat(monkeypatch, capsys, "What is in the image?\nAnd the colours?\n",
                            checkpoint=tiny_checkpoint)
    assert code == 0
    # the first answer is what the model says to the same prompt (greedy)
    tokenizer, model, image_processor, _ = tiny_loaded
    conv = conv_templates["llava_v1"].copy()  # "v1" in the checkpoint name
    conv.append_message(conv.roles[0], "<image>\nWhat is in the image?")
    conv.append_message(conv.roles[1], None)
    input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(input_ids.unsqueeze(0), images=process_images([demo_image], image_processor,
                                                                               model.config),
                                image_sizes=[demo_image.size], do_sample=False, max_new_tokens=8,
                                pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(output[0], skip_special_tokens=True).strip()
    kept = model.last_visual_token_counts[0]

    assert out.startswith("USER: ASSISTANT: ")
    assert answer and answer in out
    assert out.count("USER: ") == 3 and out.count("ASSISTANT: ") == 2  # two turns, then the prompt that got EOF
    assert out.count("visual tokens:") == 1
    assert f"visual tokens: 576 -> {kept} (prumerge)\n" in out
    assert out.index("visual tokens:") < out.index("ASSISTANT: ", out.index("ASSISTANT: ") + 1)  # after answer one
    assert out.rstrip().endswith("exit...")


def test_chat_without_reduction_and_empty_line_exits(monkeypatch, capsys, tiny_checkpoint):
    code, out, _ = run_chat(monkeypatch, capsys, "Hi\n\nnever read\n", "--token-reduction", "none",
                            checkpoint=tiny_checkpoint)
    assert code == 0
    assert "visual tokens: 576 -> 576 (none)\n" in out
    assert out.count("ASSISTANT: ") == 1 and "exit..." in out


def test_missing_image_is_reported(monkeypatch, capsys, tiny_checkpoint, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    code = cli.main(["--model-path", str(tiny_checkpoint), "--image-file", str(tmp_path / "nope.png")])
    assert code == 2
    assert "nope.png" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--load-8bit", "--load-4bit", "--debug"])
def test_parser_accepts_upstream_flags(flag):
    args = cli.build_parser().parse_args(["--model-path", "m", "--image-file", "x.png", flag])
    assert args.temperature == 0.2 and args.max_new_tokens == 512 and args.conv_mode is None


@pytest.mark.parametrize("argv, expected", [
    (["--image-file", ","], "--image-file ',': path 1 of 2 is empty (paths are separated by ',')"),
    (["--image-file", f"{DEMO_IMAGE},"], f"--image-file '{DEMO_IMAGE},': path 2 of 2 is empty"),
    (["--image-file", str(DEMO_IMAGE), "--conv-mode", "vicuna"], "unknown --conv-mode 'vicuna'; valid modes are "),
    (["--image-file", str(DEMO_IMAGE), "--device", "tpu"], "unknown --device 'tpu'; expected cuda, cuda:N, cpu"),
    (["--image-file", str(DEMO_IMAGE), "--load-8bit", "--load-4bit"], "--load-8bit and --load-4bit exclude each"),
])
def test_flag_mistakes_are_one_line_before_the_model_loads(monkeypatch, capsys, tmp_path, argv, expected):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    assert cli.main(["--model-path", str(tmp_path / "never-loaded"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err
