"""``openai`` teacher: any OpenAI-compatible server (OpenAI, vLLM, llama.cpp server, Ollama, TGI) over httpx.

* ``/v1/completions`` (``api="completions"``, plain-text prompts) or ``/v1/chat/completions`` (``api="chat"``).
* Bounded concurrency (a thread pool of ``concurrency`` workers sharing one connection pool).
* Retries with exponential backoff and jitter on 429, 5xx, timeouts and connection errors; ``Retry-After`` is
  honoured. A malformed response (bad JSON, no choices) is a failed request, recorded, never a crash.
  401/403/404 stop the run with a one-line error: every further request would fail the same way.
* ``n`` > 1: asked natively first; a server that returns fewer choices (llama.cpp returns one) is noticed and
  the missing samples are asked one by one, in parallel, each with its own derived seed.
* ``top_logprobs`` k: the sampled tokens' strings and the top-k log-probabilities per generated token.

The API key is read from the environment variable named by ``api_key_env`` at request time; it is never stored
in the fingerprint, the manifest, the store or any log line.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx

from ...errors import ConfigError, ModelError, one_line
from ...records import Sample, TeacherRequest
from ...teacher_forcing import ScoreRequest, ScoreResult, SpanError, text_tokens

RETRY_STATUS = {408, 409, 425, 429}
# how a server is asked for prompt log-probabilities (lorasp score): the OpenAI legacy completions ``echo`` with
# ``logprobs`` (vLLM, llama-cpp-python), or vLLM's ``prompt_logprobs`` extension (token ids and their ranks)
SCORE_APIS = ("echo", "prompt_logprobs")
# where an echoed prompt's top-k sit: "same" (OpenAI's convention, vLLM: entry i is the distribution token i was
# drawn from) or "next" (llama-cpp-python, its issues #1276 and #1983: entry i is the distribution *after* token i)
ECHO_ALIGNMENTS = ("auto", "same", "next")
FATAL_STATUS = {401, 403, 404}


def derive_seed(seed: int, problem_id: str, index: int) -> int:
    h = hashlib.sha256(f"{seed}\x00{problem_id}\x00{index}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


@dataclass
class _Task:
    req: TeacherRequest
    first: int  # first sample index asked by this HTTP request
    n: int


@dataclass
class TaskResult:
    """What one HTTP exchange produced: stored samples, or one failed sample per index asked."""

    samples: list[Sample]
    request_id: str | None = None
    leftover: _Task | None = None  # indices the server did not return (ignored ``n``), to ask again
    attempts: int = 1
    usage: dict[str, int] = field(default_factory=dict)


class _Fatal(Exception):
    pass


# ------------------------------------------------------------------------------------------ the answer deadline

_DEADLINE = threading.local()  # .at: time.monotonic() by which this thread's exchange must be complete


def _left(timeout: float | None, exc: type) -> float | None:
    """The socket timeout for the next read/write/connect: the library's own (per operation), but never past the
    exchange's deadline; past it, ``exc`` (a timeout httpx reports as such)."""
    at = getattr(_DEADLINE, "at", None)
    if at is None:
        return timeout
    rem = at - time.monotonic()
    if rem <= 0:
        raise exc("the answer's deadline (--timeout) passed")
    return rem if timeout is None else min(timeout, rem)


class _DeadlineStream:
    """A network stream whose every read and write ends by the exchange's deadline: httpx's read timeout restarts
    with each byte, so a server that trickles one byte every few seconds would never time out."""

    def __init__(self, stream):
        self._s = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        import httpcore

        return self._s.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        import httpcore

        return self._s.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        import httpcore

        return _DeadlineStream(self._s.start_tls(ssl_context, server_hostname,
                                                 _left(timeout, httpcore.ConnectTimeout)))

    def close(self) -> None:
        self._s.close()

    def get_extra_info(self, info: str):
        return self._s.get_extra_info(info)


class _DeadlineBackend:
    """httpcore's network backend, its streams wrapped in :class:`_DeadlineStream`."""

    def __init__(self, backend):
        self._b = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        import httpcore

        return _DeadlineStream(self._b.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout),
                                                   local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        import httpcore

        return _DeadlineStream(self._b.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout),
                                                           socket_options))

    def sleep(self, seconds: float) -> None:
        self._b.sleep(seconds)


def _with_deadlines(client: httpx.Client) -> httpx.Client:
    """Every connection pool of ``client`` (the direct one and any proxy's) gets deadline-bound streams."""
    for transport in [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]:
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = _DeadlineBackend(pool._network_backend)
    return client


class _Pool:
    """``size`` daemon worker threads running ``fn`` on the items ``put`` to them, so that Ctrl-C in the consuming
    thread returns at once (in-flight requests are abandoned: their results were never stored, so a rerun asks
    again). ``next`` hands back one result, or None after a short wait (which keeps Ctrl-C responsive); an
    exception in a worker stops the run, ``_Fatal`` as one ``ModelError`` line."""

    def __init__(self, fn, size: int, name: str, what: str):
        self.tasks: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.running = 0
        self.what = what
        self.workers = [threading.Thread(target=self._work, args=(fn,), daemon=True, name=f"{name}-{i}")
                        for i in range(size)]
        for w in self.workers:
            w.start()

    def _work(self, fn) -> None:
        while True:
            item = self.tasks.get()
            if item is None:
                return
            try:
                self.results.put((fn(item), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
                self.results.put((None, exc))

    def put(self, item) -> None:
        self.tasks.put(item)
        self.running += 1

    def next(self, stop: threading.Event):
        try:
            res, exc = self.results.get(timeout=0.2)
        except queue.Empty:
            return None
        self.running -= 1
        if exc is not None:
            stop.set()
            if isinstance(exc, _Fatal):
                raise ModelError(f"{self.what} failed: {exc}") from None
            raise exc
        return res

    def close(self) -> None:
        for _ in self.workers:
            self.tasks.put(None)


class OpenAITeacher:
    """OpenAI-compatible HTTP teacher (completions or chat), with retries, bounded concurrency and top-k logprobs."""

    name = "openai"

    def __init__(self, model: str = "", base_url: str = "https://api.openai.com/v1",
                 api_key_env: str = "OPENAI_API_KEY", api: str = "completions", temperature: float = 0.7,
                 top_p: float | None = None, max_tokens: int = 256, stop: list[str] | None = None,
                 top_logprobs: int = 0, seed: int | None = 0, concurrency: int = 8, timeout: float = 600.0,
                 max_retries: int = 6, backoff: float = 0.5, max_backoff: float = 30.0,
                 extra_body: dict[str, Any] | None = None, max_connect_failures: int = 5,
                 score_api: str = "echo", echo_alignment: str = "auto"):
        if not model:
            raise ConfigError("teacher 'openai' needs --model (the model name the server serves)")
        if api not in ("completions", "chat"):
            raise ConfigError(f"--api: expected 'completions' or 'chat', got {api!r}")
        if not str(base_url).startswith(("http://", "https://")):
            raise ConfigError(f"--base-url: expected an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if concurrency < 1:
            raise ConfigError(f"--concurrency: must be >= 1, got {concurrency}")
        if score_api not in SCORE_APIS:
            raise ConfigError(f"--teacher-opt score_api: expected one of {', '.join(SCORE_APIS)}, got {score_api!r}")
        if echo_alignment not in ECHO_ALIGNMENTS:
            raise ConfigError(f"--teacher-opt echo_alignment: expected one of {', '.join(ECHO_ALIGNMENTS)}, got "
                              f"{echo_alignment!r}")
        if top_logprobs < 0 or top_logprobs > 20:
            raise ConfigError(f"--top-logprobs: must be between 0 and 20, got {top_logprobs}")
        self.model = model
        self.base_url = str(base_url).rstrip("/")
        self.api_key_env = api_key_env
        self.api = api
        self.temperature = float(temperature)
        self.top_p = top_p
        self.max_tokens = int(max_tokens)
        self.stop = list(stop or [])
        self.top_logprobs = int(top_logprobs)
        self.seed = seed
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.extra_body = dict(extra_body or {})
        self.score_api = score_api
        self.echo_alignment = echo_alignment  # "auto": decided on the first answer (see _detect_alignment)
        self.echo_alignment_why = "set by --teacher-opt echo_alignment" if echo_alignment != "auto" else ""
        self.native_n: bool | None = None  # learned from the first n>1 answer
        self.requests_sent = 0  # HTTP requests actually sent, retries included
        # circuit breaker: this many connection failures in a row (no answer of any kind in between) stop the run;
        # a server that cannot be reached fails every sample the same way, so retrying each one only costs time
        self.max_connect_failures = max(1, int(max_connect_failures))
        self._connect_failures = 0
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    # -- identity ------------------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """What determines the samples (and so the store key). Not the URL, the key, concurrency or retries."""
        return {"teacher": "openai", "model": self.model, "api": self.api, "temperature": self.temperature,
                "top_p": self.top_p, "max_tokens": self.max_tokens, "stop": self.stop,
                "top_logprobs": self.top_logprobs, "seed": self.seed, "extra_body": self.extra_body}

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:12]
        return f"openai:{self.model}:{h}"

    def describe(self) -> dict[str, Any]:
        d = {**self.params(), "base_url": self.base_url, "api_key_env": self.api_key_env,
             "concurrency": self.concurrency, "timeout": self.timeout, "max_retries": self.max_retries}
        if self.echo_alignment_why:  # a scoring run: how the server's echoed top-k were read
            d.update(score_api=self.score_api, echo_alignment=self.echo_alignment,
                     echo_alignment_why=self.echo_alignment_why)
        return d

    # -- HTTP ----------------------------------------------------------------------------------------------------
    def _http(self) -> httpx.Client:
        if self._client is None:
            headers = {"Content-Type": "application/json"}
            key = os.environ.get(self.api_key_env or "", "")
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._client = _with_deadlines(httpx.Client(
                base_url=self.base_url, headers=headers,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _body(self, task: _Task) -> dict[str, Any]:
        req = task.req
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature,
                                "n": task.n}
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.stop:
            body["stop"] = self.stop
        if self.seed is not None:
            body["seed"] = derive_seed(int(self.seed), req.problem.id, task.first)
        if self.api == "chat":
            body["messages"] = req.prompt if isinstance(req.prompt, list) else [{"role": "user", "content": req.prompt}]
            if self.top_logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = self.top_logprobs
        else:
            if isinstance(req.prompt, list):
                raise ConfigError("teacher 'openai' with api 'completions' needs a text prompt; "
                                  "use --api chat for chat messages")
            body["prompt"] = req.prompt
            if self.top_logprobs:
                body["logprobs"] = self.top_logprobs
        body.update(self.extra_body)
        return body

    def _sleep(self, attempt: int, retry_after: float | None, stop: threading.Event | None) -> bool:
        """Back off before retry ``attempt`` (1-based); False if the run is being stopped."""
        cap = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        delay = cap / 2 + random.uniform(0, cap / 2)  # exponential backoff with (equal) jitter
        if retry_after is not None:
            delay = min(self.max_backoff, retry_after) + random.uniform(0, 0.1)
        if stop is not None:
            return not stop.wait(delay)
        time.sleep(delay)
        return True

    def _redact(self, text: str) -> str:
        """``text`` with the API key's value replaced by ``***``: error text comes from the server (or the proxy in
        between), which may echo the ``Authorization`` header; such text goes to the store, manifest and stderr."""
        key = os.environ.get(self.api_key_env or "", "")
        return text.replace(key, "***") if len(key) >= 6 else text

    def _fail(self, task: _Task, error: str) -> list[Sample]:
        req = task.req
        error = self._redact(error)
        return [Sample(problem_id=req.problem.id, sample_index=task.first + i, prompt_id=req.prompt_id, text="",
                       teacher=self.fingerprint(), error=error) for i in range(task.n)]

    def _exchange(self, task: _Task, stop: threading.Event | None = None) -> TaskResult:
        path = "/chat/completions" if self.api == "chat" else "/completions"
        tag = f"{task.req.problem.id}/{task.first}/{task.n}"
        resp, error, attempts = self._post(path, self._body(task), tag, stop)
        if resp is None:
            return TaskResult(self._fail(task, error), attempts=attempts)
        return self._parse(task, resp, attempts)

    def _post(self, path: str, body: dict[str, Any], tag: str,
              stop: threading.Event | None = None) -> tuple[httpx.Response | None, str, int]:
        """POST ``body`` with retries: ``(response, "", attempts)`` on HTTP 200, else ``(None, why, attempts)``
        (a request that failed for good, or a stopped run). 401/403/404 and a server that cannot be reached
        raise ``_Fatal``: every further request would fail the same way."""
        tag = urllib.parse.quote(tag, safe="/")
        last = "no attempt made"
        attempt = 0
        while True:
            attempt += 1
            if stop is not None and stop.is_set():
                return None, "stopped before an answer arrived", attempt - 1
            retry_after = None
            with self._lock:
                self.requests_sent += 1
            # --timeout is the whole answer's deadline (connect, send, every byte of the reply), not per read
            _DEADLINE.at = time.monotonic() + self.timeout
            try:
                resp = self._http().post(path, json=body, headers={"X-Lorasp-Request": tag})
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = f"connection error: {type(exc).__name__}: {one_line(exc)[:200]}"
                with self._lock:
                    self._connect_failures += 1
                    tripped = self._connect_failures >= self.max_connect_failures
                if tripped:
                    raise _Fatal(f"cannot reach the teacher server at {self.base_url}: {self.max_connect_failures} "
                                 f"connection attempts in a row failed ({last}); is it running? (check --base-url)")
            except httpx.TimeoutException as exc:
                last = f"no complete answer within --timeout {self.timeout:g}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection error: {type(exc).__name__}: {one_line(self._redact(str(exc)))[:200]}"
            else:
                with self._lock:
                    self._connect_failures = 0
                status = resp.status_code
                if status == 200:
                    return resp, "", attempt
                detail = one_line(self._redact(resp.text))[:200]
                last = f"HTTP {status} from {self.base_url}{path}: {detail}"
                if status in FATAL_STATUS:
                    hint = (f" (is ${self.api_key_env} set?)" if status in (401, 403)
                            else " (check --base-url and --model)")
                    raise _Fatal(self._redact(last + hint))
                if status not in RETRY_STATUS and status < 500:
                    return None, last, attempt
                ra = resp.headers.get("retry-after")
                try:
                    retry_after = float(ra) if ra is not None else None
                except ValueError:
                    retry_after = None
            _DEADLINE.at = None
            if attempt > self.max_retries:
                return None, f"gave up after {attempt} attempts: {last}", attempt
            if not self._sleep(attempt, retry_after, stop):
                return None, f"stopped while retrying: {last}", attempt

    def _parse(self, task: _Task, resp: httpx.Response, attempt: int) -> TaskResult:
        req = task.req
        try:
            data = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            return TaskResult(self._fail(task, f"malformed response: invalid JSON ({one_line(exc)[:120]})"),
                              attempts=attempt)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            return TaskResult(self._fail(task, "malformed response: no 'choices' in "
                                           f"{one_line(self._redact(str(data)))[:120]}"),
                              attempts=attempt)
        rid = str(data.get("id") or f"{req.prompt_id}/{req.problem.id}/{task.first}")
        usage = {k: int(v) for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
        samples: list[Sample] = []
        try:
            ordered = sorted(choices, key=lambda c: int(c.get("index", 0))) if all(
                isinstance(c, dict) for c in choices) else choices
            for i, ch in enumerate(ordered[:task.n]):
                text, tokens, top = _choice(ch, self.api)
                samples.append(Sample(problem_id=req.problem.id, sample_index=task.first + i,
                                      prompt_id=req.prompt_id, text=text, tokens=tokens, top_logprobs=top,
                                      finish_reason=ch.get("finish_reason"),
                                      usage=usage if i == 0 else {}, teacher=self.fingerprint()))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return TaskResult(self._fail(task, f"malformed response: {type(exc).__name__}: {one_line(exc)[:120]}"),
                              attempts=attempt)
        leftover = None
        if task.n > 1:
            with self._lock:
                self.native_n = len(samples) >= task.n
        if len(samples) < task.n:
            leftover = _Task(req, task.first + len(samples), task.n - len(samples))
        return TaskResult(samples, request_id=rid, leftover=leftover, attempts=attempt, usage=usage)

    # -- the teacher interface -----------------------------------------------------------------------------------
    def _split(self, req: TeacherRequest) -> list[_Task]:
        if req.n > 1 and self.native_n is False:
            return [_Task(req, req.first_index + i, 1) for i in range(req.n)]
        return [_Task(req, req.first_index, req.n)]

    def stream(self, requests: list[TeacherRequest], stop: threading.Event | None = None) -> Iterator[TaskResult]:
        """Yield one ``TaskResult`` per finished HTTP exchange, as they arrive (not in order).

        At most ``concurrency`` requests are in flight, on daemon worker threads, so that Ctrl-C in the caller
        returns at once: in-flight requests are abandoned (their results were never stored, so a rerun asks
        again). When ``stop`` is set no new request starts. 401/403/404 raise ``ModelError``.
        """
        stop = stop or threading.Event()
        todo: list[_Task] = []
        for r in reversed(requests):
            todo.extend(reversed(self._split(r)))
        # the first n>1 request is sent alone, to learn whether the server honours n before fanning out
        probing = any(t.n > 1 for t in todo) and self.native_n is None
        pool = _Pool(lambda t: self._exchange(t, stop), self.concurrency, "lorasp-teacher", "teacher request")
        try:
            while todo or pool.running:
                limit = 1 if probing else self.concurrency
                while todo and pool.running < limit and not stop.is_set():
                    t = todo.pop()
                    if t.n > 1 and self.native_n is False:
                        todo.extend(reversed([_Task(t.req, t.first + i, 1) for i in range(t.n)]))
                        continue
                    pool.put(t)
                if not pool.running:
                    break
                res = pool.next(stop)
                if res is None:
                    continue
                if self.native_n is not None:
                    probing = False
                elif res.samples and res.samples[0].error:
                    probing = False  # a failed probe tells nothing; do not serialise the run on it
                if res.leftover is not None:
                    todo.extend(reversed(self._split(TeacherRequest(
                        res.leftover.req.problem, res.leftover.req.prompt, res.leftover.req.prompt_id,
                        n=res.leftover.n, first_index=res.leftover.first))))
                yield res
        finally:
            stop.set()
            pool.close()

    # -- scoring text the teacher did not write (lorasp score) ------------------------------------------------------
    def score_fingerprint(self, top_k: int) -> str:
        """Identifies the scores: the served model, how it was asked and k (not the URL, key or concurrency)."""
        p = {"scorer": "openai", "model": self.model, "score_api": self.score_api, "top_k": int(top_k),
             "extra_body": self.extra_body}
        return f"openai:{self.model}:{hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]}"

    def _score_body(self, req: ScoreRequest, top_k: int) -> dict[str, Any]:
        # max_tokens 1: servers that refuse 0 exist; the generated token lies past the text and is dropped
        body: dict[str, Any] = {"model": self.model, "prompt": req.prompt + req.text, "max_tokens": 1,
                                "temperature": 0.0}
        if self.score_api == "echo":
            body.update(echo=True, logprobs=int(top_k))
        else:
            body.update(prompt_logprobs=int(top_k), return_token_ids=True)
        body.update(self.extra_body)
        return body

    def _score_one(self, req: ScoreRequest, top_k: int, stop: threading.Event | None) -> ScoreResult:
        tag = "/".join(map(str, req.key[1:]))  # prompt_id/problem_id/sample_index
        resp, error, _attempts = self._post("/completions", self._score_body(req, top_k), tag, stop)
        if resp is None:
            return ScoreResult(req.key, error=self._redact(error))
        try:
            data = resp.json()
            ch = data["choices"][0]
            usage = {k: int(v) for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
            rid = str(data.get("id") or "")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return ScoreResult(req.key, error=f"malformed response: {type(exc).__name__}: {one_line(exc)[:120]}")
        full = req.prompt + req.text
        try:
            offsets, tops, tokens = (_echo_logprobs(ch, full) if self.score_api == "echo"
                                     else _prompt_logprobs(ch, top_k))
            if self.score_api == "echo":
                tops = self._aligned(tokens, tops, top_k, len(req.prompt), offsets)
        except _NoScores as exc:
            raise _Fatal(f"the server at {self.base_url} returned no prompt log-probabilities ({exc}), so it cannot "
                         f"score text: {_SCORE_HINT[self.score_api]}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return ScoreResult(req.key, error=f"malformed response: {type(exc).__name__}: {one_line(exc)[:120]}")
        try:
            pieces, top = text_tokens(full, len(req.prompt), offsets, tops, tokens)
        except SpanError as exc:
            return ScoreResult(req.key, error=str(exc))
        return ScoreResult(req.key, pieces, top, usage=usage, request_id=rid or None)

    def _aligned(self, tokens: list[str], tops: list[dict | None], top_k: int, start: int,
                 offsets: list[int]) -> list[dict | None]:
        """The echoed top-k, each at the token it predicts, trimmed to the k most likely (llama-cpp-python adds the
        echoed token's own entry to every position)."""
        with self._lock:
            if self.echo_alignment == "auto":
                self.echo_alignment, self.echo_alignment_why = _detect_alignment(tokens, tops, top_k, start, offsets)
            how = self.echo_alignment
        trimmed = [dict(sorted(t.items(), key=lambda kv: -kv[1])[:top_k]) if t else None for t in tops]
        if how == "same":
            return trimmed
        # "next": entry i-1 is the distribution token i was drawn from; token 1's (after token 0) is not reported
        return [None, None] + trimmed[1:-1] if len(trimmed) > 1 else [None] * len(trimmed)

    def score(self, requests: list[ScoreRequest], top_k: int,
              stop: threading.Event | None = None) -> Iterator[ScoreResult]:
        """Teacher-forced top-k for every request, yielded as answers arrive (not in order). The first request is
        sent alone: a server that cannot score is one error (``ModelError``) before anything else is asked."""
        stop = stop or threading.Event()
        todo = list(reversed(requests))
        pool = _Pool(lambda r: self._score_one(r, top_k, stop), self.concurrency, "lorasp-scorer", "scoring request")
        probed = False
        try:
            while todo or pool.running:
                limit = self.concurrency if probed else 1
                while todo and pool.running < limit and not stop.is_set():
                    pool.put(todo.pop())
                if not pool.running:
                    break
                res = pool.next(stop)
                if res is None:
                    continue
                probed = probed or not res.error
                yield res
        finally:
            stop.set()
            pool.close()

    def generate(self, requests: list[TeacherRequest]) -> list[list[Sample]]:
        """The plain plugin interface: every request's samples, in request order (failed ones carry ``error``)."""
        by_key: dict[tuple[str, int], Sample] = {}
        for res in self.stream(requests):
            for s in res.samples:
                by_key[(s.problem_id, s.sample_index)] = s
        return [[by_key[(r.problem.id, r.first_index + i)] for i in range(r.n)] for r in requests]


def _choice(ch: dict, api: str) -> tuple[str, list[str] | None, list[dict[str, float]] | None]:
    """(text, tokens, top_logprobs) of one choice, for both the completions and the chat response shapes."""
    if api == "chat":
        text = ch["message"]["content"]
        if not isinstance(text, str):
            raise ValueError(f"message content is {type(text).__name__}, not text")
        lp = ch.get("logprobs") or {}
        content = lp.get("content") if isinstance(lp, dict) else None
        if content:
            tokens = [str(t["token"]) for t in content]
            top = [{str(a["token"]): float(a["logprob"]) for a in (t.get("top_logprobs") or [])} for t in content]
            return text, tokens, top
        return text, None, None
    text = ch["text"]
    if not isinstance(text, str):
        raise ValueError(f"choice text is {type(text).__name__}, not text")
    lp = ch.get("logprobs")
    if isinstance(lp, dict) and lp.get("tokens") is not None:
        tokens = [str(t) for t in lp["tokens"]]
        tops = lp.get("top_logprobs") or [None] * len(tokens)
        top = [{str(k): float(v) for k, v in (d or {}).items()} for d in tops]
        if len(top) != len(tokens):
            raise ValueError(f"{len(tokens)} tokens but {len(top)} top_logprobs entries")
        return text, tokens, top
    return text, None, None



class _NoScores(ValueError):
    """The answer holds no prompt log-probabilities: the server cannot score (one error for the whole run)."""


_SCORE_HINT = {
    "echo": "it must support /v1/completions with echo=true and logprobs (vLLM does; llama-cpp-python needs "
            "--logits_all true); OpenAI's hosted models do not; or try --teacher-opt score_api=prompt_logprobs "
            "(vLLM)",
    "prompt_logprobs": "score_api=prompt_logprobs is vLLM's extension (with return_token_ids); for another "
                       "server use --teacher-opt score_api=echo",
}


def _echo_logprobs(ch: dict, full: str) -> tuple[list[int], list[dict | None], list[str]]:
    """(offsets, top-k, token strings) of a completions choice asked with ``echo`` and ``logprobs``."""
    lp = ch.get("logprobs")
    if not isinstance(lp, dict) or not lp.get("tokens"):
        raise _NoScores("no 'logprobs' with tokens in the choice")
    tokens = [str(t) for t in lp["tokens"]]
    tops = lp.get("top_logprobs")
    if not isinstance(tops, list) or all(not t for t in tops[1:]):
        raise _NoScores("no 'top_logprobs' for the echoed prompt")
    if len(tops) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(tops)} top_logprobs entries")
    offsets = lp.get("text_offset")
    if not isinstance(offsets, list) or len(offsets) != len(tokens):
        offsets, at = [], 0  # no offsets: the tokens are taken to spell the text
        for t in tokens:
            offsets.append(at)
            at += len(t)
    if not str(ch.get("text", "")).startswith(full):
        raise _NoScores("the prompt was not echoed in the choice's text")
    return [int(o) for o in offsets], [t if isinstance(t, dict) else None for t in tops], tokens


def _detect_alignment(tokens: list[str], tops: list[dict | None], top_k: int, start: int,
                      offsets: list[int]) -> tuple[str, str]:
    """Which echo convention an answer follows: at each position of the text, is the echoed token among the k most
    likely of its own entry ("same") or of the entry before it ("next")? A model that scores the text at all puts
    the right token near the top far more often under the right reading."""
    same = nxt = 0
    for i in range(1, len(tokens)):
        if offsets[i] < start:
            continue
        here, before = tops[i], tops[i - 1]
        if here:
            same += tokens[i] in dict(sorted(here.items(), key=lambda kv: -kv[1])[:top_k])
        if before:
            nxt += tokens[i] in dict(sorted(before.items(), key=lambda kv: -kv[1])[:top_k])
    if nxt > same:
        return "next", (f"detected on the first answer: {nxt} of its text's tokens are in the top-{top_k} of the "
                        f"entry before them, {same} in their own (llama-cpp-python's echo reports each top-k one "
                        f"token late)")
    return "same", f"detected on the first answer: {same} tokens in their own top-{top_k}, {nxt} in the one before"


def _prompt_logprobs(ch: dict, top_k: int) -> tuple[list[int], list[dict | None], list[str]]:
    """(offsets, top-k, token strings) from vLLM's ``prompt_logprobs`` (a dict per prompt token: token id ->
    {logprob, rank, decoded_token}, the prompt's own token always among them) and ``prompt_token_ids``."""
    plp, ids = ch.get("prompt_logprobs"), ch.get("prompt_token_ids")
    if not isinstance(plp, list) or not plp:
        raise _NoScores("no 'prompt_logprobs' in the choice")
    if not isinstance(ids, list) or len(ids) != len(plp):
        raise _NoScores("no 'prompt_token_ids' beside 'prompt_logprobs' (vLLM needs return_token_ids)")
    offsets, tops, tokens, at = [], [], [], 0
    for tid, d in zip(ids, plp):
        entry = (d or {}).get(str(tid)) or (d or {}).get(tid) if d else None
        piece = entry.get("decoded_token") if isinstance(entry, dict) else None
        tokens.append(str(piece or ""))
        offsets.append(at)
        at += len(tokens[-1])
        if not d:
            tops.append(None)
            continue
        top: dict[str, float] = {}
        for e in d.values():
            if int(e.get("rank") or 10**9) <= top_k or e is entry:
                key = str(e.get("decoded_token") or "")
                top[key] = max(top.get(key, -float("inf")), float(e["logprob"]))
        tops.append(top)
    return offsets, tops, tokens
