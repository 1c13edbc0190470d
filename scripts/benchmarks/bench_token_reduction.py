#!/usr/bin/env python
"""Benchmark PruMerge / PruMerge+ visual-token reduction and write ``docs/benchmarks.md`` with its plots.

    python scripts/benchmarks/bench_token_reduction.py                # full run, CPU fp32 (~4 min on 2 idle cores)
    python scripts/benchmarks/bench_token_reduction.py --quick        # fewer repeats, tower at batch 1 only
    python scripts/benchmarks/bench_token_reduction.py --device cuda --dtype float16   # the GPU figures

Three measurements:

1. ``prumerge`` (the vectorised op) against a per-token loop written here after the published code
   (github.com/42Shawn/LLaVA-PruMerge, ``token_prune_merge_advanced[_plus]``), at B = 1, 8, 32, N = 576,
   C = 1024, on synthetic CLS attention (Gaussian logits, see ``synthetic_attention``). Target: >= 50x at B = 8
   (a GPU figure). Then the op against its bound, the key product ``[B, P, C] x [B, C, N]`` alone at the same
   shapes, at B = 1 and 8 for PruMerge, PruMerge+ and PruMerge+ at budget 144. Target: <= 2.5x at B = 8.
2. The CLIP ViT-L/14-336 tower (random weights) through ``CLIPVisionTower``: upstream's full 24-layer forward with
   ``output_hidden_states``, our 23-layer "none", "prumerge" and "prumerge+". Target: reduction <= 3 % of "none".
3. The distribution of kept counts over many images' synthetic attention, and the budget settings 64/128/192.

The markdown is regenerated on every run (written to a temporary name, then renamed). It holds one block per
device kind between ``<!-- bench:cpu:begin/end -->`` / ``<!-- bench:gpu:begin/end -->`` markers: a run replaces
its own device's block and keeps the other one, so CPU and GPU figures live side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # runnable from a clean clone without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from llava.model.multimodal_encoder.prumerge import fixed_plus_plan, prumerge  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper and report modules beside this script
from bench_cli import check_device, command_line, positive_ints  # noqa: E402
from bench_timing import profile_top_ops, summary_ms, time_calls, time_interleaved  # noqa: E402
from token_reduction_report import (  # noqa: E402
    BOUND_BATCHES,
    BOUND_MODES,
    BUDGETS,
    MODES,
    SCRIPT,
    machine_info,
    plot_kept,
    plot_speed,
    render_block,
    write_doc,
)
from token_reduction_baseline import op_inputs, published_loop, synthetic_attention  # noqa: E402

TOWER_SIZES = {
    # CLIP ViT-L/14-336 (openai/clip-vit-large-patch14-336): 303 M parameters
    "vit-l-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    # the same 24 x 24 patch grid, tiny widths: for the smoke test
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4),
}


# ----------------------------------------------------------------------------------------------------------------
# 1. op vs loop
# ----------------------------------------------------------------------------------------------------------------


def _check_same(op_out, loop_out, dtype) -> float:
    """Kept counts must agree; in float32 the tokens too (atol 1e-3). Returns the largest absolute difference."""
    worst = 0.0
    for got, want in zip(op_out.tokens, loop_out):
        if got.shape != want.shape:
            raise AssertionError(f"op and loop disagree on the token count: {got.shape[0]} vs {want.shape[0]}")
        worst = max(worst, (got.float() - want.float()).abs().max().item())
    if dtype == torch.float32 and worst > 1e-3:
        raise AssertionError(f"op and published loop disagree: max |diff| {worst:.2e}")
    return worst


def profile_op(features, keys, attn, plus: bool, device, top: int = 7) -> list:
    """Top ops of one ``prumerge`` call by self time: [(name, ms per call, % of total)], over 10 calls."""
    return profile_top_ops(lambda: prumerge(features, keys, attn, plus=plus), device, top=top, calls=10)


def key_product_inputs(keys: torch.Tensor, kept: Sequence[torch.Tensor]) -> tuple:
    """The operands of the one product every PruMerge implementation does, at the shapes of one ``prumerge`` call:
    each centre's key against every patch key, ``[B, P, C] x [B, C, N]`` in float32 (as the op ranks neighbours),
    P = the call's largest centre count (shorter rows padded with their first centre, as the op pads)."""
    P = max(k.numel() for k in kept)
    centres = torch.stack([torch.cat([k, k[:1].expand(P - k.numel())]) for k in kept])  # [B, P]
    all_keys = keys.float()  # [B, N, C]
    centre_keys = all_keys.gather(1, centres.unsqueeze(-1).expand(-1, -1, all_keys.shape[-1]))  # [B, P, C]
    return centre_keys, all_keys.transpose(1, 2)  # [B, P, C], [B, C, N]


def warm_up_process(args, device, dtype) -> None:
    """The first calls in a fresh process are slow (thread pool and allocator start-up): spend ~1 s on them."""
    features, keys, attn = op_inputs(max(args.batch_sizes), args.patches, args.dim, args.attn_std, args.seed, device,
                                     dtype)
    with torch.inference_mode():
        time_calls(lambda: prumerge(features, keys, attn, plus=True), device, 0, warmup=3, warmup_s=1.0)
        published_loop(features[:1], keys[:1], attn[:1], True)


def bench_op(args, device, dtype) -> dict:
    rows, profile, floor, anatomy = [], None, None, None
    cases = [(b, m) for b in args.batch_sizes for m in MODES]
    target_b = 8 if 8 in args.batch_sizes else sorted(args.batch_sizes)[len(args.batch_sizes) // 2]
    warm_up_process(args, device, dtype)
    with torch.inference_mode(), tqdm(total=len(cases), desc="1/3 op vs per-token loop", file=sys.stderr) as bar:
        for batch, mode in cases:
            plus = MODES[mode]
            features, keys, attn = op_inputs(batch, args.patches, args.dim, args.attn_std, args.seed + batch, device,
                                             dtype)
            op_out = prumerge(features, keys, attn, plus=plus)
            loop_out = published_loop(features, keys, attn, plus)  # also the loop's warm-up
            diff = _check_same(op_out, loop_out, dtype)
            time_calls(lambda: prumerge(features, keys, attn, plus=plus), device, 0, warmup=3, warmup_s=0.3)
            rounds = args.loop_rounds if batch <= 8 else max(2, args.loop_rounds - 2)
            times = time_interleaved({
                "op": (lambda: prumerge(features, keys, attn, plus=plus), args.op_per_round),
                "loop": (lambda: published_loop(features, keys, attn, plus), 1),
            }, device, rounds)
            op_t, loop_t = summary_ms(times["op"]), summary_ms(times["loop"])
            tokens = [t.shape[0] for t in op_out.tokens]
            centres = [t - 1 for t in tokens]
            rows.append({
                "batch": batch, "mode": mode, "centres_mean": statistics.mean(centres), "centres_max": max(centres),
                "op": op_t, "loop": loop_t, "speedup": loop_t["median"] / op_t["median"],
                "speedup_best": loop_t["min"] / op_t["min"], "max_abs_diff": diff,
                "loop_per_centre_us": 1e3 * loop_t["median"] / sum(centres),
            })
            if batch == target_b and mode == "prumerge":
                profile = profile_op(features, keys, attn, plus, device)
                centre_keys, keys_t = key_product_inputs(keys, op_out.kept)
                floor = summary_ms(time_calls(lambda: torch.bmm(centre_keys, keys_t), device, 3 * args.op_per_round,
                                              warmup=3, warmup_s=0.2))
                anatomy = anatomy_at_small_width(features, keys, attn, device, args.loop_rounds)
            bar.update()
    return {"rows": rows, "target_batch": target_b, "profile": profile, "key_floor": floor, "anatomy": anatomy,
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def anatomy_at_small_width(features, keys, attn, device, rounds: int, width: int = 8) -> dict:
    """PruMerge op and loop on the same attention (so the same centres) with features and keys only ``width``
    wide: what is left is each one's fixed cost (interpreter, dispatch, selection, small kernels)."""
    narrow_f, narrow_k = features[..., :width].contiguous(), keys[..., :width].contiguous()
    published_loop(narrow_f, narrow_k, attn, False)
    time_calls(lambda: prumerge(narrow_f, narrow_k, attn), device, 0, warmup=3, warmup_s=0.2)
    times = time_interleaved({"op": (lambda: prumerge(narrow_f, narrow_k, attn), 3),
                              "loop": (lambda: published_loop(narrow_f, narrow_k, attn, False), 1)}, device, rounds)
    return {"width": width, "op": summary_ms(times["op"]), "loop": summary_ms(times["loop"])}


def bench_bound(args, device, dtype) -> dict:
    """``prumerge()`` against its bound: the key product ``[B, P, C] x [B, C, N]`` alone, at the call's own shapes.

    For B in ``BOUND_BATCHES`` and each of ``BOUND_MODES`` (PruMerge, adaptive PruMerge+, PruMerge+ at budget 144):
    the op and the bare ``torch.bmm`` of its centre keys against all keys, timed in interleaved rounds. Ratio =
    op median / product median (best: fastest op / fastest product)."""
    rows = []
    cases = [(b, m) for b in BOUND_BATCHES for m in BOUND_MODES]
    with torch.inference_mode(), tqdm(total=len(cases), desc="1b/3 op vs its key product", file=sys.stderr) as bar:
        for batch, mode in cases:
            kwargs = BOUND_MODES[mode]
            features, keys, attn = op_inputs(batch, args.patches, args.dim, args.attn_std, args.seed + batch, device,
                                             dtype)
            out = prumerge(features, keys, attn, **kwargs)
            centre_keys, keys_t = key_product_inputs(keys, out.kept)
            fns = {"op": (lambda: prumerge(features, keys, attn, **kwargs), args.op_per_round),
                   "key": (lambda: torch.bmm(centre_keys, keys_t), args.op_per_round)}
            for fn, _ in fns.values():
                time_calls(fn, device, 0, warmup=3, warmup_s=0.2)
            times = time_interleaved(fns, device, args.bound_rounds)
            op_t, key_t = summary_ms(times["op"]), summary_ms(times["key"])
            rows.append({"batch": batch, "mode": mode, "centres_max": centre_keys.shape[1],
                         "centres_mean": statistics.mean(k.numel() for k in out.kept), "op": op_t, "key": key_t,
                         "ratio": op_t["median"] / key_t["median"], "ratio_best": op_t["min"] / key_t["min"]})
            bar.update()
    return {"rows": rows, "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


# ----------------------------------------------------------------------------------------------------------------
# 2. the tower
# ----------------------------------------------------------------------------------------------------------------


def save_random_clip(size: str, folder: Path, seed: int) -> Path:
    """A random CLIP vision model of ``size`` (``TOWER_SIZES``: 336 px, patch 14, so 576 patches) and CLIP's 336 px
    preprocessor written to ``folder``, a checkpoint folder that ``CLIPVisionTower`` / ``mm_vision_tower`` can name."""
    import json

    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    from llava.tools.make_tiny_checkpoint import CLIP_MEAN, CLIP_STD

    torch.manual_seed(seed)
    config = CLIPVisionConfig(**TOWER_SIZES[size], image_size=336, patch_size=14, hidden_act="quick_gelu")
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_mean=CLIP_MEAN,
                          image_std=CLIP_STD, do_convert_rgb=True).save_pretrained(folder)
    processor_json = folder / "preprocessor_config.json"
    processor_json.write_text(json.dumps({**json.loads(processor_json.read_text()),
                                          "image_processor_type": "CLIPImageProcessor"}))
    return folder


def build_tower(size: str, folder: Path, seed: int, device, dtype):
    """``save_random_clip`` to ``folder``, then loaded through ``CLIPVisionTower`` as LLaVA-1.5 configures it
    (select layer -2, patch features), on ``device`` in ``dtype``."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    save_random_clip(size, folder, seed)
    args = SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_token_reduction="none",
                           mm_token_budget=None)
    tower = CLIPVisionTower(str(folder), args)
    tower.to(device=device, dtype=dtype).eval()
    return tower


def _next_layer_logits(tower, hidden: torch.Tensor) -> torch.Tensor:
    """CLS attention logits ``[B, N]`` from the layer after the selected one (as ``CLIPVisionTower.reduce``)."""
    layer = tower.vision_tower.encoder.layers[tower.num_layers_to_run]
    normed = layer.layer_norm1(hidden)
    q = layer.self_attn.q_proj(normed[:, 0]).float()
    k = layer.self_attn.k_proj(normed[:, 1:]).float()
    return torch.einsum("bc,bnc->bn", q, k) * hidden.shape[-1] ** -0.5


def calibrate(tower, hidden: torch.Tensor, target_std: float) -> float:
    """Scale the next layer's ``q_proj`` so the CLS logits have ``target_std`` (a random CLIP attends almost
    uniformly and the IQR rule would keep ~1 patch, which would make the reduction look cheaper than it is)."""
    scale = target_std / _next_layer_logits(tower, hidden).std(dim=-1).mean().item()
    q_proj = tower.vision_tower.encoder.layers[tower.num_layers_to_run].self_attn.q_proj
    q_proj.weight.mul_(scale)
    q_proj.bias.mul_(scale)
    return scale


def bench_tower(args, device, dtype) -> dict:
    from llava.model.token_reduction import TokenReduction

    results = {"batches": [], "size": args.tower}
    with tempfile.TemporaryDirectory(prefix="bench_clip_") as tmp, torch.inference_mode():
        t0 = time.perf_counter()
        tower = build_tower(args.tower, Path(tmp), args.seed, device, dtype)
        results["build_s"] = time.perf_counter() - t0
        results["attn_implementation"] = tower.vision_tower.config._attn_implementation
        results["params_m"] = sum(p.numel() for p in tower.vision_tower.parameters()) / 1e6
        results["layers"] = (tower.num_layers_to_run, tower.config.num_hidden_layers)
        results["patches"] = tower.num_patches
        model = tower.vision_tower

        def upstream(px):  # what upstream LLaVA ran: every layer, every hidden state kept, then [-2][:, 1:]
            return model(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]

        def ours(mode):
            def run(px):
                tower.set_token_reduction(TokenReduction(mode))
                return tower(px)
            return run

        variants = {"(a) upstream, 24 layers + hidden states": upstream, "(b) ours, none (23 layers)": ours("none"),
                    "(c) ours, prumerge": ours("prumerge"), "(d) ours, prumerge+": ours("prumerge+")}
        names = list(variants)
        total = sum(1 + len(names) * args.tower_repeats_for(b) for b in args.tower_batch_sizes)
        bar = tqdm(total=total, desc="2/3 tower forwards", file=sys.stderr)
        for batch in args.tower_batch_sizes:
            g = torch.Generator().manual_seed(args.seed + 100 + batch)
            pixels = torch.randn(batch, 3, 336, 336, generator=g).to(device, dtype)
            hidden = tower.selected_hidden_states(pixels)  # the warm-up forward (23 layers)
            bar.update()
            if "scale" not in results:
                results["scale"] = calibrate(tower, hidden, args.attn_std)
            # the reduction alone on the selected hidden states (next layer's LN + k_proj + CLS q, the op): warmed
            # up here, then timed a few calls right after every (b) forward, so both share the same load
            counts, isolated_times = {}, {mode: [] for mode in MODES}

            def reduce_with(mode):
                tower.set_token_reduction(TokenReduction(mode))
                return tower.reduce(hidden)

            for mode in MODES:
                counts[mode] = [t.shape[0] for t in reduce_with(mode).tokens]
                time_calls(lambda: reduce_with(mode), device, 0, warmup=3, warmup_s=0.3)
            # full forwards, interleaved, the order rotated every round so no variant is always first
            times = {name: [] for name in names}
            repeats = args.tower_repeats_for(batch)
            for r in range(repeats):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    bar.set_postfix_str(f"batch {batch}, {name.split(')')[0]})")
                    times[name] += time_calls(lambda: variants[name](pixels), device, 1, warmup=0)
                    if name == names[1]:
                        for mode in MODES:
                            isolated_times[mode] += time_calls(lambda: reduce_with(mode), device,
                                                               args.reduce_per_round, warmup=0)
                    bar.update()
            stats = {name: summary_ms(t) for name, t in times.items()}
            isolated = {mode: summary_ms(t) for mode, t in isolated_times.items()}
            base = stats[names[1]]
            results["batches"].append({
                "batch": batch, "repeats": repeats, "forward": stats, "isolated": isolated, "counts": counts,
                "overhead_pct": {m: 100.0 * isolated[m]["median"] / base["median"] for m in MODES},
                "overhead_best_pct": {m: 100.0 * isolated[m]["min"] / base["min"] for m in MODES},
                "e2e_pct": {m: 100.0 * (stats[names[2 + i]]["median"] - base["median"]) / base["median"]
                            for i, m in enumerate(MODES)},
                "upstream_pct": 100.0 * (stats[names[0]]["median"] - base["median"]) / base["median"],
                "upstream_best_pct": 100.0 * (stats[names[0]]["min"] - base["min"]) / base["min"],
                "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            })
        bar.close()
        tower.set_token_reduction(TokenReduction("prumerge"))
    return results


# ----------------------------------------------------------------------------------------------------------------
# 3. kept counts
# ----------------------------------------------------------------------------------------------------------------


def _tokens_per_image(attn: torch.Tensor, plus: bool, budget=None, chunk: int = 256) -> list:
    """Output tokens per image (centres + the extra one) from ``prumerge`` itself; features do not change the
    counts, so they are 4 wide here."""
    counts = []
    for part in attn.split(chunk):
        g = torch.Generator().manual_seed(0)
        features = torch.randn(part.shape[0], part.shape[1], 4, generator=g)
        counts += prumerge(features, features, part, plus=plus, budget=budget).counts
    return counts


def _stats(values: Sequence[int]) -> dict:
    arr = np.asarray(values)
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "min": int(arr.min()), "max": int(arr.max()),
            "p5": float(np.percentile(arr, 5)), "p95": float(np.percentile(arr, 95)), "std": float(arr.std())}


def bench_kept(args, device, dtype) -> dict:
    g = torch.Generator().manual_seed(args.seed + 7)
    n = args.patches
    lo, hi = args.std_range
    stds = lo + (hi - lo) * torch.rand(args.images, generator=g)
    attn = synthetic_attention(args.images, n, stds, g)
    steps = 2 + 2 * len(BUDGETS) + 2 * len(args.std_sweep)
    with torch.inference_mode(), tqdm(total=steps, desc="3/3 kept counts", file=sys.stderr) as bar:
        tokens = {}
        for mode, plus in MODES.items():
            tokens[mode] = _tokens_per_image(attn, plus)
            bar.update()
        budgets = []
        features, keys, attn8 = op_inputs(8, n, args.dim, args.attn_std, args.seed + 8, device, dtype)

        def budget_call(k, plus):
            return lambda: prumerge(features, keys, attn8, plus=plus, budget=k)

        calls = {(k, mode): (budget_call(k, plus), 3) for k in BUDGETS for mode, plus in MODES.items()}
        for fn, _ in calls.values():
            time_calls(fn, device, 0, warmup=2, warmup_s=0.1)
        budget_times = time_interleaved(calls, device, args.loop_rounds)
        for k in BUDGETS:
            n_top, raster = fixed_plus_plan(n, k)
            row = {"budget": k, "plus_plan": (n_top, len(raster))}
            for mode, plus in MODES.items():
                counts = _tokens_per_image(attn[:64], plus, budget=k)
                assert set(counts) == {min(k, n) + 1}, f"budget {k} gave {sorted(set(counts))} tokens"
                adaptive = np.asarray(tokens[mode])
                row[mode] = {
                    "tokens": min(k, n) + 1,
                    "below": float((adaptive < min(k, n) + 1).mean()),  # images whose adaptive count is smaller
                    "vs_mean": (min(k, n) + 1) / adaptive.mean(),
                    "op_b8": summary_ms(budget_times[(k, mode)]),
                }
                bar.update()
            budgets.append(row)
        sweep = []
        for std in args.std_sweep:
            a = synthetic_attention(min(args.images, 512), n, std, torch.Generator().manual_seed(args.seed + 9))
            row = {"std": std}
            for mode, plus in MODES.items():
                row[mode] = float(np.mean(_tokens_per_image(a, plus)))
                bar.update()
            sweep.append(row)
    return {"tokens": tokens, "stats": {m: _stats(v) for m, v in tokens.items()}, "budgets": budgets,
            "sweep": sweep, "std_range": (lo, hi), "images": args.images}


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats; the tower at batch 1 only (~1.5 min on CPU)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs",
                   help="folder for benchmarks.md and img/token_reduction_*.png (default: the repo's docs/)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--batch-sizes", type=positive_ints, default=[1, 8, 32], help="op benchmark batch sizes (1,8,32)")
    p.add_argument("--patches", type=int, default=576, help="N for the op benchmark (576)")
    p.add_argument("--dim", type=int, default=1024, help="C (features and keys) for the op benchmark (1024)")
    p.add_argument("--tower", choices=sorted(TOWER_SIZES), default="vit-l-336",
                   help="tower size: vit-l-336 (real) or tiny (smoke tests)")
    p.add_argument("--tower-batch-sizes", type=positive_ints, default=None, help="default 1,4 (--quick: 1)")
    p.add_argument("--tower-repeats", type=int, default=None,
                   help="timed forwards per variant at batch 1 (default 3, --quick 1); larger batches get one fewer")
    p.add_argument("--skip-tower", action="store_true", help="skip section 2")
    p.add_argument("--images", type=int, default=None, help="images for the kept-count histogram (2000; quick 500)")
    p.add_argument("--attn-std", type=float, default=0.75, help="logit std of the synthetic CLS attention (0.75)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    check_device(p, args)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    args.tower_batch_sizes = args.tower_batch_sizes or ([1] if args.quick else [1, 4])
    base_repeats = args.tower_repeats or (1 if args.quick else 3)
    args.tower_repeats_for = lambda b: base_repeats if b == 1 else max(1, base_repeats - 1)
    args.images = args.images or (500 if args.quick else 2000)
    args.op_per_round = 3
    args.loop_rounds = 3 if args.quick else 5
    args.bound_rounds = 7 if args.quick else 15
    args.reduce_per_round = 5
    args.std_range = (0.55, 0.95)
    args.std_sweep = (0.5, 0.75, 1.0, 1.5, 2.0)
    args.command = command_line(SCRIPT, argv)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = args.device, args.dtype_t
    kind = "gpu" if device.type == "cuda" else "cpu"
    if device.type == "cpu" and dtype == torch.bfloat16:
        print("note: bf16 on this CPU is ~9x slower than fp32 (ENVIRONMENT.md); the figures are for bf16",
              file=sys.stderr)
    info = machine_info(device, dtype, args.threads)
    started = time.perf_counter()

    op = bench_op(args, device, dtype)
    op["bound"] = bench_bound(args, device, dtype)
    tower = None if args.skip_tower else bench_tower(args, device, dtype)
    kept = bench_kept(args, device, dtype)

    suffix = "" if kind == "cpu" else "_cuda"
    images = {"speed": f"img/token_reduction_speed{suffix}.png", "kept": f"img/token_reduction_kept{suffix}.png"}
    plot_speed(op, args.out / images["speed"],
               f"PruMerge op vs per-token loop, N={args.patches}, C={args.dim}, {info['dtype']}, "
               f"{info['device']} ({args.threads} threads)")
    plot_kept(kept, args.out / images["kept"], args.patches)
    block = render_block(kind, args, info, op, tower, kept, images)
    doc = args.out / "benchmarks.md"
    write_doc(doc, kind, block)
    elapsed = time.perf_counter() - started

    print(block)
    print(f"wrote {doc} and {', '.join(str(args.out / p) for p in images.values())} in {elapsed:.0f} s")
    return {"info": info, "op": op, "tower": tower, "kept": kept, "doc": doc,
            "images": {k: args.out / v for k, v in images.items()}, "elapsed_s": elapsed}


if __name__ == "__main__":
    main()
