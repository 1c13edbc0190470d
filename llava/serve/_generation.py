"""Pieces of a worker's generation request that need no model: the request schema, length and stop handling."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import StoppingCriteria

#: upstream's ceiling on max_new_tokens for one request
MAX_NEW_TOKENS_CAP = 1024
EXCEEDS_CONTEXT_MESSAGE = "Exceeds max token length. Please start a new conversation, thanks."


class GenerateParams(BaseModel):
    """The body of ``/worker_generate_stream`` (upstream's fields and defaults; unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str = Field(description="the full conversation prompt; one <image> per image")
    images: list[str] = Field(default_factory=list, description="base64 images (data: URIs accepted)")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(50, ge=0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    max_new_tokens: int = 256
    stop: str | list[str] | None = None

    @field_validator("images", mode="before")
    @classmethod
    def _no_images(cls, value):
        return [] if value is None else value

    @property
    def stop_strings(self) -> list[str]:
        """The non-empty stop strings (upstream sends one string, "" for none)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0.001


def clamp_max_new_tokens(requested: int, prompt_tokens: int, context_len: int, cap: int = MAX_NEW_TOKENS_CAP) -> int:
    """How many tokens a request may generate: at most ``cap`` and what is left of the context.

    Args:
        requested: the request's ``max_new_tokens``.
        prompt_tokens: text tokens plus (an upper bound of) the visual tokens the prompt will occupy.
        context_len: the model's context length.
    Returns:
        The allowed count; below 1 when the prompt alone fills the context.
    """
    return min(requested, cap, context_len - prompt_tokens)


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in ``text``, else None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could be the start of a stop string (held back while streaming)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class StopWhenSet(StoppingCriteria):
    """Stop every row once ``event`` is set (the client went away, or a stop string was seen)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class CallAfterFirstStep(StoppingCriteria):
    """Call ``callback`` once, after the first generation step (the prompt and its images are encoded by then)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.callback is not None:
            callback, self.callback = self.callback, None
            callback()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
