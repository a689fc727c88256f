"""A small fault-injecting HTTP proxy for the teacher tests, started on loopback in front of the real server.

Every request is logged (``proxy.log``: arrival order, path, ``X-Lorasp-Request`` tag, the injected fault, the
status sent and whether the response was delivered), so a test can count exactly what the server received.
Faults are planned per arrival number (1-based), or by a function ``(n, tag, body) -> fault | None``: an HTTP
status such as ``429``, ``500``, ``503``, ``401`` (sent with ``Retry-After: 0``), ``timeout``
(hold the connection longer than the client waits, never forward), ``truncate`` (status 200 with half of a
completion's JSON, at once), ``truncate-upstream`` (forward, then send half of the real answer) and
``garbage`` (200 with a non-JSON body), and for scoring requests ``no-logprobs`` (forward, then drop the
choices' ``logprobs``: a server that cannot score) and ``short-echo`` (forward, then keep only the first half of
the echoed tokens: fewer tokens than the text). ``echo_auth=True`` makes status faults echo the request's
``Authorization`` header in their error body, as a careless server might (for the secrets tests).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import httpx


_CANNED = json.dumps({"id": "cmpl-canned", "object": "text_completion", "model": "smollm2",
                      "choices": [{"text": " 2 + 3 = 5. The answer is 5.", "index": 0, "logprobs": None,
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}}).encode()


def _edit_logprobs(content: bytes, fault: str) -> bytes:
    data = json.loads(content)
    for ch in data.get("choices") or []:
        lp = ch.get("logprobs")
        if fault == "no-logprobs":
            ch["logprobs"] = None
        elif isinstance(lp, dict):
            half = len(lp.get("tokens") or []) // 2
            for key in ("tokens", "text_offset", "token_logprobs", "top_logprobs"):
                if isinstance(lp.get(key), list):
                    lp[key] = lp[key][:half]
    return json.dumps(data).encode()


@dataclass
class Entry:
    n: int
    path: str
    tag: str
    fault: str | None
    status: int | None = None
    delivered: bool = False
    forwarded: bool = False
    auth: str = ""
    body: dict = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream: str, faults: dict[int, str] | Callable[[int, str, dict], str | None] | None = None,
                 hang: float = 5.0, fanout: bool = False, echo_auth: bool = False):
        self.echo_auth = echo_auth
        self.fanout = fanout  # answer n>1 requests with n choices (as OpenAI/vLLM do), by fanning out upstream
        self.upstream = upstream.rstrip("/")
        self.faults = faults or {}
        self.hang = hang
        self.log: list[Entry] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=600)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_GET(self):
                r = proxy._client.get(proxy.upstream + self.path.removeprefix("/v1"))
                self._send(r.status_code, r.content)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                tag = self.headers.get("X-Lorasp-Request", "")
                with proxy._lock:
                    n = len(proxy.log) + 1
                    fault = proxy.faults(n, tag, body) if callable(proxy.faults) else proxy.faults.get(n)
                    entry = Entry(n, self.path, tag, fault, auth=self.headers.get("Authorization", ""), body=body)
                    proxy.log.append(entry)
                try:
                    if fault == "timeout":
                        time.sleep(proxy.hang)
                        self.close_connection = True
                        return
                    if fault and fault.isdigit():  # any HTTP status: 429, 500, 503, 401, ...
                        entry.status = int(fault)
                        msg = "injected fault" + (f" for Authorization: {entry.auth}" if proxy.echo_auth else "")
                        self._send(int(fault), json.dumps({"error": {"message": msg}}).encode(), {"Retry-After": "0"})
                        entry.delivered = True
                        return
                    if fault == "truncate":  # a completion answer cut off mid-JSON, without asking upstream
                        entry.status = 200
                        self._send(200, _CANNED[: len(_CANNED) // 2])
                        entry.delivered = True
                        return
                    if fault == "garbage":
                        entry.status = 200
                        self._send(200, b"<html>Bad gateway</html>")
                        entry.delivered = True
                        return
                    if proxy.fanout and int(body.get("n") or 1) > 1:
                        r, content = proxy._fan_out(self.path, body)
                        entry.forwarded = True
                        entry.status = r.status_code
                        self._send(r.status_code, content)
                        entry.delivered = True
                        return
                    r = proxy._client.post(proxy.upstream + self.path.removeprefix("/v1"), content=raw,
                                           headers={"Content-Type": "application/json"})
                    entry.forwarded = True
                    content = r.content[: len(r.content) // 2] if fault == "truncate-upstream" else r.content
                    if fault in ("no-logprobs", "short-echo") and r.status_code == 200:
                        content = _edit_logprobs(content, fault)
                    entry.status = r.status_code
                    self._send(r.status_code, content)
                    entry.delivered = True
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _fan_out(self, path: str, body: dict) -> tuple[httpx.Response, bytes]:
        """Emulate a server that honours ``n``: n upstream requests (n=1, seeds seed+i), merged into one answer."""
        n = int(body["n"])
        choices, usage, r = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, None
        for i in range(n):
            one = dict(body, n=1)
            if "seed" in body:
                one["seed"] = int(body["seed"]) + i
            r = self._client.post(self.upstream + path.removeprefix("/v1"), json=one)
            if r.status_code != 200:
                return r, r.content
            data = r.json()
            ch = data["choices"][0]
            ch["index"] = i
            choices.append(ch)
            for k in usage:
                usage[k] += int(data.get("usage", {}).get(k, 0))
        data["choices"], data["usage"] = choices, usage
        return r, json.dumps(data).encode()

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._client.close()

    def tags(self, *, delivered_only: bool = False) -> list[str]:
        with self._lock:
            return [e.tag for e in self.log if e.delivered or not delivered_only]


@contextlib.contextmanager
def fault_proxy(upstream: str, faults=None, hang: float = 5.0, fanout: bool = False,
                echo_auth: bool = False) -> Iterator[FaultProxy]:
    p = FaultProxy(upstream, faults, hang, fanout, echo_auth).start()
    try:
        yield p
    finally:
        p.stop()
