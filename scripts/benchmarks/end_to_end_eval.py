"""Eval throughput of ``llava.eval.model_vqa_loader`` at ``--batch-size`` 1 and 8 (``bench_end_to_end.py``): the
same generated question file answered in-process at each batch size and reduction mode, greedy; a batched run
must give exactly the answers of batch 1.

The model is a checkpoint written by ``make_tiny_checkpoint``, not the full shapes (those would take many minutes
per run on a CPU). The default, "medium" (CLIP width 256 x 4 layers at the real 336 px / patch 14 grid, LM width
1024 x 8 layers), keeps LLaVA-1.5-7B's proportions where batching is decided: the LM has ~30x the tower's
parameters (7B: 6.7 B against 0.3 B), so, as in the real model, decoding (memory-bound, which batching speeds up)
outweighs the tower (compute-bound, which on a CPU gains nothing from a batch). "small" (LM 512 x 4, ~4x the
tower) shows the other end.
``eval_model`` loads its model first; that load is timed alone and taken off each run's time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from bench_timing import timed
from end_to_end_model import demo_images

__all__ = ["EVAL_SIZES", "bench_eval", "write_questions"]

DEMO_QUESTIONS = ("What is shown in this image?", "Describe the image in detail.", "What colour is the sky?",
                  "How many people are there?")
IMAGE_SIZES = ((500, 375), (640, 480), (336, 336), (420, 600), (800, 450))
_VISION = dict(vision_width=256, vision_layers=4, vision_heads=4)
EVAL_SIZES = {  # make_tiny_checkpoint.TinySizes fields
    "tiny": {},
    "small": dict(**_VISION, lm_width=512, lm_layers=4, lm_heads=8, lm_kv_heads=8),
    "medium": dict(**_VISION, lm_width=1024, lm_layers=8, lm_heads=16, lm_kv_heads=16),
}


def write_questions(folder: Path, count: int) -> tuple[Path, Path]:
    """``count`` questions (``model_vqa_loader``'s JSONL) on views of the demo image at five sizes, so PruMerge keeps
    different counts per image. Returns ``(question file, image folder)``."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, image in enumerate(demo_images(count)):
        name = f"{i}.png"
        image.resize(IMAGE_SIZES[i % len(IMAGE_SIZES)]).save(images / name)
        lines.append(json.dumps({"question_id": i, "image": name, "text": DEMO_QUESTIONS[i % len(DEMO_QUESTIONS)]}))
    questions = folder / "questions.jsonl"
    questions.write_text("\n".join(lines) + "\n")
    return questions, images


def _read_answers(path: Path) -> tuple[dict, list[int]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["question_id"]: r["text"] for r in records}, [r["metadata"]["visual_tokens"][0] for r in records]


def bench_eval(args: argparse.Namespace, folder: Path, bar: tqdm) -> tuple[dict, Callable[[], None]]:
    """``model_vqa_loader.eval_model`` at each of ``args.eval_batch_sizes`` for each of ``args.eval_modes``.

    Returns:
        ``(result, profile_call)``. ``result``: ``{"size", "sizes", "questions", "new_tokens", "load_s", "modes":
        {mode: {"runs": {batch: {"seconds", "answer_seconds", "questions_per_s", "answers", "visual_tokens"}},
        "identical", "speedup"}}, "identical", "primary", "speedup"}``: ``identical`` holds for every mode;
        ``speedup`` (largest batch / smallest, in questions per second) is that of the ``primary`` mode, "prumerge"
        (the package's default reduction) when it ran, else the first mode.
        ``profile_call`` runs the primary mode at the largest batch size once more, for a profile.
    """
    from llava.eval import model_vqa_loader
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model
    from llava.tools.make_tiny_checkpoint import TinySizes, make_tiny_checkpoint

    sizes = TinySizes(**EVAL_SIZES[args.eval_size])
    bar.set_postfix_str(f"eval: {args.eval_size} checkpoint")
    checkpoint = make_tiny_checkpoint(folder / "ckpt", sizes=sizes, seed=args.seed)
    questions, images = write_questions(folder, args.eval_questions)
    device = "cuda" if args.device.type == "cuda" else "cpu"

    def run(batch: int, mode: str, answers: Path, question_file: Path = questions) -> None:
        model_vqa_loader.eval_model(model_vqa_loader.build_parser().parse_args([
            "--model-path", str(checkpoint), "--question-file", str(question_file), "--image-folder", str(images),
            "--answers-file", str(answers), "--temperature", "0", "--max_new_tokens", str(args.eval_new_tokens),
            "--conv-mode", "vicuna_v1", "--device", device, "--batch-size", str(batch), "--num-workers", "0",
            "--token-reduction", mode]))

    warm = folder / "warm.jsonl"
    warm.write_text("".join(questions.read_text().splitlines(keepends=True)[:2]))
    run(1, args.eval_modes[0], folder / "warm_answers.jsonl", warm)  # imports, first calls
    name = get_model_name_from_path(str(checkpoint))
    load = statistics.median(
        timed(lambda: load_pretrained_model(str(checkpoint), None, name, device=device, token_reduction="prumerge"),
              args.device)[0] for _ in range(2))
    modes = {}
    for mode in args.eval_modes:
        runs = {}
        for batch in args.eval_batch_sizes:
            bar.set_postfix_str(f"eval: model_vqa_loader --batch-size {batch} --token-reduction {mode}")
            answers_file = folder / f"answers_{mode}_b{batch}.jsonl"
            seconds, _ = timed(lambda: run(batch, mode, answers_file), args.device)
            answers, visual = _read_answers(answers_file)
            answering = max(seconds - load, 1e-9)
            runs[batch] = {"seconds": seconds, "answer_seconds": answering,
                           "questions_per_s": args.eval_questions / answering, "answers": answers,
                           "visual_tokens": visual}
            bar.update()
        base, top = runs[min(runs)], runs[max(runs)]
        modes[mode] = {"runs": runs, "identical": all(r["answers"] == base["answers"] for r in runs.values()),
                       "speedup": top["questions_per_s"] / base["questions_per_s"]}
    result = {"size": args.eval_size, "sizes": dataclasses.asdict(sizes), "questions": args.eval_questions,
              "new_tokens": args.eval_new_tokens, "load_s": load, "modes": modes,
              "identical": all(m["identical"] for m in modes.values()),
              "primary": "prumerge" if "prumerge" in modes else args.eval_modes[0]}
    result["speedup"] = modes[result["primary"]]["speedup"]

    def profile_call() -> None:
        run(max(args.eval_batch_sizes), result["primary"], folder / "profiled.jsonl")

    return result, profile_call
