"""A minimal OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

It answers ``POST /v1/chat/completions`` from a queue of scripted replies (tool calls or
text) and records every request body, so tests exercise the real ``openai`` client over HTTP.
A request with ``"stream": true`` gets the same reply as server-sent events: the text in
pieces, tool-call arguments in two deltas, usage in a last chunk, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedOpenAIServer:
    """Serve scripted chat completions; use as a context manager."""

    def __init__(self, *, reject_tools: bool = False) -> None:
        self.replies: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.reject_tools = reject_tools
        self.streamed = 0
        """Requests answered as server-sent events."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(body)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                elif server.reject_tools and body.get("tools"):
                    self._send(400, {"error": {"message": "tools are not supported"}})
                elif not server.replies:
                    self._send(500, {"error": {"message": "script exhausted"}})
                elif body.get("stream"):
                    server.streamed += 1
                    self._send_events(server.replies.popleft())
                else:
                    self._send(200, server.replies.popleft())

            def _send_events(self, reply: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                for chunk in _chunks(reply):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ScriptedOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def reply_tool_call(self, name: str, arguments: dict[str, Any] | str) -> None:
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        call = {
            "id": f"call_{len(self.replies)}",
            "type": "function",
            "function": {"name": name, "arguments": text},
        }
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        self.replies.append(_completion(message, finish="tool_calls"))

    def reply_text(self, text: str) -> None:
        self.replies.append(_completion({"role": "assistant", "content": text}, finish="stop"))


def _completion(message: dict[str, Any], *, finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
    }


def _chunks(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """A completion as ``chat.completion.chunk`` objects."""
    message = reply["choices"][0]["message"]
    base = {"id": reply["id"], "object": "chat.completion.chunk", "created": 0,
            "model": reply["model"]}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    text = message.get("content") or ""
    for start in range(0, len(text), 16):
        out.append(chunk({"content": text[start : start + 16]}))
    for i, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        first = {"name": call["function"]["name"], "arguments": arguments[:half]}
        delta = {"index": i, "id": call["id"], "type": "function", "function": first}
        out.append(chunk({"tool_calls": [delta]}))
        out.append(
            chunk({"tool_calls": [{"index": i, "function": {"arguments": arguments[half:]}}]})
        )
    out.append(chunk({}, reply["choices"][0]["finish_reason"]))
    out.append({**base, "choices": [], "usage": reply["usage"]})
    return out
