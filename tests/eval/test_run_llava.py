"""run_llava: the README's entry point, on the tiny checkpoint (in-process, and once as a real subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from llava.eval import run_llava
from llava.eval.common import add_image_tokens, choose_conv_mode, infer_conv_mode

VISUAL_LINE = re.compile(r"^visual tokens: 576 -> (\d+(?:, \d+)*) \((none|prumerge|prumerge\+)\)$", re.M)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = run_llava.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_answers_and_reports_visual_tokens(capsys, tiny_checkpoint):
    rc, out, _ = _run(capsys, "--model-path", str(tiny_checkpoint), "--image-file", "assets/demo.png",
                      "--query", "What is shown?", "--max_new_tokens", "6", "--temperature", "0", "--device", "cpu")
    assert rc == 0
    match = VISUAL_LINE.search(out)
    assert match, out
    kept = int(match.group(1))
    assert match.group(2) == "prumerge"  # no flag, no config key, no "plus" in the name: the default
    assert 1 < kept < 576
    answer = out[: match.start()].strip()
    assert answer  # the random model still says something


@pytest.mark.parametrize("mode, expect", [("none", lambda n: n == 576), ("prumerge+", lambda n: 36 < n < 576)])
def test_token_reduction_flag(capsys, tiny_checkpoint, mode, expect):
    rc, out, _ = _run(capsys, "--model-path", str(tiny_checkpoint), "--image-file", "assets/demo.png",
                      "--query", "Describe.", "--max_new_tokens", "2", "--temperature", "0", "--device", "cpu",
                      "--token-reduction", mode)
    assert rc == 0
    match = VISUAL_LINE.search(out)
    assert match and match.group(2) == mode
    assert expect(int(match.group(1)))


def test_two_images_with_placeholders(capsys, tiny_checkpoint):
    rc, out, _ = _run(capsys, "--model-path", str(tiny_checkpoint), "--image-file", "assets/demo.png;assets/demo.png",
                      "--sep", ";", "--query", "Is <image-placeholder> the same as <image-placeholder>?",
                      "--max_new_tokens", "2", "--temperature", "0", "--device", "cpu", "--token-budget", "8")
    assert rc == 0
    match = VISUAL_LINE.search(out)
    assert match.group(1) == "9, 9"  # budget 8 centres + the extra token, for each image


def test_user_mistakes_are_one_line_errors(capsys, tiny_checkpoint, tmp_path):
    rc, _, err = _run(capsys, "--model-path", str(tiny_checkpoint), "--image-file", str(tmp_path / "missing.png"),
                      "--query", "x", "--device", "cpu")
    assert rc == 2 and "missing.png" in err and "Traceback" not in err

    rc, _, err = _run(capsys, "--model-path", str(tmp_path / "no-such-llava"), "--image-file", "assets/demo.png",
                      "--query", "x", "--device", "cpu")
    assert rc == 2 and "no-such-llava" in err

    rc, _, err = _run(capsys, "--model-path", str(tiny_checkpoint), "--image-file", "assets/demo.png",
                      "--query", "<image-placeholder> and <image-placeholder>", "--device", "cpu")
    assert rc == 2 and "2 <image-placeholder>" in err and "1 images" in err

    with pytest.raises(SystemExit):
        run_llava.main(["--model-path", str(tiny_checkpoint), "--image-file", "a.png", "--query", "x",
                        "--token-reduction", "tome"])
    err = capsys.readouterr().err
    assert "'none', 'prumerge', 'prumerge+'" in err


def test_as_a_real_process(tiny_checkpoint):
    proc = subprocess.run(
        [sys.executable, "-m", "llava.eval.run_llava", "--model-path", str(tiny_checkpoint), "--image-file",
         "assets/demo.png", "--query", "What is it?", "--max_new_tokens", "3", "--temperature", "0"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert VISUAL_LINE.search(proc.stdout)
    assert "token reduction: prumerge (adaptive, from default)" in proc.stderr  # logged once
    assert proc.stderr.count("token reduction:") == 1


def test_image_tokens_in_query():
    assert add_image_tokens("What?", 1, False) == "<image>\nWhat?"
    assert add_image_tokens("What?", 2, False) == "<image>\n<image>\nWhat?"
    assert add_image_tokens("What?", 1, True) == "<im_start><image><im_end>\nWhat?"
    assert add_image_tokens("A <image-placeholder> B", 1, False) == "A <image> B"
    assert add_image_tokens("<image>\nWhat?", 1, False) == "<image>\nWhat?"
    with pytest.raises(ValueError, match="has 1 <image> tokens but 2 images"):
        add_image_tokens("<image>\nWhat?", 2, False)


def test_conv_mode_from_name():
    assert infer_conv_mode("llava-v1.5-7b") == "llava_v1"
    assert infer_conv_mode("llava-llama-2-13b-chat") == "llava_llama_2"
    assert infer_conv_mode("llava-v1.6-mistral-7b") == "mistral_instruct"
    assert infer_conv_mode("llava-v1.6-34b") == "chatml_direct"
    assert infer_conv_mode("llava-mpt-7b") == "mpt"
    assert infer_conv_mode("llava-7b") == "llava_v0"
    assert choose_conv_mode("llava-v1.5-7b", "vicuna_v1") == "vicuna_v1"
    assert choose_conv_mode("llava-v1.5-7b", None) == "llava_v1"
