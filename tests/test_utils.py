"""Tests for llava.utils: a logger that touches nothing else, scoped init skipping, semaphore formatting."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import sys
import threading

import pytest
import torch

from llava import constants
from llava import utils
from llava.utils import build_logger, disable_torch_init, pretty_print_semaphore, violates_moderation


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


# --- messages and violates_moderation ----------------------------------------------------------------------------


def test_upstream_messages():
    assert utils.server_error_msg == "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
    assert utils.moderation_msg == "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."


@pytest.fixture
def moderation_server():
    """A real HTTP server on 127.0.0.1 mimicking /v1/moderations: flags inputs containing "bad"."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - name fixed by BaseHTTPRequestHandler
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if self.headers.get("Authorization") != "Bearer sk-test":
                status, payload = 401, {"error": "bad key"}
            elif body.get("input") == "broken":
                status, payload = 200, {"unexpected": True}
            else:
                status, payload = 200, {"results": [{"flagged": "bad" in body["input"]}]}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_violates_moderation_against_local_server(moderation_server, monkeypatch):
    base, seen = moderation_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", base + "/")
    assert violates_moderation("a bad\nthing") is True
    assert violates_moderation("a nice picture") is False
    assert seen[0] == {"path": "/v1/moderations", "auth": "Bearer sk-test", "body": {"input": "a badthing"}}
    assert seen[1]["body"] == {"input": "a nice picture"}


def test_violates_moderation_errors_give_false(moderation_server, monkeypatch, caplog):
    base, seen = moderation_server
    monkeypatch.setenv("OPENAI_BASE_URL", base)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with caplog.at_level(logging.WARNING, logger="llava.utils"):
        assert violates_moderation("bad") is False  # HTTP 401
    assert "HTTPStatusError" in caplog.text
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert violates_moderation("broken") is False  # 200 without "results"
    assert len(seen) == 2
    # nothing listens on port 9 of 127.0.0.1 (discard): a connection error
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert violates_moderation("bad", timeout=2) is False


def test_violates_moderation_without_key(monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with caplog.at_level(logging.INFO, logger="llava.utils"):
        assert violates_moderation("bad") is False
    records = [r for r in caplog.records if r.name == "llava.utils"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "OPENAI_API_KEY" in records[0].getMessage()
