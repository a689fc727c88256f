"""lorasp's batched eval generation vs one-question-at-a-time ``model.generate`` on the same GSM8K test questions.

Both sides: the real SmolLM2-135M-Instruct (fp32 on CPU), the same prompts (zero-shot CoT, chat template), greedy
decoding, the same ``max_new_tokens``, stopping at EOS. Tokens/s counts the tokens each side actually generated
(up to and including EOS). Reports the median over ``--repeats`` runs, the ratio, and whether the extracted answers
(and the full texts) agree.

    python benchmarks/eval_throughput.py [--n 64] [--max-new-tokens 128] [--batch-size 16] [--repeats 3]

The last line is ``RESULT name=eval_throughput ratio=<lorasp/baseline tokens/s> key=value ...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="GSM8K test questions (seeded sample, seed 0)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="zs_cot")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for both sides")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from lora_spec.answers import extract_answer
    from lora_spec.evaluate import task_problems
    from lora_spec.generation import generate
    from lora_spec.prompts import build_prompt, stop_sequences, uses_chat
    from lora_spec.records import EvalTask
    from lora_spec.student import load_student

    st = load_student(args.model)
    model, tok = st.model, st.tokenizer
    problems = task_problems(EvalTask(name="gsm8k", dataset="gsm8k", split="test", limit=args.n))
    chat = uses_chat(tok)
    prompts = [build_prompt(p, args.mode, tok) for p in problems]
    stops = stop_sequences(args.mode, chat)
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)

    def baseline() -> tuple[list[str], int, float]:
        t0 = time.perf_counter()
        outs, ntok = [], 0
        tok.padding_side = "left"
        for pr in prompts:
            enc = tok(pr, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=eos)
            new = out[0, enc["input_ids"].shape[1]:]
            ntok += int(new.shape[0])
            text = tok.decode(new, skip_special_tokens=True)
            for s in stops:
                i = text.find(s)
                text = text[:i] if i >= 0 else text
            outs.append(text.strip())
        return outs, ntok, time.perf_counter() - t0

    def lorasp() -> tuple[list[str], int, float]:
        stats: dict = {}
        outs = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, stop=stops,
                        batch_size=args.batch_size, progress=False, stats=stats)
        return outs, stats["generated_tokens"], stats["seconds"]

    rates = {"lorasp": [], "baseline": []}
    outs = {}
    for r in range(args.repeats):
        for name, fn in (("lorasp", lorasp), ("baseline", baseline)):
            o, n, s = fn()
            rates[name].append(n / s)
            outs[name] = o
            print(f"run {r + 1} {name:8s}: {n} tokens in {s:.1f}s = {n / s:.1f} tok/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    a = [extract_answer(o) for o in outs["lorasp"]]
    b = [extract_answer(o) for o in outs["baseline"]]
    agree = sum(x == y for x, y in zip(a, b))
    same_text = sum(x == y for x, y in zip(outs["lorasp"], outs["baseline"]))
    for i, (x, y) in enumerate(zip(outs["lorasp"], outs["baseline"])):
        if x != y:
            print(f"differs #{i}: lorasp={x[-120:]!r} baseline={y[-120:]!r}")
    print(f"lorasp {med['lorasp']:.1f} tok/s, baseline {med['baseline']:.1f} tok/s (median of {args.repeats}); "
          f"answers agree {agree}/{len(a)}, identical texts {same_text}/{len(a)}; torch threads "
          f"{torch.get_num_threads()}")
    print(f"RESULT name=eval_throughput ratio={med['lorasp'] / med['baseline']:.2f} "
          f"lorasp_tok_s={med['lorasp']:.1f} baseline_tok_s={med['baseline']:.1f} n={len(prompts)} "
          f"max_new_tokens={args.max_new_tokens} batch_size={args.batch_size} repeats={args.repeats} "
          f"answers_agree={agree}/{len(a)} identical_texts={same_text}/{len(a)} model={args.model} mode={args.mode}")


if __name__ == "__main__":
    main()
