#!/usr/bin/env python
"""End to end: what PruMerge is run for. Time to first token (split into tower, reduction, projector and LM
prefill), decode speed at that context, KV-cache bytes, peak memory and ``model_vqa_loader`` throughput, for
LLaVA-1.5 (576 patches) and LLaVA-1.6 (672x672: 5 tiles, 2880 patches) on Vicuna-7B / 13B layer shapes; writes
the "End to end" section of ``docs/benchmarks.md`` and the plots ``docs/img/end_to_end_*.png``.

    python scripts/benchmarks/bench_end_to_end.py --quick     # CPU fp32, 1 LM layer, a subset (~9 min, 2 cores)
    python scripts/benchmarks/bench_end_to_end.py             # CPU fp32, 2 LM layers, every setting
    python scripts/benchmarks/bench_end_to_end.py --device cuda --dtype float16 --quick   # full depth (gpu_check.sh)
    python scripts/benchmarks/bench_end_to_end.py --smoke --out /tmp/e2e                  # tiny shapes, seconds

The model is the package's own ``LlavaLlamaForCausalLM`` with Vicuna's layer shapes (random weights) and a random
CLIP ViT-L/14-336 loaded through ``CLIPVisionTower.load_model``. On a CPU only a few decoder layers are built
(``--lm-layers``): every decoder layer's time is measured with forward hooks and the figures are extrapolated per
layer to 32 / 40 layers, marked as such; on CUDA the full depth is built when it fits in memory.

The parts: ``end_to_end_model`` (plan, model, inputs), ``end_to_end_instruments`` (hook clocks, LM-input capture,
peak memory), ``end_to_end_measure`` (the timed calls), ``end_to_end_eval`` (``model_vqa_loader`` throughput),
``end_to_end_targets`` (targets, profiles of misses), ``end_to_end_paper`` (the published figures against
``llava/model/cost_model.py``), ``end_to_end_report`` / ``end_to_end_plots`` (the section and the PNGs). This file is
the command line. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # runnable from a clean clone without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this script

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bench_cli import check_device, command_line, name_list, positive_ints  # noqa: E402
from bench_files import write_text_atomic  # noqa: E402
from bench_token_reduction import save_random_clip  # noqa: E402
from end_to_end_eval import EVAL_SIZES, bench_eval  # noqa: E402
from end_to_end_instruments import fix_malloc_threshold  # noqa: E402
from end_to_end_measure import bench_models  # noqa: E402
from end_to_end_model import GEOMETRIES, TEXT_TOKENS, make_plan  # noqa: E402
from end_to_end_report import SCRIPT, write_report  # noqa: E402
from end_to_end_targets import TargetChecker  # noqa: E402
from token_reduction_report import machine_info  # noqa: E402

MODES = ("none", "prumerge", "prumerge+")
#: the arguments the report reads, saved with --save-results and restored by --render
REPORT_ARGS = ("device", "dtype", "attn", "attn_requested", "command", "text_tokens", "repeats", "small_calls",
               "tower", "smoke", "quick", "threads", "profile_misses")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU: 1 LM layer, a subset of settings, one timed call each")
    p.add_argument("--smoke", action="store_true", help="tiny widths (7B / 13B depths kept): for the tests")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs",
                   help="folder for benchmarks.md and img/end_to_end_*.png (default: the repo's docs/)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="default float32 on a CPU, float16 on CUDA")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                   help="LM attention; flash_attention_2 falls back to sdpa (with a message) when not usable")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: the cores available)")
    p.add_argument("--lm-layers", type=int, default=None,
                   help="decoder layers to build (default: CPU 2, --quick 1; CUDA the full depth when it fits)")
    p.add_argument("--lms", type=name_list(("7b", "13b")), default=["7b", "13b"], help="7b,13b (default both)")
    p.add_argument("--geometries", type=name_list(GEOMETRIES), default=list(GEOMETRIES), help="1.5,1.6 (both)")
    p.add_argument("--batch-sizes", type=positive_ints, default=[1, 8], help="LLaVA-1.5 batch sizes (1,8)")
    p.add_argument("--anyres-batch-sizes", type=positive_ints, default=None,
                   help="LLaVA-1.6 batch sizes (default: 1 on a CPU, 1,8 on CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 2; --quick 1)")
    p.add_argument("--decode-steps", type=int, default=None, help="decode steps timed (default 16; --quick 4)")
    p.add_argument("--text-tokens", type=int, default=TEXT_TOKENS, help=f"text positions per prompt ({TEXT_TOKENS})")
    p.add_argument("--eval-size", choices=sorted(EVAL_SIZES), default=None,
                   help="checkpoint for the eval throughput (default small; --smoke tiny)")
    p.add_argument("--eval-questions", type=int, default=None, help="questions in the eval file (16; --smoke 4)")
    p.add_argument("--eval-modes", type=name_list(MODES), default=list(MODES),
                   help="--token-reduction modes of the eval runs (default none,prumerge,prumerge+)")
    p.add_argument("--skip-eval", action="store_true", help="no model_vqa_loader throughput")
    p.add_argument("--no-profile", dest="profile_misses", action="store_false",
                   help="do not profile the calls behind a missed target")
    p.add_argument("--save-results", type=Path, default=None,
                   help="also write the raw measurements to this JSON file (for --render)")
    p.add_argument("--render", type=Path, default=None,
                   help="measure nothing: rewrite the section and plots from a --save-results file")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check ``argv``, and fill in the defaults that depend on ``--quick`` / ``--smoke`` / the device."""
    p = build_parser()
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    check_device(p, args)
    if args.attn == "flash_attention_2" and args.dtype == "float32":
        p.error("--attn flash_attention_2 needs --dtype float16 or bfloat16")
    from llava.model.builder import choose_attn_implementation

    args.attn_requested = args.attn
    args.attn = choose_attn_implementation(False, args.attn, str(args.device))
    short = args.quick or args.smoke
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    args.threads = args.threads or available
    args.anyres_batch_sizes = args.anyres_batch_sizes or ([1] if args.device.type == "cpu" else [1, 8])
    args.repeats = args.repeats or (1 if short else 2)
    args.decode_steps = args.decode_steps if args.decode_steps is not None else (4 if short else 16)
    args.small_calls = 3 if short else 5
    args.tower = "tiny" if args.smoke else "vit-l-336"
    args.eval_size = args.eval_size or ("tiny" if args.smoke else "medium")
    args.eval_questions = args.eval_questions or (4 if args.smoke else 16)
    args.eval_batch_sizes = [1, 2] if args.smoke else [1, 8]
    args.eval_new_tokens = 8 if args.smoke else 16
    for name in ("threads", "lm_layers", "repeats", "text_tokens", "eval_questions"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.decode_steps < 0:
        p.error("--decode-steps must be >= 0")
    args.command = command_line(SCRIPT, argv)
    return args


def _json_ready(evaluation: dict | None) -> dict | None:
    """JSON object keys are strings: the batch sizes of each eval mode back to ints after a load."""
    if evaluation is not None:
        for mode in evaluation["modes"].values():
            mode["runs"] = {int(k): v for k, v in mode["runs"].items()}
    return evaluation


def render_saved(args: argparse.Namespace) -> dict:
    """Rewrite the section and the plots from a ``--save-results`` file (after editing the report's text)."""
    saved = json.loads(args.render.read_text())
    restored = argparse.Namespace(**{**saved["args"], "out": args.out})
    restored.device, restored.dtype_t = torch.device(restored.device), getattr(torch, restored.dtype)
    evaluation = _json_ready(saved["eval"])
    result = write_report(restored, saved["info"], saved["measured"], evaluation, saved["profiles"])
    print(result["section"])
    return {"info": saved["info"], "rows": saved["measured"]["rows"], "eval": evaluation,
            "targets": result["targets"], "doc": result["doc"], "plots": result["plots"], "elapsed_s": 0.0}


def measure(args: argparse.Namespace) -> tuple[dict, dict | None, dict]:
    """Run the plan and the eval; returns ``(measured, evaluation, profiles)``."""
    plan = make_plan(args)
    steps = sum(len(g.settings) for g in plan)
    if not args.skip_eval:
        steps += len(args.eval_batch_sizes) * len(args.eval_modes)
    targets = TargetChecker(args)
    started = time.perf_counter()
    malloc_fixed = args.device.type == "cpu" and not args.smoke and fix_malloc_threshold()
    evaluation = None
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp, \
            tqdm(total=steps, desc="end to end", file=sys.stderr) as bar:
        bar.set_postfix_str(f"saving a random CLIP ({args.tower})")
        clip_dir = save_random_clip(args.tower, Path(tmp) / "clip-vit-336", args.seed)
        measured = bench_models(args, clip_dir, plan, bar, targets.profile_rows)
        if not args.skip_eval:
            evaluation, profile_call = bench_eval(args, Path(tmp) / "eval", bar)
            targets.profile_eval(evaluation, profile_call, args.device)
    measured.update(plan=[dataclasses.asdict(g) for g in plan], malloc_fixed=malloc_fixed,
                    elapsed_s=time.perf_counter() - started,
                    load_after=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    return measured, evaluation, targets.profiles


def main(argv: Sequence[str] | None = None) -> dict:
    """Measure (or ``--render`` saved figures), print the section, write it and the plots under ``--out``.

    Returns:
        ``{"info", "rows", "eval", "targets", "doc", "plots", "elapsed_s"}``.
    """
    args = parse_args(argv)
    if args.render is not None:
        return render_saved(args)
    torch.set_num_threads(args.threads)
    info = machine_info(args.device, args.dtype_t, args.threads)
    started = time.perf_counter()
    measured, evaluation, profiles = measure(args)
    if args.save_results is not None:
        saved = {"args": {k: str(v) if k == "device" else v for k, v in vars(args).items() if k in REPORT_ARGS},
                 "info": info, "measured": measured, "eval": evaluation, "profiles": profiles}
        write_text_atomic(args.save_results, json.dumps(saved, indent=1))
    result = write_report(args, info, measured, evaluation, profiles)
    print(result["section"])
    elapsed = time.perf_counter() - started
    print(f"wrote {result['doc']} and {', '.join(str(p) for p in result['plots'])} in {elapsed:.0f} s")
    return {"info": info, "rows": measured["rows"], "eval": evaluation, "targets": result["targets"],
            "doc": result["doc"], "plots": result["plots"], "elapsed_s": elapsed}


if __name__ == "__main__":
    main()
