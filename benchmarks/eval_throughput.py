"""lorasp's batched eval generation vs one-question-at-a-time ``model.generate`` on the same GSM8K test questions.

The baseline: the real SmolLM2-135M-Instruct in fp32; lorasp: the same model at ``--precision`` (default auto: bf16
on a CPU with native bf16 units or a GPU, else fp32, the same weights as the baseline). The same prompts (zero-shot CoT, chat template), greedy
decoding, the same ``max_new_tokens``, stopping at EOS. Tokens/s counts the tokens each side actually generated
(up to and including EOS). Reports the median over ``--repeats`` runs, the ratio, and whether the extracted answers
(and the full texts) agree with the fp32 baseline's (where lorasp runs in bf16, that is its agreement with fp32).

    python benchmarks/eval_throughput.py [--n 64] [--max-new-tokens 128] [--batch-size 16] [--repeats 3]

The last line is ``RESULT name=eval_throughput ratio=<lorasp/baseline tokens/s> key=value ...``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _gsm8k_setup import add_common_args, gsm8k_setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, n=64, max_new_tokens=128, batch_size=16, mode="zs_cot")
    args = ap.parse_args()
    setup = gsm8k_setup(args)

    import torch

    from lora_spec.answers import extract_answer
    from lora_spec.generation import generate

    model, tok, prompts, stops = setup.model, setup.tokenizer, setup.prompts, setup.stops
    from lora_spec.precision import resolve_precision
    from lora_spec.student import load_student
    from train_precision import environment_line

    precision = resolve_precision(args.precision)
    print(f"environment: {environment_line()}\nlorasp precision: {precision.line()}", flush=True)
    lorasp_model = model if precision.name == "fp32" else load_student(args.model, dtype=precision.dtype).model
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
        outs = generate(lorasp_model, tok, prompts, max_new_tokens=args.max_new_tokens, stop=stops,
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
          f"answers_agree={agree}/{len(a)} identical_texts={same_text}/{len(a)} model={args.model} mode={args.mode} "
          f"precision={precision.name} {environment_line()}")


if __name__ == "__main__":
    main()
