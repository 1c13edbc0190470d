"""Instruments ``bench_end_to_end.py`` puts on the model: a clock inside the decoder layers (for the per-layer
extrapolation to full depth), a grab of the LM inputs ``generate`` builds, peak memory, and the KV cache's bytes.
Each one is attached and removed explicitly; none changes what the model computes."""

from __future__ import annotations

import ctypes
import resource
import time
from pathlib import Path

import torch

from bench_timing import sync

__all__ = ["CaptureLMInputs", "PeakMemory", "SpanClock", "layer_clock", "cache_nbytes", "fix_malloc_threshold"]


class SpanClock:
    """Wall time spent inside module spans, summed over the calls: each span runs from the start of its first
    module's forward to the end of its last one's (a forward pre-hook and a hook). Synchronises a CUDA device at
    both ends, so it is only installed where it is needed.

    Args:
        spans: ``(first, last)`` module pairs; ``(layer, layer)`` is one module's own time.
        device: the device to synchronise.
    """

    def __init__(self, spans: list[tuple[torch.nn.Module, torch.nn.Module]], device: torch.device):
        self.device, self.seconds, self._start = device, 0.0, 0.0
        self._handles = [h for first, last in spans for h in (first.register_forward_pre_hook(self._enter),
                                                              last.register_forward_hook(self._exit))]

    def _enter(self, *_) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def _exit(self, *_) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._start

    def take(self) -> float:
        """The seconds measured since the last ``take()``; restarts the count."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def layer_clock(layers: torch.nn.ModuleList, device: torch.device) -> SpanClock:
    """Wall time spent inside the decoder layers (each layer its own span), for the per-layer extrapolation to the
    full depth."""
    return SpanClock([(layer, layer) for layer in layers], device)


class CaptureLMInputs:
    """The first ``inputs_embeds [B, T, D]`` / ``attention_mask [B, T]`` / ``position_ids [B, T]`` the base model
    receives (``generate``'s prefill), grabbed by a forward pre-hook, to re-run that very prefill alone (no splice
    re-implemented in the benchmark). ``inputs`` stays None until then; the mask / positions may be None where
    ``generate`` leaves them out."""

    def __init__(self, base_model: torch.nn.Module):
        self.inputs: dict | None = None
        self._handle = base_model.register_forward_pre_hook(self._grab, with_kwargs=True)

    def _grab(self, _module, _args, kwargs) -> None:
        if self.inputs is None and kwargs.get("inputs_embeds") is not None:
            self.inputs = {k: kwargs.get(k) for k in ("inputs_embeds", "attention_mask", "position_ids")}

    def remove(self) -> None:
        self._handle.remove()


def fix_malloc_threshold() -> bool:
    """Make glibc give every allocation over 128 KiB its own mapping, returned to the system when freed, so the
    peak RSS of one call is that call's memory and not what an earlier call left in malloc's heap (glibc otherwise
    raises its threshold up to 32 MiB as tensors are freed). Process-wide: call it only in the script's own
    process. Returns whether it took effect."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3
    return bool(libc.mallopt(m_mmap_threshold, 128 * 1024))


def _proc_status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory during a ``with`` block, in MiB (``peak_mib``; ``base_mib`` is what was held before it).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (what the caching allocator handed
    out: weights, cache, activations). CPU: the peak resident set (``VmHWM``) after resetting it by writing 5 to
    ``/proc/self/clear_refs``; where that is refused, ``ru_maxrss`` (the process's lifetime peak, which cannot be
    reset). ``method`` says which.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ""
        self.peak_mib: float | None = None
        self.base_mib: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mib = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated"
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "peak RSS (VmHWM, reset through /proc/self/clear_refs)"
        except OSError:
            self.method = "ru_maxrss (lifetime peak RSS: could not be reset here)"
        self.base_mib = _proc_status_mib("VmRSS")
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.method.startswith("peak RSS"):
            self.peak_mib = _proc_status_mib("VmHWM")
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return False


def cache_nbytes(cache: object) -> int:
    """Bytes of the keys and values a ``DynamicCache`` holds (every built layer)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return sum(t.nbytes for layer in layers for t in (layer.keys, layer.values) if t is not None)
    return sum(t.nbytes for t in (*cache.key_cache, *cache.value_cache))
