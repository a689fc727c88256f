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
import statistics

from _gsm8k_setup import add_common_args, gsm8k_setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, n=32, max_new_tokens=192, batch_size=32, mode="icl_cot")
    args = ap.parse_args()
    setup = gsm8k_setup(args)

    import torch

    from lora_spec import generation

    model, tok, prompts, stops = setup.model, setup.tokenizer, setup.prompts, setup.stops
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
