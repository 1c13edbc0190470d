"""The PruMerge paper's LLaVA-1.5-7B efficiency figures (9.3 -> 0.91 TFLOPs, 88.6 -> 15.3 ms prefill) against the
analytic cost model (``llava/model/cost_model.py``): what prompt length each figure implies, and which of them
cannot be reproduced (``bench_end_to_end.py``'s "Against the published figures").
"""

from __future__ import annotations

from llava.model import cost_model

__all__ = ["PAPER", "VISIONZIP_PREFILL", "paper_narrative", "paper_rows"]

#: the PruMerge paper's LLaVA-1.5-7B figures (fp16; 576 visual tokens against ~32)
PAPER = {"flops_t": (9.3, 0.91), "prefill_ms": (88.6, 15.3), "tokens": (576, 32)}
VISIONZIP_PREFILL = 7.8  # VisionZip's LLaVA-NeXT prefill speed-up at 160 visual tokens
#: a V100-class GPU: fp16 tensor-core peak (TFLOP/s) and memory bandwidth (GB/s), for the roofline reading
GPU_PEAK_TFLOPS, GPU_BANDWIDTH_GBS = 125.0, 900.0


def _implied() -> dict:
    lm, vision = cost_model.VICUNA_7B, cost_model.CLIP_VIT_L_336
    (full_t, pm_t), (full_n, pm_n) = PAPER["flops_t"], PAPER["tokens"]
    return {
        "lm_alone": [cost_model.text_tokens_for_flops(lm, f * 1e12, n) for f, n in ((full_t, full_n), (pm_t, pm_n))],
        "with_tower": [cost_model.text_tokens_for_flops(lm, f * 1e12, n, vision=vision)
                       for f, n in ((full_t, full_n), (pm_t, pm_n))],
        "ratio": cost_model.text_tokens_for_ratio(lm, full_t / pm_t, full_n, pm_n),
        "weights_gb": cost_model.lm_parameters(lm) * 2 / 1e9,
    }


def paper_rows(text_tokens: int) -> list[list[str]]:
    """Table rows ``[figure, paper, cost model at text_tokens text positions, what it implies]``."""
    lm, vision = cost_model.VICUNA_7B, cost_model.CLIP_VIT_L_336
    (full_t, pm_t), (full_n, pm_n), (ms_full, ms_pm) = PAPER["flops_t"], PAPER["tokens"], PAPER["prefill_ms"]
    ours = [cost_model.lm_prefill_flops(lm, n + text_tokens)["total"] / 1e12 for n in (full_n, pm_n)]
    tower = cost_model.vision_flops(vision)["total"] / 1e12
    implied = _implied()
    at = f"at {text_tokens} text positions"
    return [
        [f"prefill FLOPs, {full_n} visual tokens", f"{full_t} T", f"{ours[0]:.2f} T (LM) + {tower:.2f} T (tower) {at}",
         f"text length for {full_t} T: {implied['lm_alone'][0]:.0f} (LM alone) or {implied['with_tower'][0]:.0f} "
         "(LM + tower)"],
        [f"prefill FLOPs, PruMerge (~{pm_n} tokens)", f"{pm_t} T", f"{ours[1]:.2f} T (LM) + {tower:.2f} T (tower) {at}",
         f"text length for {pm_t} T: {implied['lm_alone'][1]:.0f} (LM alone) or {implied['with_tower'][1]:.0f} "
         "(LM + tower)"],
        ["FLOPs ratio", f"{full_t / pm_t:.1f}x", f"{ours[0] / ours[1]:.1f}x (LM) {at}",
         f"{full_t / pm_t:.1f}x needs the same text length t = {implied['ratio']:.0f} in both"],
        ["prefill time", f"{ms_full} -> {ms_pm} ms ({ms_full / ms_pm:.1f}x)", "not measurable on a CPU",
         f"{full_t} T / {ms_full} ms = {full_t / ms_full * 1e3:.0f} TFLOP/s; {implied['weights_gb']:.1f} GB of fp16 "
         f"weights / {ms_pm} ms = {implied['weights_gb'] / ms_pm * 1e3:.0f} GB/s"],
    ]


def paper_narrative() -> str:
    """The paragraph under the table: why no one prompt reproduces both FLOPs figures, and how the times read."""
    lm = cost_model.VICUNA_7B
    (full_t, pm_t), (full_n, pm_n), (ms_full, ms_pm) = PAPER["flops_t"], PAPER["tokens"], PAPER["prefill_ms"]
    implied = _implied()
    t_full, t_pm = implied["lm_alone"]
    t_ratio, weights_gb = implied["ratio"], implied["weights_gb"]
    at_ratio = [cost_model.lm_prefill_flops(lm, n + round(t_ratio))["total"] / 1e12 for n in (full_n, pm_n)]
    intensity = pm_t * 1e12 / (weights_gb * 1e9)  # FLOPs per byte of weights read
    ridge = GPU_PEAK_TFLOPS * 1e12 / (GPU_BANDWIDTH_GBS * 1e9)
    return (f"No single prompt reproduces both FLOPs figures: the absolute values need ~{t_full:.0f} text positions "
            f"beside {full_n} image tokens but ~{t_pm:.0f} beside {pm_n}, and their {full_t / pm_t:.1f}x ratio "
            f"needs ~{t_ratio:.0f} in both (at {t_ratio:.0f} the totals would be {at_ratio[0]:.1f} and "
            f"{at_ratio[1]:.2f} TFLOPs). The times read as a roofline on a V100-class GPU "
            f"({GPU_PEAK_TFLOPS:.0f} TFLOP/s fp16 tensor peak, {GPU_BANDWIDTH_GBS:.0f} GB/s): {ms_full} ms is "
            f"{full_t} TFLOPs at {full_t / ms_full * 1e3:.0f} TFLOP/s, and {ms_pm} ms is the time to read the "
            f"{weights_gb:.1f} GB of fp16 weights once at {weights_gb / ms_pm * 1e3:.0f} GB/s: a memory-bound floor "
            f"that no shorter prompt goes under ({pm_t} TFLOPs over {weights_gb:.1f} GB is {intensity:.0f} FLOPs "
            f"per byte, under the ~{ridge:.0f} at which such a GPU stops being memory-bound). So the "
            f"{ms_full / ms_pm:.1f}x time ratio is capped by the weights, not by the FLOPs ({full_t / pm_t:.1f}x). "
            "Neither time can be measured on a CPU (the CUDA run of this script measures prefill at full depth).")
