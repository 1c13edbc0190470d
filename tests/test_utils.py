"""Tests for llava.utils: a logger that touches nothing else, scoped init skipping, semaphore formatting."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading

import pytest
import torch

from llava import constants
from llava.utils import build_logger, disable_torch_init, pretty_print_semaphore


@pytest.fixture
def logdir(tmp_path, monkeypatch):
    folder = tmp_path / "logs"
    monkeypatch.setattr(constants, "LOGDIR", str(folder))
    return folder


def _cleanup(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True


def test_build_logger_touches_only_its_logger(logdir):
    stdout, stderr = sys.stdout, sys.stderr
    root_handlers = list(logging.getLogger().handlers)
    other = logging.getLogger("llava_test_other")
    other_handlers = list(other.handlers)
    logger = build_logger("llava_test_worker", "worker.log")
    try:
        assert sys.stdout is stdout and sys.stderr is stderr
        assert logging.getLogger().handlers == root_handlers
        assert other.handlers == other_handlers
        assert logger.level == logging.INFO and logger.propagate is False
        kinds = sorted(type(h).__name__ for h in logger.handlers)
        assert kinds == ["StreamHandler", "_LazyDailyFileHandler"]
        assert not logdir.exists()  # nothing written before the first record
        logger.info("hello %d", 42)
        for handler in logger.handlers:
            handler.flush()
        text = (logdir / "worker.log").read_text(encoding="utf-8")
        assert "| INFO | llava_test_worker | hello 42" in text
    finally:
        _cleanup(logger)


def test_build_logger_twice_does_not_duplicate(logdir):
    build_logger("llava_test_twice", "a.log")
    logger = build_logger("llava_test_twice", "a.log")
    try:
        assert len(logger.handlers) == 2
        foreign = logging.NullHandler()
        logger.addHandler(foreign)
        logger = build_logger("llava_test_twice", None)
        assert foreign in logger.handlers and len(logger.handlers) == 2  # ours replaced, theirs kept
    finally:
        _cleanup(logger)
    assert not logdir.exists()


def test_disable_torch_init_bare_call_changes_nothing():
    before = (torch.nn.init.kaiming_uniform_, torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters)
    disable_torch_init()
    after = (torch.nn.init.kaiming_uniform_, torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters)
    assert before == after


def test_disable_torch_init_skips_init_only_inside_with():
    original = torch.nn.init.kaiming_uniform_
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    with disable_torch_init():
        assert torch.nn.init.kaiming_uniform_ is not original
        layer = torch.nn.Linear(64, 64)
    # Random init would have consumed the generator; skipped init leaves it untouched.
    assert torch.equal(torch.rand(3), expected_next)
    assert layer.weight.shape == (64, 64)
    assert torch.nn.init.kaiming_uniform_ is original


def test_pretty_print_semaphore():
    assert pretty_print_semaphore(None) == "None"
    assert pretty_print_semaphore(asyncio.Semaphore(2)) == "Semaphore(value=2, locked=False)"
    assert pretty_print_semaphore(asyncio.Semaphore(0)) == "Semaphore(value=0, locked=True)"
    assert pretty_print_semaphore(threading.Semaphore(0)) == "Semaphore(value=0, locked=True)"
