"""A user's mistake at any entry point (model_vqa*, run_llava, llava.serve.cli) is one ``error: ...`` line naming the
flag, value, file or field, exit status 2 and no traceback: flags are checked before any model is loaded, broken
checkpoint files are named by the loader.

Each kind of mistake runs once as a real ``python -m ...`` process (two at a time: an import costs ~7 s of CPU);
the same flag checks on every entry point run in-process through ``main(argv)``."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llava.eval import model_vqa, model_vqa_loader, model_vqa_mmbench, model_vqa_science, run_llava
from llava.serve import cli

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "assets" / "demo.png")
MMB_TSV = str(REPO / "playground" / "data" / "eval" / "mmbench" / "mmbench_dev_20230712.tsv")


@pytest.fixture(scope="module")
def broken(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """Copies of the tiny checkpoint, each with one file broken (the folder names keep "llava")."""
    root = tmp_path_factory.mktemp("broken")
    folders = {name: Path(shutil.copytree(tiny_checkpoint, root / f"llava-v1.5-tiny-{name}"))
               for name in ("config", "weights", "tokenizer")}
    (folders["config"] / "config.json").write_text("[]\n")
    weights = folders["weights"] / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    (folders["tokenizer"] / "tokenizer.model").unlink()
    return folders


def _cases(never: str, broken: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """name -> (``python -m`` arguments, the text the one error line must hold)."""
    return {
        "conv_mode": (["llava.eval.model_vqa", "--model-path", never, "--conv-mode", "vicuna_v9"],
                      "error: unknown --conv-mode 'vicuna_v9'; valid modes are "),
        "device": (["llava.eval.run_llava", "--model-path", never, "--image-file", DEMO, "--query", "x",
                    "--device", "tpu"], "error: unknown --device 'tpu'; expected cuda, cuda:N, cpu or mps"),
        "num_beams": (["llava.eval.model_vqa_science", "--model-path", never, "--num_beams", "0"],
                      "error: --num_beams must be at least 1, got 0"),
        "image_file": (["llava.serve.cli", "--model-path", never, "--image-file", ","],
                       "error: --image-file ',': path 1 of 2 is empty (paths are separated by ',')"),
        "quantization": (["llava.eval.model_vqa_loader", "--model-path", never, "--load-8bit", "--load-4bit"],
                         "error: --load-8bit and --load-4bit exclude each other"),
        "config_not_object": (["llava.eval.model_vqa_mmbench", "--model-path", str(broken["config"]),
                               "--question-file", MMB_TSV, "--answers-file", str(broken["config"] / "a.jsonl"),
                               "--device", "cpu"],
                              f"error: {broken['config'] / 'config.json'} must hold a JSON object (the model's "
                              "settings), got a list"),
        "truncated_weights": (["llava.eval.run_llava", "--model-path", str(broken["weights"]), "--image-file", DEMO,
                               "--query", "x", "--device", "cpu"],
                              f"error: {broken['weights'] / 'model.safetensors'} is not a readable safetensors file"),
        "missing_tokenizer": (["llava.serve.cli", "--model-path", str(broken["tokenizer"]), "--image-file", DEMO,
                               "--device", "cpu"],
                              f"error: {broken['tokenizer']} has no tokenizer.model (nor tokenizer.json)"),
    }


@pytest.fixture(scope="module")
def processes(broken, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, str]]:
    never = str(tmp_path_factory.mktemp("nothing") / "never-loaded")
    cases = _cases(never, broken)

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, cwd=REPO)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, argv) for name, (argv, _) in cases.items()}
    return {name: (futures[name].result(), cases[name][1]) for name in cases}


@pytest.mark.parametrize("name", ["conv_mode", "device", "num_beams", "image_file", "quantization",
                                  "config_not_object", "truncated_weights", "missing_tokenizer"])
def test_mistake_as_a_real_process_is_one_error_line_and_exit_2(processes, name):
    proc, expected = processes[name]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), proc.stderr[-3000:]


# --- the same flag checks on every entry point, in-process ------------------------------------------------------

ENTRY_POINTS = {
    "model_vqa": (model_vqa.main, []),
    "model_vqa_loader": (model_vqa_loader.main, []),
    "model_vqa_science": (model_vqa_science.main, []),
    "model_vqa_mmbench": (model_vqa_mmbench.main, []),
    "run_llava": (run_llava.main, ["--image-file", DEMO, "--query", "x"]),
    "cli": (cli.main, ["--image-file", DEMO]),
}
FLAG_MISTAKES = {
    "conv_mode": (["--conv-mode", "nope"], "error: unknown --conv-mode 'nope'"),
    "device": (["--device", "tpu"], "error: unknown --device 'tpu'"),
    "num_beams": (["--num_beams", "0"], "error: --num_beams must be at least 1, got 0"),
    "max_new_tokens": (["--max_new_tokens", "0"], "error: --max_new_tokens must be at least 1, got 0"),
}


# the terminal chat has no --num_beams (as upstream): that pair is not a case
FLAG_CASES = [(entry, mistake) for entry in sorted(ENTRY_POINTS) for mistake in sorted(FLAG_MISTAKES)
              if (entry, mistake) != ("cli", "num_beams")]


@pytest.mark.parametrize(("entry", "mistake"), FLAG_CASES)
def test_flag_mistakes_are_caught_before_the_model_loads(entry, mistake, tmp_path, capsys):
    main, required = ENTRY_POINTS[entry]
    flags, expected = FLAG_MISTAKES[mistake]
    if entry == "cli":
        flags = ["--max-new-tokens", "0"] if mistake == "max_new_tokens" else flags
        expected = expected.replace("--max_new_tokens", "--max-new-tokens")
    never = tmp_path / "never-loaded"  # the flag is named, not this missing checkpoint
    assert main(["--model-path", str(never), *required, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1 and "never-loaded" not in err, err


def test_run_llava_refuses_an_empty_image_path(tmp_path, capsys):
    cases = ((",", "path 1 of 2 is empty"), (f"{DEMO},", "path 2 of 2 is empty"), ("", "the path is empty"))
    for value, where in cases:
        assert run_llava.main(["--model-path", str(tmp_path / "never-loaded"), "--image-file", value,
                               "--query", "x"]) == 2
        assert capsys.readouterr().err == f"error: --image-file {value!r}: {where} (paths are separated by ',')\n"


@pytest.mark.parametrize("main", [model_vqa_science.main, model_vqa_mmbench.main], ids=["science", "mmbench"])
def test_quantization_flags_exist_on_every_answering_script(main, tmp_path, capsys):
    assert main(["--model-path", str(tmp_path / "never-loaded"), "--load-4bit", "--load-8bit"]) == 2
    assert capsys.readouterr().err.startswith("error: --load-8bit and --load-4bit exclude each other")


def test_load_4bit_reaches_the_loader(tiny_checkpoint, tmp_path, caplog):
    """bitsandbytes 0.50 runs 4-bit on the CPU: the run answers, and the loader says it quantised."""
    import json

    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "image": DEMO, "text": "What is it?"}) + "\n")
    answers = tmp_path / "a.jsonl"
    with caplog.at_level(logging.INFO):
        assert model_vqa.main(["--model-path", str(tiny_checkpoint), "--question-file", str(tmp_path / "q.jsonl"),
                               "--answers-file", str(answers), "--device", "cpu", "--temperature", "0",
                               "--max_new_tokens", "2", "--load-4bit"]) == 0
    assert any(r.getMessage().startswith("quantising the language model to 4 bits (nf4) with bitsandbytes")
               for r in caplog.records)
    assert answers.is_file()
