"""The targets of ``bench_end_to_end.py`` (issue 9), checked on one run's rows, and the profile of the call behind
each miss, taken while the model is still alive.

1. The measured LM prefill speed-up (``none`` / setting, same group) is >= 0.8 x the analytic FLOPs ratio.
2. Time to first token (``generate``) is within 10 % of the sum of its parts (tower + reduction + projector + LM).
3. The reduction is <= 1 % of time to first token at 7B depth (extrapolated to 32 layers when fewer are built).
4. Batched ``model_vqa_loader`` is >= 1.5x batch-1 throughput on a CPU (>= 3x on a GPU) with ``--token-reduction
   prumerge`` (the default), with identical answers in every mode run.

A row is one setting of one group (``end_to_end_measure.bench_group``); times are ``summary_ms`` dicts.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from bench_timing import profile_top_ops
from end_to_end_model import LM_NAMES

__all__ = ["DAGGER", "TargetChecker", "check_targets", "extrapolated", "full_depth", "parts_ms", "speedups"]

SPEEDUP_FRACTION = 0.8
TTFT_TOLERANCE = 0.10
REDUCTION_SHARE = 0.01
EVAL_SPEEDUP = {"cpu": 1.5, "cuda": 3.0}
DAGGER = "†"  # beside every figure extrapolated to the full depth


def extrapolated(row: dict) -> bool:
    """Whether the row's model had fewer decoder layers than the full depth (its full-depth figures are
    extrapolated)."""
    return row["built_layers"] < row["full_layers"]


def full_depth(row: dict, key: str) -> float:
    """``row[key]`` (ms) at the full depth: the time outside the decoder layers as measured, plus the time inside
    them x full / built (``key``: "ttft", "lm" or "decode_step", each with its ``<key>_layers`` clock;
    "decode_step" reads "decode_layers")."""
    layers_key = "decode_layers" if key == "decode_step" else f"{key}_layers"
    return row[key]["median"] + row[layers_key]["median"] * (row["full_layers"] / row["built_layers"] - 1)


def parts_ms(row: dict) -> float:
    """Tower + reduction + projector + LM prefill (ms, medians), at the built depth: what TTFT is compared with.

    The tower is its time inside the TTFT calls themselves (``tower_in_ttft``, when measured): one call of the
    tower varies by more than the tolerance on shared cores, and it is most of TTFT. The others are timed alone."""
    tower = row.get("tower_in_ttft", row["tower"])["median"]
    return tower + sum(row[k]["median"] for k in ("reduce", "projector", "lm"))


def where(row: dict) -> str:
    return f"LLaVA-{row['geometry']}, {LM_NAMES[row['lm_name']]}, B = {row['batch']}, {row['label']}"


def baseline(rows: list[dict], row: dict) -> dict | None:
    """The ``none`` row of ``row``'s group, if measured."""
    key = (row["geometry"], row["lm_name"], row["batch"])
    return next((r for r in rows if r["mode"] == "none" and (r["geometry"], r["lm_name"], r["batch"]) == key), None)


def speedups(rows: list[dict]) -> list[dict]:
    """Per reduced row with a ``none`` row in its group: ``{"row", "measured", "analytic", "analytic_full",
    "ttft_full", "ok"}``: the measured LM prefill speed-up and the analytic FLOPs ratio at the built depth, the
    analytic ratio and the TTFT speed-up at the full depth, and whether target 1 holds."""
    out = []
    for row in rows:
        base = baseline(rows, row)
        if row["mode"] == "none" or base is None:
            continue
        measured = base["lm"]["median"] / row["lm"]["median"]
        analytic = base["flops"]["lm"] / row["flops"]["lm"]
        out.append({"row": row, "measured": measured, "analytic": analytic,
                    "analytic_full": base["flops"]["lm_full"] / row["flops"]["lm_full"],
                    "ttft_full": full_depth(base, "ttft") / full_depth(row, "ttft"),
                    "ok": measured >= SPEEDUP_FRACTION * analytic})
    return out


def _is_7b(row: dict) -> bool:
    return row["lm_name"] in ("7b", "tiny-7b")


def _ttft_error(row: dict) -> float:
    return abs(row["ttft"]["median"] - parts_ms(row)) / row["ttft"]["median"]


def _reduction_share(row: dict) -> float:
    return row["reduce"]["median"] / full_depth(row, "ttft")


def eval_ok(evaluation: dict, device_type: str) -> bool:
    return evaluation["identical"] and evaluation["speedup"] >= EVAL_SPEEDUP[device_type]


class TargetChecker:
    """Checks the targets group by group while the model is alive, profiling the first call behind each kind of
    miss (``profiles``: kind -> ``{"what", "ops": [(op, ms, %)]}``)."""

    def __init__(self, args: argparse.Namespace):
        self.enabled = args.profile_misses
        self.profiles: dict[str, dict] = {}

    def _profile(self, kind: str, what: str, call: Callable[[], object] | None, device: torch.device) -> None:
        if kind in self.profiles or call is None or not self.enabled:
            return
        self.profiles[kind] = {"what": what, "ops": profile_top_ops(call, device)}

    def profile_rows(self, rows: list[dict], device: torch.device) -> None:
        """Profile the misses of targets 1-3 among ``rows`` (one group), then drop the rows' ``_calls``."""
        with torch.inference_mode():
            for item in speedups(rows):
                if not item["ok"]:
                    row = item["row"]
                    self._profile("speedup", f"LM prefill, {where(row)}", row.get("_calls", {}).get("lm"), device)
            for row in rows:
                calls = row.get("_calls", {})
                if _ttft_error(row) > TTFT_TOLERANCE:
                    self._profile("ttft", f"generate(max_new_tokens=1), {where(row)}", calls.get("ttft"), device)
                if _is_7b(row) and row["mode"] != "none" and _reduction_share(row) > REDUCTION_SHARE:
                    self._profile("reduction", f"tower.reduce, {where(row)}", calls.get("reduce"), device)
        for row in rows:
            row.pop("_calls", None)

    def profile_eval(self, evaluation: dict, call: Callable[[], object], device: torch.device) -> None:
        """Profile the batched eval run when target 4 is missed."""
        if not eval_ok(evaluation, device.type):
            self._profile("eval", "model_vqa_loader.eval_model at the largest --batch-size", call, device)


def check_targets(rows: list[dict], evaluation: dict | None, device_type: str) -> list[dict]:
    """The four targets, in order: ``{"kind", "name", "ok", "summary"}`` each (``ok`` None when not measured)."""
    targets = []
    items = speedups(rows)
    name = f"LM prefill speed-up >= {SPEEDUP_FRACTION} x the analytic FLOPs ratio"
    if items:
        worst = min(items, key=lambda i: i["measured"] / i["analytic"])
        missed = sum(not i["ok"] for i in items)
        targets.append({"kind": "speedup", "name": name, "ok": not missed, "summary":
                        f"{len(items) - missed} of {len(items)} settings; lowest {worst['measured']:.2f}x measured "
                        f"against {worst['analytic']:.2f}x analytic ({worst['measured'] / worst['analytic']:.2f} of "
                        f"it) at {where(worst['row'])}"})
    else:
        targets.append({"kind": "speedup", "name": name, "ok": None, "summary": "no `none` baseline measured"})
    name = f"time to first token within {TTFT_TOLERANCE:.0%} of the sum of its parts"
    if rows:
        worst = max(rows, key=_ttft_error)
        inside = sum(_ttft_error(r) <= TTFT_TOLERANCE for r in rows)
        targets.append({"kind": "ttft", "name": name, "ok": _ttft_error(worst) <= TTFT_TOLERANCE, "summary":
                        f"{inside} of {len(rows)} settings; largest difference {100 * _ttft_error(worst):.1f} % at "
                        f"{where(worst)}"})
    else:
        targets.append({"kind": "ttft", "name": name, "ok": None, "summary": "no rows measured"})
    name = f"reduction <= {REDUCTION_SHARE:.0%} of time to first token at 7B depth"
    reduced = [r for r in rows if _is_7b(r) and r["mode"] != "none"]
    if reduced:
        row = max(reduced, key=_reduction_share)
        mark = DAGGER if extrapolated(row) else ""
        targets.append({"kind": "reduction", "name": name, "ok": _reduction_share(row) <= REDUCTION_SHARE,
                        "summary": f"largest {100 * _reduction_share(row):.2f} %{mark} ({row['reduce']['median']:.1f} "
                                   f"ms of {full_depth(row, 'ttft'):.0f} ms{mark}) at {where(row)}"})
    else:
        targets.append({"kind": "reduction", "name": name, "ok": None, "summary": "no reduced 7B row measured"})
    name = f"batched eval (prumerge) >= {EVAL_SPEEDUP[device_type]}x batch-1 throughput, identical answers"
    if evaluation is not None:
        per_mode = ", ".join(f"{mode} {m['speedup']:.2f}x" for mode, m in evaluation["modes"].items())
        targets.append({"kind": "eval", "name": name, "ok": eval_ok(evaluation, device_type),
                        "summary": f"{evaluation['primary']} {evaluation['speedup']:.2f}x (every mode: {per_mode}); "
                                   "answers "
                                   f"{'identical' if evaluation['identical'] else 'DIFFERENT'}"})
    else:
        targets.append({"kind": "eval", "name": name, "ok": None, "summary": "not run (`--skip-eval`)"})
    return targets
