"""lorasp's decode with in-place KV buffers vs transformers' concatenating ``DynamicCache``, on 8-shot GSM8K prompts.

Both sides run lorasp's own generator (continuous batching, prefix sharing) on the same prompts, in one process,
alternating: the real SmolLM2-135M-Instruct (fp32, CPU), GSM8K test questions in ``icl_cot`` (the paper's 8
exemplars, chat template), greedy, the same token budget and rows in flight. The only difference is the KV cache:

* lorasp (``generation.BUFFER_KV = True``): after each prefill the keys and values move into buffers with room for
  the token budget, so a decode step writes one position in place;
* baseline (``BUFFER_KV = False``): transformers' ``DynamicLayer.update``, which concatenates, copying every
  layer's whole cache at every step (the previous release).

With ~1,000-token few-shot prompts, that copy dominates a decode step on a CPU. Reports tokens/s (median of
``--repeats``), the ratio and whether the texts are identical.

    python benchmarks/kv_buffers.py [--n 32] [--max-new-tokens 192] [--batch-size 32] [--repeats 3]

The last line is ``RESULT name=kv_buffers ratio=<lorasp/baseline tokens/s> key=value ...``.
"""

from __future__ import annotations

import argparse
import os
import statistics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="GSM8K test questions (seeded sample, seed 0)")
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="icl_cot")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from lora_spec import generation
    from lora_spec.evaluate import task_problems
    from lora_spec.prompts import build_prompt, stop_sequences, uses_chat
    from lora_spec.records import EvalTask
    from lora_spec.student import load_student

    st = load_student(args.model)
    model, tok = st.model, st.tokenizer
    problems = task_problems(EvalTask(name="gsm8k", dataset="gsm8k", split="test", limit=args.n))
    prompts = [build_prompt(p, args.mode, tok) for p in problems]
    stops = stop_sequences(args.mode, uses_chat(tok))
    lengths = [len(x) for x in tok(prompts)["input_ids"]]

    def run(buffered: bool) -> tuple[list[str], dict]:
        generation.BUFFER_KV = buffered
        stats: dict = {}
        outs = generation.generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, stop=stops,
                                   batch_size=args.batch_size, progress=False, stats=stats)
        return outs, stats

    rates: dict[str, list[float]] = {"lorasp": [], "baseline": []}
    outs: dict[str, list[str]] = {}
    shared = 0
    for r in range(args.repeats):
        for name, buffered in (("lorasp", True), ("baseline", False)):
            o, s = run(buffered)
            rates[name].append(s["generated_tokens"] / s["seconds"])
            outs[name] = o
            shared = s.get("shared_prefix", 0)
            print(f"run {r + 1} {name:8s}: {s['generated_tokens']} tokens in {s['seconds']:.1f}s = "
                  f"{rates[name][-1]:.1f} tok/s", flush=True)
    generation.BUFFER_KV = True
    med = {k: statistics.median(v) for k, v in rates.items()}
    same = sum(a == b for a, b in zip(outs["lorasp"], outs["baseline"]))
    print(f"prompts: {len(prompts)}, {min(lengths)}-{max(lengths)} tokens ({shared} shared); torch threads "
          f"{torch.get_num_threads()}")
    print(f"RESULT name=kv_buffers ratio={med['lorasp'] / med['baseline']:.2f} lorasp_tok_s={med['lorasp']:.1f} "
          f"baseline_tok_s={med['baseline']:.1f} n={len(prompts)} mode={args.mode} "
          f"max_new_tokens={args.max_new_tokens} batch_size={args.batch_size} repeats={args.repeats} "
          f"identical_texts={same}/{len(prompts)} prompt_tokens={min(lengths)}-{max(lengths)} model={args.model}")


if __name__ == "__main__":
    main()
