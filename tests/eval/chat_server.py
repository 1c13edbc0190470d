"""A real chat-completions HTTP server on 127.0.0.1, for the tests of the GPT-judged benchmarks.

It answers ``POST /v1/chat/completions`` the way OpenAI's API does (``id``, ``object``, ``created``, ``model``,
``choices[{index, message{role, content}, finish_reason}]``, ``usage``), with a content the test computes from
the request; it records every request it got, and can answer some of them with HTTP 500 instead.

    with ChatServer(reply=lambda body, seen: "8 9\\nfine") as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test"}
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: reply(request body, how many identical requests came before this one) -> the assistant's content
Reply = Callable[[dict, int], str]
#: fail(index of this request, counting from 0) -> answer it with HTTP 500
Fail = Callable[[int], bool]


class ChatServer:
    def __init__(self, reply: Reply, fail: Fail | None = None) -> None:
        self.reply = reply
        self.fail = fail or (lambda index: False)
        self.requests: list[dict[str, Any]] = []  # {"path", "headers" (lower-case names), "body", "status"}, in order
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def answered(self) -> list[dict]:
        """The bodies of the requests answered with 200, in order."""
        with self._lock:
            return [r["body"] for r in self.requests if r["status"] == 200]

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    index = len(server.requests)
                    record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                              "body": body, "status": 0}
                    server.requests.append(record)
                    key = json.dumps(body.get("messages"), sort_keys=True)
                    failing = self.path == "/v1/chat/completions" and server.fail(index)
                    seen = server._seen.get(key, 0)
                    if not failing:
                        server._seen[key] = seen + 1
                if self.path != "/v1/chat/completions":
                    record["status"] = 404
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                    return
                if failing:  # retry quickly: the client honours retry-after-ms
                    record["status"] = 500
                    self._send(500, {"error": {"message": "the test server failed on purpose", "type": "server_error"}},
                               {"retry-after-ms": "20"})
                    return
                content = server.reply(body, seen)
                record["status"] = 200
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                completion_tokens = len(content.split())
                self._send(200, {
                    "id": f"chatcmpl-test{index}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "unknown"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                })

        return Handler
