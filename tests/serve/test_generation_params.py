"""The model-free parts of a generation request: schema defaults, length clamp, stop strings."""

from __future__ import annotations

import threading

import pytest
import torch
from pydantic import ValidationError

from llava.serve._generation import (
    MAX_NEW_TOKENS_CAP,
    CallAfterFirstStep,
    GenerateParams,
    StopWhenSet,
    clamp_max_new_tokens,
    find_stop,
    stop_prefix_length,
)


def test_request_defaults_are_upstreams():
    params = GenerateParams.model_validate({"prompt": "hi", "images": None, "unknown_field": 1})
    assert (params.temperature, params.top_p, params.top_k, params.max_new_tokens) == (1.0, 1.0, 50, 256)
    assert params.images == [] and params.stop_strings == [] and params.do_sample
    assert GenerateParams(prompt="x", temperature=0, stop="").stop_strings == []
    assert not GenerateParams(prompt="x", temperature=0).do_sample
    assert GenerateParams(prompt="x", stop=["###", "", "</s>"]).stop_strings == ["###", "</s>"]
    with pytest.raises(ValidationError):
        GenerateParams.model_validate({"images": []})  # no prompt
    with pytest.raises(ValueError):  # pydantic's error is a ValueError: the worker reports it as error_code 1
        GenerateParams(prompt="x", top_p=1.5)


def test_clamp_max_new_tokens():
    assert clamp_max_new_tokens(256, 100, 2048) == 256
    assert clamp_max_new_tokens(5000, 100, 8192) == MAX_NEW_TOKENS_CAP == 1024
    assert clamp_max_new_tokens(512, 2000, 2048) == 48  # what is left of the context
    assert clamp_max_new_tokens(512, 2048, 2048) == 0  # nothing left: the worker answers "Exceeds ..."


def test_find_stop_and_hold_back():
    assert find_stop("a cat###dog</s>", ["</s>", "###"]) == 5
    assert find_stop("a cat", ["###"]) is None and find_stop("a cat", []) is None
    # the end of the text that could still become a stop string is held back while streaming
    assert stop_prefix_length("hello ##", ["###"]) == 2
    assert stop_prefix_length("hello #", ["###", "#!"]) == 1
    assert stop_prefix_length("hello </", ["###", "</s>"]) == 2
    assert stop_prefix_length("hello", ["###"]) == 0
    assert stop_prefix_length("", ["###"]) == 0


def test_stopping_criteria_helpers():
    ids, scores = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 5)
    event = threading.Event()
    stop = StopWhenSet(event)
    assert stop(ids, scores).tolist() == [False, False]
    event.set()
    assert stop(ids, scores).tolist() == [True, True]

    calls = []
    once = CallAfterFirstStep(lambda: calls.append(1))
    assert once(ids, scores).tolist() == [False, False]
    once(ids, scores)
    assert calls == [1]
