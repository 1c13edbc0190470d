"""The report of ``bench_end_to_end.py``: the Markdown section (tables, the paper comparison, the targets with the
profile of each miss) and writing it, with the plots, into ``docs/benchmarks.md`` between this script's own markers
(temporary name, then rename; every other section of the file is kept as it is).

Sections: ``<!-- bench:e2e:begin/end -->`` (CPU) and ``<!-- bench:e2e_cuda_<dtype>_<attn>:begin/end -->`` (one per
CUDA dtype and attention kernel); ``e2e_cuda`` is the placeholder the first CUDA run replaces.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from types import SimpleNamespace

from bench_files import find_section, replace_section, write_text_atomic
from end_to_end_model import LM_NAMES, LM_SIZES, PRUMERGE_TARGET_COUNT
from end_to_end_paper import VISIONZIP_PREFILL, paper_narrative, paper_rows
from end_to_end_plots import group_rows, plot_speedup, plot_ttft
from end_to_end_targets import DAGGER, baseline, check_targets, extrapolated, full_depth, parts_ms, speedups
from token_reduction_report import fmt_ms, fmt_number, md_table

__all__ = ["SCRIPT", "render_section", "write_report"]

SCRIPT = "scripts/benchmarks/bench_end_to_end.py"
WHY_MISSED = {
    "speedup": "The reduced prefill is shorter, and a short prefill runs its GEMMs with few rows: on a CPU their "
               "throughput falls with M (the table below: the LM prefill's measured GFLOP/s per setting), so the "
               "time shrinks less than the FLOPs. The profile shows that the reduced prefill is still all GEMM "
               "(`aten::mm`): no other cost explains the gap.",
    "ttft": "The time to first token includes `generate`'s own work (input checks, the cache, logits processing) "
            "and the splice / layout (`prepare_inputs_labels_for_multimodal`), which no part measures, and on shared "
            "cores the parts timed alone vary between calls. The profile is of one `generate` call.",
    "reduction": "The reduction's time does not depend on the LM, so its share is largest where the first token is "
                 "cheapest (batch 1, the fewest tokens). The profile is of `tower.reduce`.",
    "eval": "On a CPU the tower and the prefill are compute-bound: batching them saves only the per-call overhead; "
            "only decoding (memory-bound, one position per step) gains much from batching. The profile is of the "
            "batched eval call.",
}


def _ms(stats: dict | float) -> str:
    if isinstance(stats, (int, float)):
        return fmt_number(stats)
    return fmt_number(stats["median"]) if stats["n"] == 1 or stats["min"] == stats["max"] else fmt_ms(stats)


def _mib(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1024:
        return f"{value / 1024:.2f} GiB"
    if abs(value) >= 1:
        return f"{value:.0f} MiB" if abs(value) >= 10 else f"{value:.1f} MiB"
    return f"{value * 1024:.0f} KiB"


def _counts(row: dict) -> str:
    counts = row["visual_tokens"]
    if len(set(counts)) == 1:
        return str(counts[0])
    return f"{min(counts)}-{max(counts)} (mean {sum(counts) / len(counts):.0f})"


def _dag(row: dict) -> str:
    return DAGGER if extrapolated(row) else ""


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**MISS**")


# ----------------------------------------------------------------------------------------------------------------
# Subsections
# ----------------------------------------------------------------------------------------------------------------


def _header(args: argparse.Namespace, info: dict, measured: dict) -> list[str]:
    rows = measured["rows"]
    machine = [f"- date: {info['date']}", f"- CPU: {info['cpu']}"] + ([f"- GPU: {info['gpu']}"] if "gpu" in info
                                                                      else [])
    asked = f" (asked: {args.attn_requested})" if args.attn != args.attn_requested else ""
    machine.append(f"- torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}; "
                   f"`torch.set_num_threads({info['threads']})`; device {info['device']}, dtype {info['dtype']}, LM "
                   f"attention `{args.attn}`{asked}")
    if "load" in info:
        after = measured.get("load_after")
        machine.append(f"- load average at the start: {info['load']}"
                       + (f"; at the end: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}" if after else "")
                       + f" ({os.cpu_count()} = every core busy: on shared cores read ratios within this run, not "
                         "absolute times)")
    machine.append(f"- reproduce: `{args.command}`; the run took {measured['elapsed_s'] / 60:.1f} min")
    depth = "; ".join(f"{LM_NAMES[lm]}: {b['layers']} of {LM_SIZES[lm]['num_hidden_layers']} decoder layers built"
                      for lm, b in measured["builds"].items())
    full_tower = args.tower == "vit-l-336"
    what = [
        "**What ran.** The package's `LlavaLlamaForCausalLM` (random weights; "
        + ("TINY widths at Vicuna-7B / 13B depths" if args.smoke else "Vicuna-v1.5 layer shapes, vocabulary 32000")
        + ", `mlp2x_gelu` projector, the released LLaVA-1.6 settings, so a `[B, 3, 336, 336]` batch takes "
        "LLaVA-1.5's path and a `[B, 5, 3, 336, 336]` one LLaVA-1.6's) with a random CLIP ViT-L/14-336 "
        f"({'full size' if full_tower else 'TINY widths'}, {measured['tower_params_m']:.3g} M parameters, "
        f"{'23 of 24' if full_tower else '2 of 3'} layers run) saved to a folder and loaded by "
        f"`CLIPVisionTower.load_model`. The CLS query of the layer after the selected one is scaled "
        f"(x{measured['scale']:.3g}) so that adaptive PruMerge keeps {PRUMERGE_TARGET_COUNT} centres on the "
        "calibration image, the paper's mean on real images (a random CLIP attends almost uniformly, and the IQR "
        "rule's count then depends on how peaked its random logits happen to be). Images: random pixels, one "
        "generator per image (on a photo the random CLIP's CLS logits are so skewed that the IQR rule keeps ~130 "
        "patches at any scale); "
        f"LLaVA-1.6: a 672x672 image's base + 2x2 tiles; each prompt has {args.text_tokens} text positions "
        "(Vicuna's tokenizer on the "
        f"vicuna_v1 prompt with a one-line question), so LLaVA-1.5 without reduction is {576 + args.text_tokens} "
        f"positions. {depth}.", "",
        "**How it was timed.** Time to first token (TTFT) = `model.generate(..., max_new_tokens=1)`. Its parts, each "
        "alone: the tower (`tower.selected_hidden_states`, once per group), the reduction (`tower.reduce`, "
        f"{args.small_calls} calls), the projector (`mm_projector`) and the LM prefill (the model's `forward` with "
        "`use_cache=True`, `logits_to_keep=1`, on the very inputs `generate` gave the base model; at B = 1 "
        f"{max(args.repeats, args.small_calls)} calls); the splice and `generate`'s own work are in no part. The "
        "sum of parts takes the tower's time inside the TTFT call itself (hooks on its patch embedding and last "
        "layer run): one tower call varies by more than the 10 % tolerance on shared cores, and it is most of TTFT. "
        "Decode: one-position forwards on that prefill's cache. "
        + (f"{args.repeats} timed calls per figure after one warm-up `generate` per model (medians; min-max in "
           "brackets). " if args.repeats > 1 else "Otherwise one timed call per figure after one warm-up "
           "`generate` per model. ")
        + ("CUDA: `torch.cuda.synchronize()` before and after every timed call." if args.device.type == "cuda"
           else ""), "",
    ]
    if any(extrapolated(r) for r in rows):
        what += [f"**{DAGGER} = extrapolated to the full depth** (32 layers for 7B, 40 for 13B): the time measured "
                 "outside the decoder layers + (full / built) x the time measured inside them (forward hooks on "
                 "every layer), and bytes x (full / built). Every other figure is as measured on the built layers.",
                 ""]
    kv_equal = all(r["kv_bytes"] == r["kv_bytes_analytic"] for r in rows)
    what += [f"**Memory.** KV cache: `nbytes` of the `DynamicCache` tensors after the prefill (against the cost "
             f"model: {'equal in every row' if kv_equal else 'DIFFERENT in some rows'}). Peak: "
             f"{rows[0]['memory_method'] if rows else ''}"
             + (", with glibc's mmap threshold fixed at 128 KiB so freed tensors leave the resident set"
                if measured.get("malloc_fixed") else "")
             + ", during the TTFT call; \"above\" is the peak less what was resident (allocated) before it.", ""]
    return machine + [""] + what


def _ttft_table(rows: list[dict], plots: dict) -> list[str]:
    built = sorted({r["built_layers"] for r in rows})
    note = f" ({'/'.join(map(str, built))} layer{'s' if built != [1] else ''})" if any(map(extrapolated, rows)) else ""
    table = []
    for (geometry, lm, batch), group in group_rows(rows).items():
        for r in group:
            err = 100 * (parts_ms(r) - r["ttft"]["median"]) / r["ttft"]["median"]
            in_call = f" / {_ms(r['tower_in_ttft'])}" if "tower_in_ttft" in r else ""
            table.append([geometry, LM_NAMES[lm], batch, r["label"], _counts(r), r["positions"],
                          f"{_ms(r['tower'])}{in_call}",
                          _ms(r["reduce"]) if r["mode"] != "none" else "-", _ms(r["projector"]), _ms(r["lm"]),
                          _ms(r["ttft"]), f"{_ms(parts_ms(r))} ({err:+.1f} %)",
                          f"{_ms(full_depth(r, 'lm'))}{_dag(r)}", f"{_ms(full_depth(r, 'ttft'))}{_dag(r)}"])
    out = ["### Time to first token and its parts", ""]
    out.append(md_table(["LLaVA", "LM", "B", "setting", "visual tokens / image", "LM positions",
                         "tower ms (alone / in TTFT)",
                         "reduction ms", "projector ms", f"LM prefill ms{note}", f"TTFT ms{note}",
                         "sum of parts (vs TTFT)", "LM prefill ms, full depth", "TTFT ms, full depth"], table))
    return out + ([f"![time to first token]({plots['ttft']})", ""] if plots.get("ttft") else [])


def _speedup_table(rows: list[dict], plots: dict) -> list[str]:
    out = ["### Prefill speed-up against the FLOPs ratio", "",
           "Analytic FLOPs from `llava/model/cost_model.py` (multiply-add = 2 FLOPs, the full T x T attention square, "
           "the lm_head on the last position only, as generation computes it) at the positions actually run (a "
           "batch's shorter prompts are left-padded to its longest). Ratios are against `none` in the same group; "
           "measured on the built layers, where the analytic ratio is also taken.", ""]
    table = [[r["geometry"], LM_NAMES[r["lm_name"]], r["batch"], r["label"], f"{r['flops']['lm_full'] / 1e12:.3f}",
              f"{i['analytic']:.2f}x", f"{i['measured']:.2f}x", f"{i['measured'] / i['analytic']:.2f}",
              f"{i['analytic_full']:.2f}x", f"{i['ttft_full']:.2f}x{_dag(r)}"]
             for i in speedups(rows) for r in [i["row"]]]
    out.append(md_table(["LLaVA", "LM", "B", "setting", "LM prefill TFLOPs, full depth", "FLOPs ratio",
                         "measured LM speed-up", "measured / analytic", "FLOPs ratio, full depth",
                         "TTFT speed-up, full depth"], table))
    return out + ([f"![speed-up against FLOPs]({plots['speedup']})", ""] if plots.get("speedup") else [])


def _decode_table(rows: list[dict], dtype: str) -> list[str]:
    table = []
    for r in rows:
        step, scale = r["decode_step"], r["full_layers"] / r["built_layers"]
        above = None if r["peak_mib"] is None or r["base_mib"] is None else r["peak_mib"] - r["base_mib"]
        table.append([r["geometry"], LM_NAMES[r["lm_name"]], r["batch"], r["label"], r["positions"],
                      _ms(step) if step else "-", f"{r['batch'] / (step['median'] / 1e3):.1f}" if step else "-",
                      f"{r['batch'] / (full_depth(r, 'decode_step') / 1e3):.1f}{_dag(r)}" if step else "-",
                      _mib(r["kv_bytes"] / 2**20), f"{_mib(r['kv_bytes'] * scale / 2**20)}{_dag(r)}",
                      _mib(r["kv_bytes_full_fp16"] / 2**20), _mib(r["peak_mib"]), _mib(above)])
    return ["### Decode and memory", "", md_table(
        ["LLaVA", "LM", "B", "setting", "context", "decode ms / step", "tokens / s", "tokens / s, full depth",
         f"KV cache ({dtype}, built)", f"KV cache ({dtype}), full depth", "KV cache fp16, full depth (analytic)",
         "peak memory during TTFT", "above"], table)]


def _visionzip(rows: list[dict]) -> str:
    items = [i for i in speedups(rows) if i["row"]["geometry"] == "1.6" and i["row"]["budget"] == 160]
    if not items:
        return "K = 160 on LLaVA-1.6 was not run here."
    i = items[0]
    return (f"here `prumerge K=160` on LLaVA-1.6 ({_counts(i['row'])} tokens in the released `spatial_unpad` layout, "
            f"against {baseline(rows, i['row'])['visual_tokens'][0]}) gives an analytic LM ratio of "
            f"{i['analytic_full']:.1f}x at full depth and a measured LM prefill speed-up of {i['measured']:.1f}x "
            f"(TTFT {i['ttft_full']:.1f}x{_dag(i['row'])}, the tower included).")


def _paper(rows: list[dict], text_tokens: int) -> list[str]:
    return ["### Against the published figures", "",
            "The PruMerge paper gives, for LLaVA-1.5-7B in fp16, 9.3 -> 0.91 TFLOPs and 88.6 -> 15.3 ms prefill "
            "(576 -> ~32 visual tokens). Those are roofline estimates for a GPU, not measurements: the prompt length "
            "behind them is not stated. The cost model (Vicuna-7B, fp16) says what they imply:", "",
            md_table(["figure", "paper", "cost model", "what it implies"], paper_rows(text_tokens)),
            f"{paper_narrative()} VisionZip reports {VISIONZIP_PREFILL}x faster prefill on LLaVA-NeXT-7B at 160 "
            f"visual tokens; {_visionzip(rows)}", ""]


def _eval(evaluation: dict | None) -> list[str]:
    if evaluation is None:
        return ["### `model_vqa_loader` throughput", "", "Skipped in this run (`--skip-eval`).", ""]
    batches = sorted(next(iter(evaluation["modes"].values()))["runs"])
    out = [f"### `model_vqa_loader` throughput, batch {batches[0]} against {batches[-1]}", ""]
    sizes = SimpleNamespace(**evaluation["sizes"])
    out += [f"`llava.eval.model_vqa_loader.eval_model` in-process (`--num-workers 0`, `--temperature 0`, "
            f"`--max_new_tokens {evaluation['new_tokens']}`, vicuna_v1) on {evaluation['questions']} generated "
            "questions about views of the demo image at five sizes, once per `--token-reduction` mode and batch size. "
            f"**Model: a {evaluation['size']} checkpoint written by `make_tiny_checkpoint`** (CLIP width "
            f"{sizes.vision_width} x {sizes.vision_layers} layers at the real 336 px / patch 14 grid, LM width "
            f"{sizes.lm_width} x {sizes.lm_layers} layers), not the full shapes: those would take many minutes per "
            "run on a CPU. The \"medium\" size keeps LLaVA-1.5-7B's proportions (the LM has ~30x the tower's "
            "parameters, 6.7 B against 0.3 B in 7B), which decide what batching gains: decoding is memory-bound and "
            "gains from a batch, the tower is compute-bound and on a CPU gains nothing (a batch of 8 CLIP layers "
            "here runs ~1.3x slower per image than one, its activations no longer fitting the caches). The model "
            f"load (`load_pretrained_model`, {evaluation['load_s']:.1f} s, timed alone) is "
            "taken off each run's time.", ""]
    table = []
    for mode, result in evaluation["modes"].items():
        base = result["runs"][min(result["runs"])]
        for batch, run in result["runs"].items():
            table.append([mode, batch, f"{run['seconds']:.1f}", f"{run['answer_seconds']:.1f}",
                          f"{run['questions_per_s']:.2f}", f"{run['questions_per_s'] / base['questions_per_s']:.2f}x",
                          "yes" if run["answers"] == base["answers"] else "NO",
                          f"{min(run['visual_tokens'])}-{max(run['visual_tokens'])}"])
    out.append(md_table(["--token-reduction", "--batch-size", "eval_model s", "answering s", "questions / s",
                         "vs batch 1", "answers identical to batch 1", "visual tokens / image"], table))
    return out


def _prefill_throughput(rows: list[dict]) -> list[str]:
    """The LM prefill's measured GFLOP/s per group and setting (built depth): how the efficiency of the GEMMs
    falls with the positions, the measurement behind a missed speed-up."""
    table = [[r["geometry"], LM_NAMES[r["lm_name"]], r["batch"], r["label"], r["positions"],
              f"{r['flops']['lm'] / (r['lm']['median'] / 1e3) / 1e9:.0f}"] for r in rows]
    return [md_table(["LLaVA", "LM", "B", "setting", "LM positions", "LM prefill GFLOP/s (built layers)"], table)]


def _targets(targets: list[dict], profiles: dict, rows: list[dict]) -> list[str]:
    out = ["### Targets", "", md_table(["target", "result", "measured"],
                                       [[t["name"], _verdict(t["ok"]), t["summary"]] for t in targets])]
    for target in targets:
        if target["ok"] is not False:
            continue
        out += [f"**Missed: {target['name']}.** {WHY_MISSED[target['kind']]}", ""]
        if target["kind"] == "speedup":
            out += _prefill_throughput(rows)
        profile = profiles.get(target["kind"])
        if profile:
            out += [f"`torch.profiler`, top ops by self time: {profile['what']}", "",
                    md_table(["op", "self ms", "share"], [[f"`{name}`", f"{ms:.1f}", f"{pct:.0f} %"]
                                                          for name, ms, pct in profile["ops"]])]
    return out


def render_section(block: str, args: argparse.Namespace, info: dict, measured: dict, evaluation: dict | None,
                   targets: list[dict], profiles: dict, plots: dict) -> str:
    """The whole section ``block`` (markers included) as Markdown."""
    rows = measured["rows"]
    title = "End to end" + (f" on CUDA ({info['dtype']}, {args.attn})" if args.device.type == "cuda" else " (CPU)")
    out = [f"<!-- bench:{block}:begin -->", f"## {title}: time to first token, decode, memory, eval throughput", "",
           f"Written by `{SCRIPT}` (this section only; a rerun replaces it and keeps the rest of the file).", ""]
    out += _header(args, info, measured)
    out += _ttft_table(rows, plots) + _speedup_table(rows, plots) + _decode_table(rows, info["dtype"])
    out += _paper(rows, args.text_tokens) + _eval(evaluation) + _targets(targets, profiles, rows)
    if args.smoke:
        out += ["*Smoke run (tiny shapes): the figures test the script, they say nothing about speed.*", ""]
    out.append(f"<!-- bench:{block}:end -->")
    return "\n".join(out) + "\n"


def cuda_placeholder() -> str:
    """The ``e2e_cuda`` section a CPU run leaves for the GPU figures until a CUDA run replaces it."""
    return ("<!-- bench:e2e_cuda:begin -->\n## End to end on CUDA\n\n"
            "No GPU figures have been taken yet. On a CUDA machine, `bash scripts/gpu_check.sh` runs the gpu-marked "
            "tests and the quick CUDA runs of the benchmarks, this one at the full 32 / 40 layers in float16 and "
            "bfloat16 with `sdpa` (and flash-attn when it is installed), and writes one section per dtype and "
            f"attention kernel here, replacing this one:\n\n    python {SCRIPT} --device cuda --dtype float16 "
            "--quick\n\nThe batched-eval target there is >= 3x.\n<!-- bench:e2e_cuda:end -->\n")


def write_doc(path: Path, block: str, section: str, *, cuda: bool) -> None:
    """Put ``section`` in place of section ``block`` of ``path`` (or append it). A CUDA run drops the ``e2e_cuda``
    placeholder; a CPU run adds it when no CUDA section is there yet. Everything else is kept; atomically."""
    text = path.read_text() if path.exists() else ""
    if cuda and find_section(text, "e2e_cuda") is not None:
        text = replace_section(text, "e2e_cuda", "")
    text = replace_section(text, block, section)
    if not cuda and not re.search(r"<!-- bench:e2e_cuda\w*:begin -->", text):
        text = replace_section(text, "e2e_cuda", cuda_placeholder())
    write_text_atomic(path, re.sub(r"\n{3,}", "\n\n", text))


def write_report(args: argparse.Namespace, info: dict, measured: dict, evaluation: dict | None,
                 profiles: dict | None = None) -> dict:
    """Targets, plots and the section, written under ``args.out``; returns ``{"section", "doc", "plots",
    "targets"}`` (plots: the PNG paths)."""
    cuda = args.device.type == "cuda"
    block = f"e2e_cuda_{info['dtype']}_{args.attn}" if cuda else "e2e"
    suffix = f"_cuda_{info['dtype']}" if cuda else ""
    rows = measured["rows"]
    targets = check_targets(rows, evaluation, args.device.type)
    plots = {}
    where = f"{info['device']} {info['dtype']}" + ("" if cuda else f", {args.threads} threads")
    if rows:
        plots["ttft"] = f"img/end_to_end_ttft{suffix}.png"
        plot_ttft(rows, args.out / plots["ttft"], f"Time to first token by part ({where})")
    if speedups(rows):
        plots["speedup"] = f"img/end_to_end_speedup{suffix}.png"
        plot_speedup(rows, args.out / plots["speedup"], f"LM prefill speed-up vs FLOPs ratio ({where})")
    section = render_section(block, args, info, measured, evaluation, targets, profiles or {}, plots)
    doc = args.out / "benchmarks.md"
    write_doc(doc, block, section, cuda=cuda)
    return {"section": section, "doc": doc, "plots": [args.out / p for p in plots.values()], "targets": targets}
