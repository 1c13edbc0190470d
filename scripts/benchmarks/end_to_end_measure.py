"""The measurements of ``bench_end_to_end.py``: for each group (geometry x LM x batch size) and setting, time to
first token through ``generate`` and its parts each alone, decode steps on that prefill's cache, KV bytes, peak
memory, and the analytic FLOPs of what ran (``llava/model/cost_model.py``).

Every call goes through the package's public API: ``model.generate(..., max_new_tokens=1)`` (TTFT),
``tower.selected_hidden_states`` (tower), ``tower.reduce`` (reduction), ``mm_projector`` (projector), the model's
``forward`` on the ``inputs_embeds`` / ``attention_mask`` / ``position_ids`` that ``generate`` gave the base model
(LM prefill), and one-position ``forward`` calls on its cache (decode).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from bench_timing import summary_ms, time_calls, timed
from end_to_end_instruments import CaptureLMInputs, PeakMemory, SpanClock, cache_nbytes, layer_clock
from end_to_end_model import LM_SIZES, Group, build_llava, calibrate_tower, layers_to_build, make_inputs, setting_label
from llava.model import cost_model
from llava.model.token_reduction import TokenReduction, split_budget

if TYPE_CHECKING:
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

__all__ = ["bench_group", "bench_models", "generate_first_token"]


@dataclass(frozen=True)
class Prompts:
    """One group's inputs: ``input_ids`` / ``attention_mask`` ``[B, T + 1]``, ``pixels`` (``[B, 3, 336, 336]`` or
    ``[B, tiles, 3, 336, 336]``), the images' sizes, and the tower's input ``tiles [B * tiles, 3, 336, 336]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixels: torch.Tensor
    sizes: list
    tiles: torch.Tensor

    @property
    def per_image(self) -> int:
        return self.tiles.shape[0] // self.input_ids.shape[0]


def generate_first_token(model: LlavaLlamaForCausalLM, prompts: Prompts) -> torch.Tensor:
    """Greedy ``generate`` with ``max_new_tokens=1``: the time to first token; returns the new ids ``[B, 1]``."""
    return model.generate(prompts.input_ids, images=prompts.pixels, image_sizes=prompts.sizes,
                          attention_mask=prompts.attention_mask, max_new_tokens=1, do_sample=False, temperature=None,
                          top_p=None, top_k=None, use_cache=True, pad_token_id=0)


def _layers(clock: SpanClock | None) -> float:
    return clock.take() if clock else 0.0


def _tower_clock(tower: CLIPVisionTower, device: torch.device) -> SpanClock:
    """The tower's time inside a call: from its patch embedding to the last encoder layer it runs."""
    clip = tower.vision_tower
    return SpanClock([(clip.embeddings, clip.encoder.layers[tower.num_layers_to_run - 1])], device)


def _time_ttft(model: LlavaLlamaForCausalLM, prompts: Prompts, repeats: int, device: torch.device,
               clock: SpanClock | None) -> dict:
    """``repeats`` ``generate`` calls (peak memory on the last); the LM inputs of the first one; the tower's time
    inside each call."""
    capture = CaptureLMInputs(model.get_model())
    tower_clock = _tower_clock(model.get_vision_tower(), device)
    seconds, layers, towers, first, peak = [], [], [], None, None
    try:
        for r in range(repeats):
            meter = PeakMemory(device) if r == repeats - 1 else contextlib.nullcontext()
            with meter:
                s, first = timed(lambda: generate_first_token(model, prompts), device)
            seconds.append(s)
            layers.append(_layers(clock))
            towers.append(tower_clock.take())
            peak = meter if isinstance(meter, PeakMemory) else peak
    finally:
        capture.remove()
        tower_clock.remove()
    return {"seconds": seconds, "layers": layers, "tower": towers, "first": first[:, -1].reshape(-1).cpu(),
            "peak": peak,
            "lm_in": capture.inputs, "counts": list(model.last_visual_token_counts)}


def _time_prefill_and_decode(model: LlavaLlamaForCausalLM, lm_in: dict, repeats: int, steps: int,
                             device: torch.device, clock: SpanClock | None) -> dict:
    """The LM prefill alone on ``lm_in`` (``repeats`` calls, a fresh cache each), then ``steps`` greedy
    one-position forwards on the last prefill's cache."""
    from transformers import DynamicCache

    def prefill(cache):
        return model(**lm_in, past_key_values=cache, use_cache=True, logits_to_keep=1)

    seconds, layers, cache, out = [], [], None, None
    for _ in range(repeats):
        cache = DynamicCache()
        s, out = timed(lambda c=cache: prefill(c), device)
        seconds.append(s)
        layers.append(_layers(clock))
    next_ids = out.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
    first = next_ids.reshape(-1).cpu()
    kv_bytes = cache_nbytes(cache)
    decode, decode_layers = [], []
    mask, positions = lm_in["attention_mask"], lm_in["position_ids"]  # [B, T] each, or None
    for _ in range(steps):
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        positions = None if positions is None else positions[:, -1:] + 1

        def step(ids=next_ids, m=mask, p=positions, c=cache):
            return model(input_ids=ids, attention_mask=m, position_ids=p, past_key_values=c, use_cache=True,
                         logits_to_keep=1)

        s, out = timed(step, device)
        next_ids = out.logits[:, -1].argmax(-1, keepdim=True)
        decode.append(s)
        decode_layers.append(_layers(clock))
    return {"seconds": seconds, "layers": layers, "first": first, "kv_bytes": kv_bytes, "decode": decode,
            "decode_layers": decode_layers, "prefill": lambda: prefill(DynamicCache())}


def _analytic(model: LlavaLlamaForCausalLM, tower: CLIPVisionTower, group: Group, positions: int, tiles: int,
              tokens: list[torch.Tensor], centres: int | None) -> dict:
    """FLOPs (built and full depth) and KV bytes of what ran, from the cost model."""
    lm = cost_model.LMShape.from_config(model.config)
    full = lm.with_layers(LM_SIZES[group.lm]["num_hidden_layers"])
    vision = cost_model.VisionShape.from_config(tower.config, select_layer=tower.select_layer)
    return {
        "flops": {
            "lm": cost_model.lm_prefill_flops(lm, positions, group.batch)["total"],
            "lm_full": cost_model.lm_prefill_flops(full, positions, group.batch)["total"],
            "vision": cost_model.vision_flops(vision, tiles)["total"],
            "reduction": 0 if centres is None else cost_model.reduction_flops(vision, centres, tiles),
            "projector": cost_model.projector_flops(vision.hidden_size, lm.hidden_size,
                                                    sum(t.shape[0] for t in tokens)),
        },
        "kv_bytes_analytic": cost_model.kv_cache_bytes(lm, positions, group.batch, model.dtype),
        "kv_bytes_full_fp16": cost_model.kv_cache_bytes(full, positions, group.batch, "float16"),
    }


def _optional_ms(times: list[float]) -> dict | None:
    return summary_ms(times) if times else None


def bench_group(model: LlavaLlamaForCausalLM, group: Group, args: argparse.Namespace, bar: tqdm) -> list[dict]:
    """Every setting of ``group``: TTFT (generate) and its parts, decode, KV bytes, peak memory, analytic FLOPs.
    A row per setting; with ``args.profile_misses`` each row also holds ``_calls`` (the LM prefill, the TTFT and
    the reduction as callables, for profiling a missed target while the model is alive)."""
    device = args.device
    tower, projector = model.get_vision_tower(), model.get_model().mm_projector
    full_layers = LM_SIZES[group.lm]["num_hidden_layers"]
    built_layers = model.config.num_hidden_layers
    ids, mask, pixels, sizes = make_inputs(model, group.geometry, group.batch, args.text_tokens, args.seed)
    prompts = Prompts(ids, mask, pixels, sizes, pixels if pixels.dim() == 4 else pixels.flatten(0, 1))
    clock = layer_clock(model.get_model().layers, device) if built_layers < full_layers else None
    where = f"{group.geometry} {group.lm} B={group.batch}"
    rows = []
    try:
        bar.set_postfix_str(f"{where}: tower")
        tower_s, hidden = [], None
        for _ in range(args.repeats):  # hidden: [B * tiles, 1 + N, C]
            seconds, hidden = timed(lambda: tower.selected_hidden_states(prompts.tiles), device)
            tower_s.append(seconds)
        for mode, budget in group.settings:
            bar.set_postfix_str(f"{where}: {setting_label(mode, budget)}")
            reduction = TokenReduction(mode, budget, source="flag")
            tower.set_token_reduction(reduction)
            ttft = _time_ttft(model, prompts, args.repeats, device, clock)
            budgets, reduce_call, centres = None, None, None
            if reduction.enabled:
                budgets = [b for _ in range(group.batch) for b in split_budget(budget, prompts.per_image)]

                def reduce_call(b=budgets):
                    return tower.reduce(hidden, b)

                reduce_s = time_calls(reduce_call, device, args.small_calls, warmup=1)
                tokens = reduce_call().tokens
                centres = round(sum(t.shape[0] - 1 for t in tokens) / len(tokens))
            else:
                reduce_s, tokens = [0.0], list(tower.feature_select(hidden))
            stacked = torch.cat(tokens, dim=0)  # [sum of tokens, C]
            project_s = time_calls(lambda s=stacked: projector(s), device, args.small_calls, warmup=1)
            lm_repeats = max(args.repeats, args.small_calls) if group.batch == 1 else args.repeats
            lm = _time_prefill_and_decode(model, ttft["lm_in"], lm_repeats, args.decode_steps, device, clock)
            positions = int(ttft["lm_in"]["inputs_embeds"].shape[1])
            peak = ttft["peak"]
            rows.append({
                "geometry": group.geometry, "lm_name": group.lm, "batch": group.batch, "mode": mode, "budget": budget,
                "label": setting_label(mode, budget), "visual_tokens": ttft["counts"], "positions": positions,
                "tiles": prompts.per_image, "built_layers": built_layers, "full_layers": full_layers,
                "tower": summary_ms(tower_s), "reduce": summary_ms(reduce_s), "projector": summary_ms(project_s),
                "lm": summary_ms(lm["seconds"]), "lm_layers": summary_ms(lm["layers"]),
                "ttft": summary_ms(ttft["seconds"]), "ttft_layers": summary_ms(ttft["layers"]),
                "tower_in_ttft": summary_ms(ttft["tower"]),
                "decode_step": _optional_ms(lm["decode"]), "decode_layers": _optional_ms(lm["decode_layers"]),
                "kv_bytes": lm["kv_bytes"], "peak_mib": peak.peak_mib, "base_mib": peak.base_mib,
                "memory_method": peak.method, "same_first_token": bool(torch.equal(lm["first"], ttft["first"])),
                **_analytic(model, tower, group, positions, prompts.tiles.shape[0], tokens, centres),
            })
            if args.profile_misses:  # kept only until the targets are checked, while the model is alive
                rows[-1]["_calls"] = {"lm": lm["prefill"], "reduce": reduce_call,
                                      "ttft": lambda: generate_first_token(model, prompts)}
            bar.update()
    finally:
        if clock:
            clock.remove()
        tower.set_token_reduction(TokenReduction("none", source="flag"))
    return rows


def bench_models(args: argparse.Namespace, clip_dir: Path, plan: list[Group], bar: tqdm,
                 profile_rows: Callable[[list[dict], torch.device], None]) -> dict:
    """Build each LM of ``plan`` once (sharing one tower, calibrated once), measure its groups, and let
    ``profile_rows(rows, device)`` profile missed targets while the model is alive.

    Returns:
        ``{"rows", "builds": {lm: {"layers", "seconds", "attn"}}, "scale", "tower_params_m"}``.
    """
    rows, builds, tower, scale = [], {}, None, None
    for lm in dict.fromkeys(g.lm for g in plan):
        layers = layers_to_build(args, lm)
        bar.set_postfix_str(f"building {lm}: {layers} layers")
        start = time.perf_counter()
        model = build_llava(lm, layers, clip_dir, args, tower)
        builds[lm] = {"layers": layers, "seconds": time.perf_counter() - start,
                      "attn": model.config._attn_implementation}
        ids, mask, pixels, sizes = make_inputs(model, "1.5", 1, args.text_tokens, args.seed)
        if tower is None:
            tower = model.get_vision_tower()
            scale = calibrate_tower(tower, pixels)
        with torch.inference_mode():
            for mode in ("none", "prumerge"):  # warm-up: first calls pay for thread pools, kernels, the allocator
                tower.set_token_reduction(TokenReduction(mode, source="flag"))
                generate_first_token(model, Prompts(ids, mask, pixels, sizes, pixels))
            for group in (g for g in plan if g.lm == lm):
                group_rows = bench_group(model, group, args, bar)
                profile_rows(group_rows, args.device)
                rows += group_rows
        del model
        gc.collect()
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    params_m = None
    if tower is not None:
        params_m = cost_model.vision_parameters(cost_model.VisionShape.from_config(tower.config)) / 1e6
    return {"rows": rows, "builds": builds, "scale": scale, "tower_params_m": params_m}
