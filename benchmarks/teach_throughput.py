"""Teach throughput: ``lorasp teach`` (openai teacher) vs the llama.cpp server's own saturated throughput.

One process starts the real llama.cpp server (SmolLM2 GGUF) on loopback and, on the same GSM8K train questions,
with the same prompts, sampling parameters and per-sample seeds (so the server does the same work in every
mode), measures:

* ``c1``: ``lora_spec.teach.teach`` with concurrency 1,
* ``default``: ``teach`` with its default concurrency,
* ``raw``: the baseline, parallel raw HTTP requests (httpx, a thread pool as wide as the default concurrency)
  that only send the bodies and read the answers: the server's saturated throughput.

teach's time is the whole call: dataset loading, prompts, SQLite commits, answer checking, export and manifest.
Each mode runs ``--repeats`` times in a fresh run directory (so nothing is resumed); medians are reported. The
last line is ``RESULT name=teach_throughput ratio=<default/raw> ...`` (higher is better; the goal is >= 0.9).

    python benchmarks/teach_throughput.py [--questions 32] [--max-tokens 32] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if not os.environ.get("LORASP_DATA_DIR") and (ROOT.parent / "shared" / "data").exists():
    os.environ["LORASP_DATA_DIR"] = str(ROOT.parent / "shared" / "data")

from lora_spec import registry  # noqa: E402
from lora_spec.plugins.teachers.openai import OpenAITeacher, derive_seed  # noqa: E402
from lora_spec.teach import TeachConfig, resolve_prompt, teach  # noqa: E402
from tests.llama_server import llama_server  # noqa: E402


def run_teach(base: str, args, concurrency: int, workdir: Path, tag: str) -> tuple[float, int, int]:
    out = workdir / tag
    cfg = TeachConfig(dataset="gsm8k", split="train", limit=args.questions, teacher="openai", model="smollm2",
                      base_url=base, prompt="zero-shot-cot", samples=1, temperature=0.7, seed=0,
                      max_tokens=args.max_tokens, top_logprobs=args.top_logprobs, concurrency=concurrency,
                      out=str(out), progress=False)
    t0 = time.perf_counter()
    teach(cfg)
    wall = time.perf_counter() - t0
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete", m["status"]
    return wall, m["counts"]["received"], m["usage"]["completion_tokens"]


def run_raw(base: str, args, bodies: list[dict], width: int) -> tuple[float, int, int]:
    client = httpx.Client(base_url=base, timeout=600, limits=httpx.Limits(max_connections=width))

    def one(body):
        r = client.post("/completions", json=body)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(width) as pool:
        toks = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    client.close()
    return wall, len(bodies), sum(toks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--top-logprobs", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads (1: robust on a shared machine; 2 threads spin-wait badly under load)")
    args = ap.parse_args()
    default_conc = TeachConfig.model_fields["concurrency"].default
    problems = list(registry.create("datasets", "gsm8k").load("train", limit=args.questions))
    spec = resolve_prompt("zero-shot-cot")
    probe = OpenAITeacher(model="smollm2", base_url="http://x/v1", stop=list(spec.stop),
                          max_tokens=args.max_tokens, temperature=0.7, seed=0, top_logprobs=args.top_logprobs)
    bodies = []
    for p in problems:
        from lora_spec.records import TeacherRequest
        from lora_spec.plugins.teachers.openai import _Task

        bodies.append(probe._body(_Task(TeacherRequest(p, spec.render(p), "x"), 0, 1)))
        assert bodies[-1]["seed"] == derive_seed(0, p.id, 0)
    res: dict[str, list[tuple[float, int, int]]] = {"c1": [], "default": [], "raw": []}
    with llama_server(extra=["--n_threads", str(args.threads)]) as base, tempfile.TemporaryDirectory() as td:
        run_raw(base, args, bodies[:2], 2)  # warm-up: model pages, first prompt
        for r in range(args.repeats):
            res["raw"].append(run_raw(base, args, bodies, default_conc))
            res["default"].append(run_teach(base, args, default_conc, Path(td), f"d{r}"))
            res["c1"].append(run_teach(base, args, 1, Path(td), f"c{r}"))
            line = ", ".join(f"{k} {v[-1][1] / v[-1][0]:.3f} samples/s ({v[-1][2]} tokens)" for k, v in res.items())
            print(f"repeat {r + 1}/{args.repeats}: {line}", flush=True)
    rate = {k: statistics.median(n / w for w, n, _ in v) for k, v in res.items()}
    toks = {k: sorted({t for _, _, t in v}) for k, v in res.items()}
    print(f"completion tokens per mode (same seeds, so equal work): {toks}")
    print(f"median samples/s: lorasp c=1 {rate['c1']:.3f}, lorasp c={default_conc} {rate['default']:.3f}, "
          f"raw parallel (server saturated) {rate['raw']:.3f}")
    print(f"RESULT name=teach_throughput ratio={rate['default'] / rate['raw']:.3f} "
          f"lorasp_default_samples_per_s={rate['default']:.3f} lorasp_c1_samples_per_s={rate['c1']:.3f} "
          f"raw_samples_per_s={rate['raw']:.3f} ratio_c1={rate['c1'] / rate['raw']:.3f} "
          f"concurrency={default_conc} questions={args.questions} max_tokens={args.max_tokens} "
          f"repeats={args.repeats} threads={args.threads}")


if __name__ == "__main__":
    main()
