"""Teacher-token -> student-token alignment for distribution matching.

A teacher returns, for each generated token, its string and its top-k candidates (string -> logprob). The student
has another tokenizer. For every student token of the target text we want either the teacher's distribution
(expressed in student token ids) or nothing (the loss then uses a one-hot on the student token, i.e. the NLL).

How (linear in the text length, except where the two texts disagree):

1. Both sides are turned into **byte strings**: each teacher token's bytes (plain text, ``bytes:\\xNN`` escapes,
   or raw byte-level ``Ġ``/SentencePiece ``▁`` pieces, detected per sample), and each student token's surface
   bytes (from its vocabulary entry: byte-level BPE bytes, SentencePiece ``▁`` -> space and ``<0xNN>`` byte
   fallback; unknown tokens take the original text under their offsets). Multi-byte characters split over
   several tokens are therefore exact.
2. The two byte strings are merged with **character (byte) offsets**: while the bytes agree the spans advance in
   lockstep (equal runs are found with memcmp-speed slice comparisons). Where they disagree (a SentencePiece
   leading space, NFKC normalisation, a teacher's dropped partial UTF-8 bytes, a stripped target), the nearest
   resynchronisation point is found (the first 4-byte anchor minimising skipped bytes on both sides), and an
   **edit-distance DP runs on that disagreeing stretch only**, to recover the equal characters inside it.
   The result is a monotone list of equal segments ``(teacher_offset, student_offset, length)``.
3. **The paper's rule**: a student token gets the teacher's distribution only where it aligns one-to-one with a
   teacher token of the identical string (both spans lie inside one equal segment and coincide). The teacher's
   candidates are kept if they are single student tokens (exact surface match in the student vocabulary);
   duplicates are merged; if no candidate survives, the position stays one-hot.
4. **Direct-id fast path**: when teacher and student share a vocabulary, the teacher's own tokens are the student
   ids; every position whose candidates map gets a distribution, with no merge (``same_vocab``).

``Aligner.align`` returns an ``AlignedTarget``: the student ids of the target text, the positions that carry a
teacher distribution, their ids ``int32 [m, k]`` and logprobs ``float16 [m, k]`` (``-inf`` in empty slots), and
the aligned fraction (aligned student tokens / student tokens). ``AlignStats`` sums fractions over samples.

Why one long module: the alignment is one algorithm (byte views of both tokenizations, the monotone match, the
probability transfer and their fast paths) whose parts share private helpers and invariants; split, a reader
would have to hold three files to follow one sample. It does no I/O and has its own tests (tests/test_align.py, tests/test_align_gemma.py).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate, chain
from operator import itemgetter, methodcaller
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import DataError

__all__ = ["Aligner", "AlignedTarget", "AlignStats", "StudentVocab", "teacher_token_bytes", "equal_segments",
           "match_spans", "match_spans_many", "attach_topk"]

_ANCHOR = 4  # bytes of agreement that end a disagreeing stretch
_MAX_WINDOW = 1 << 14  # give up resynchronising after this many bytes (the rest stays one-hot)
_MAX_DP_CELLS = 1 << 14  # edit-distance DP on a disagreeing stretch up to this many cells


# --------------------------------------------------------------------------------------------- byte surfaces

def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte <-> printable-unicode table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")


def _byte_level(piece: str) -> bytes | None:
    try:
        return bytes(_BYTE_DECODER[c] for c in piece)
    except KeyError:
        return None


def _sentencepiece(piece: str) -> bytes:
    m = _BYTE_FALLBACK.match(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def teacher_token_bytes(token: str, encoding: str = "text") -> bytes:
    """Bytes of one teacher token string.

    ``encoding``: ``text`` (decoded text, the OpenAI/llama.cpp convention; ``bytes:\\xe2\\x80`` strings are
    partial UTF-8), ``byte_level`` (raw GPT-2 style pieces with ``Ġ``), ``sentencepiece`` (raw pieces with ``▁``).
    """
    if token.startswith("bytes:"):
        raw = token[6:].encode("latin-1", "backslashreplace")
        return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    if encoding == "byte_level":
        b = _byte_level(token)
        return b if b is not None else token.encode("utf-8")
    if encoding == "sentencepiece":
        return _sentencepiece(token)
    return token.encode("utf-8")


def detect_teacher_encoding(tokens: Sequence[str]) -> str:
    """``byte_level`` / ``sentencepiece`` when the tokens are raw vocabulary pieces, else ``text``."""
    joined = "".join(tokens[:512])
    if any(c in joined for c in " \n\t\r"):
        return "text"  # raw vocabulary pieces never contain whitespace
    if "\u2581" in joined:
        return "sentencepiece"
    # byte-level pieces spell whitespace/control bytes as U+0100..U+0143 (Ġ, Ċ, ĉ...) and use no other
    # characters outside the byte table
    if any("\u0100" <= c <= "\u0143" for c in joined) and all(c in _BYTE_DECODER for c in joined):
        return "byte_level"
    return "text"


class StudentVocab:
    """Surface bytes of every student token id, and the reverse map (surface -> id) for candidate lookup."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.kind = self._detect(tokenizer)
        vocab = tokenizer.get_vocab()
        size = max(max(vocab.values()) + 1, len(tokenizer))
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        special |= {int(i) for i, t in added.items() if getattr(t, "special", True)}
        self.unk_id = getattr(tokenizer, "unk_token_id", None)
        self.surfaces: list[bytes | None] = [None] * size
        self.lookup: dict[bytes, int] = {}
        dup_surfaces: set[bytes] = set()
        for piece, i in vocab.items():
            if i in special:
                continue
            if self.kind == "byte_level":
                b = _byte_level(piece)
            elif self.kind == "sentencepiece":
                b = _sentencepiece(piece)
            else:
                b = tokenizer.convert_tokens_to_string([piece]).encode("utf-8")
            if not b:
                continue
            self.surfaces[i] = b
            prev = self.lookup.get(b)
            if prev is None or i < prev:
                self.lookup[b] = i
            if prev is not None:
                dup_surfaces.add(b)
        # ids whose surface other ids share too (the lookup keeps the lowest id of such a surface)
        self.dup_ids = {self.lookup[b] for b in dup_surfaces}
        self._surf_ff = [b"\xff" if b is None else b for b in self.surfaces]  # surfaces_of's table
        self._canon: np.ndarray | None = None
        self._is_dup: np.ndarray | None = None
        self.fingerprint = f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}:{size}"

    @staticmethod
    def _detect(tokenizer: Any) -> str:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            j = json.loads(backend.to_str())
            dec = json.dumps(j.get("decoder"))
            if '"ByteLevel"' in dec:
                return "byte_level"
            if "Metaspace" in dec or "\u2581" in dec or "\\u2581" in dec or "ByteFallback" in dec:
                return "sentencepiece"
            return "generic"
        if hasattr(tokenizer, "sp_model"):
            return "sentencepiece"
        if hasattr(tokenizer, "byte_encoder"):
            return "byte_level"
        return "generic"

    def encode(self, text: str) -> tuple[list[int], list[bytes]]:
        """Student ids of ``text`` (no special tokens) and each token's surface bytes."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offs = enc["offset_mapping"]
        surf = []
        for i, (a, b) in zip(ids, offs):
            s = self.surfaces[i] if i < len(self.surfaces) else None
            if s is None or i == self.unk_id:
                s = text[a:b].encode("utf-8") if b > a else b"\xff"  # \xff never occurs in UTF-8 text
            surf.append(s)
        return ids, surf

    def canon_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``canon[i]``: ``lookup.get(surfaces_of([i])[0], -1)`` (the lowest id spelling id ``i``'s surface; the
        last entry stands for ids outside the table), and ``is_dup[i]``: ``i in dup_ids``. Built once."""
        if self._canon is None:
            get = self.lookup.get
            ff = get(b"\xff", -1)
            canon = np.fromiter((ff if b is None else get(b, -1) for b in self.surfaces), dtype=np.int64,
                                count=len(self.surfaces))
            self._canon = np.append(canon, ff)
            is_dup = np.zeros(len(self.surfaces) + 1, dtype=bool)
            is_dup[list(self.dup_ids)] = True
            self._is_dup = is_dup
        return self._canon, self._is_dup  # type: ignore[return-value]

    def surfaces_of(self, ids: Sequence[int]) -> list[bytes]:
        # special/unknown ids: a byte that never occurs in UTF-8 text, so they never match
        surf = self._surf_ff
        try:
            return list(map(surf.__getitem__, ids))
        except (IndexError, TypeError):
            return [surf[i] if 0 <= i < len(surf) else b"\xff" for i in ids]


# --------------------------------------------------------------------------------------------- merge

def _common_prefix(t: bytes, i: int, s: bytes, j: int) -> int:
    """Length of the equal run starting at ``t[i]`` / ``s[j]`` (galloping memcmp on slices)."""
    lim = min(len(t) - i, len(s) - j)
    if lim <= 0 or t[i] != s[j]:
        return 0
    lo, step = 1, 64
    while lo + step <= lim and t[i + lo:i + lo + step] == s[j + lo:j + lo + step]:
        lo += step
        step *= 2
    hi = min(lo + step, lim)
    # invariant: t[i:i+lo] == s[j:j+lo]; find the largest n in [lo, hi] with equality
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if t[i + lo:i + mid] == s[j + lo:j + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _resync(t: bytes, i: int, s: bytes, j: int) -> tuple[int, int]:
    """Bytes to skip on each side to the nearest anchor of ``_ANCHOR`` equal bytes (min total skip)."""
    rt, rs = len(t) - i, len(s) - j
    w = 32
    while True:
        tw, sw = t[i:i + w], s[j:j + w]
        r = _ANCHOR
        first: dict[bytes, int] = {}
        for q in range(len(sw) - r + 1):
            first.setdefault(sw[q:q + r], q)
        best, cost = None, None
        for p in range(len(tw) - r + 1):
            if cost is not None and p >= cost:
                break
            q = first.get(tw[p:p + r])
            if q is not None and (cost is None or p + q < cost):
                best, cost = (p, q), p + q
        if best is not None:
            return best
        if w >= max(rt, rs) or w >= _MAX_WINDOW:
            return rt, rs  # no anchor: the rest disagrees
        w *= 2


def _dp_segments(t: bytes, i: int, p: int, s: bytes, j: int, q: int) -> list[tuple[int, int, int]]:
    """Edit-distance DP (insert/delete 1, substitute 2, i.e. longest common subsequence) on ``t[i:i+p]`` vs
    ``s[j:j+q]``; the equal runs of its optimal path, as segments."""
    if p == 0 or q == 0 or p * q > _MAX_DP_CELLS:
        return []
    a, b = t[i:i + p], s[j:j + q]
    prev = list(range(q + 1))
    rows = [prev]
    for x in range(1, p + 1):
        cur = [x] + [0] * q
        ax = a[x - 1]
        for y in range(1, q + 1):
            sub = prev[y - 1] + (0 if ax == b[y - 1] else 2)  # indel distance: maximises equal bytes
            dl = prev[y] + 1
            ins = cur[y - 1] + 1
            cur[y] = sub if sub <= dl and sub <= ins else (dl if dl <= ins else ins)
        rows.append(cur)
        prev = cur
    matches = []
    x, y = p, q
    while x > 0 and y > 0:
        c = rows[x][y]
        if a[x - 1] == b[y - 1] and c == rows[x - 1][y - 1]:
            matches.append((x - 1, y - 1))
            x, y = x - 1, y - 1
        elif c == rows[x - 1][y - 1] + 2 and a[x - 1] != b[y - 1]:
            x, y = x - 1, y - 1
        elif c == rows[x - 1][y] + 1:
            x -= 1
        else:
            y -= 1
    matches.reverse()
    segs: list[list[int]] = []
    for x, y in matches:
        if segs and segs[-1][0] + segs[-1][2] == i + x and segs[-1][1] + segs[-1][2] == j + y:
            segs[-1][2] += 1
        else:
            segs.append([i + x, j + y, 1])
    return [tuple(sg) for sg in segs]


def equal_segments(t: bytes, s: bytes) -> list[tuple[int, int, int]]:
    """Monotone equal runs ``(t_offset, s_offset, length)`` between two byte strings (see the module doc)."""
    if t == s:
        return [(0, 0, len(t))] if t else []
    segs: list[tuple[int, int, int]] = []
    i = j = 0
    nt, ns = len(t), len(s)
    while i < nt and j < ns:
        n = _common_prefix(t, i, s, j)
        if n:
            segs.append((i, j, n))
            i += n
            j += n
            continue
        p, q = _resync(t, i, s, j)
        segs.extend(_dp_segments(t, i, p, s, j, q))
        i += p
        j += q
    return _slide_gaps(t, s, segs)


def _slide_gaps(t: bytes, s: bytes, segs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Move one-sided gaps left as far as the bytes allow: an extra ``"😀 "`` after ``" "`` becomes an extra
    ``" 😀"`` before ``" a"``, so that the space stays with the word after it (as BPE/SentencePiece tokens do)."""
    out: list[list[int]] = [list(g) for g in segs]
    for k in range(1, len(out)):
        prev, nxt = out[k - 1], out[k]
        if prev[2] == 0:
            continue
        if prev[0] + prev[2] == nxt[0] and nxt[1] > prev[1] + prev[2]:
            side = s  # extra bytes on the student side only
        elif prev[1] + prev[2] == nxt[1] and nxt[0] > prev[0] + prev[2]:
            side = t
        else:
            continue
        end = nxt[1] if side is s else nxt[0]
        start = prev[1] + prev[2] if side is s else prev[0] + prev[2]
        while prev[2] > 0 and side[end - 1] == side[start - 1]:
            prev[2] -= 1
            nxt[0] -= 1
            nxt[1] -= 1
            nxt[2] += 1
            end -= 1
            start -= 1
    return [tuple(g) for g in out if g[2] > 0]


def match_spans(t_pieces: Sequence[bytes], s_pieces: Sequence[bytes],
                segments: list[tuple[int, int, int]] | None = None) -> list[tuple[int, int]]:
    """One-to-one identical matches ``(teacher_index, student_index)`` between two tokenisations."""
    t_start = list(accumulate(map(len, t_pieces), initial=0))
    s_start = list(accumulate(map(len, s_pieces), initial=0))
    if segments is None:
        t_all, s_all = b"".join(t_pieces), b"".join(s_pieces)
        if t_all == s_all:
            # the common case, one equal segment: a pair wherever a (start, end) span occurs on both sides
            s_span = dict(zip(zip(s_start, s_start[1:]), range(len(s_pieces))))
            get = s_span.get
            return [(ii, jj) for ii, jj in enumerate(map(get, zip(t_start, t_start[1:])))
                    if jj is not None and t_start[ii + 1] > t_start[ii]]
        segments = equal_segments(t_all, s_all)
    # student token by start offset (empty pieces never match)
    by_start = {st: jj for jj, st in enumerate(s_start[:-1]) if s_start[jj + 1] > st}
    out = []
    k = 0
    ns = len(segments)
    for ii in range(len(t_pieces)):
        a, b = t_start[ii], t_start[ii + 1]
        if b == a:
            continue
        while k < ns and segments[k][0] + segments[k][2] <= a:
            k += 1
        if k == ns:
            break
        t0, s0, ln = segments[k]
        if t0 <= a and b <= t0 + ln:
            jj = by_start.get(a - t0 + s0)
            if jj is not None and s_start[jj + 1] - s_start[jj] == b - a:
                out.append((ii, jj))
    return out


def match_spans_many(t_lists: Sequence[Sequence[bytes]], s_lists: Sequence[Sequence[bytes]]) -> list[np.ndarray]:
    """``match_spans`` for many samples at once: ``int32 [m, 2]`` arrays of (teacher, student) index pairs.

    Samples whose two byte strings are equal (the common case) are matched together with a handful of numpy
    operations over the whole batch (span keys on both sides, one sorted intersection); the others go through
    the per-sample merge with its DP fallback.
    """
    n = len(t_lists)
    out: list[np.ndarray | None] = [None] * n
    t_len: list[int] = []
    s_len: list[int] = []
    t_cnt: list[int] = []
    s_cnt: list[int] = []
    base: list[int] = []
    blens: list[int] = []
    fast: list[int] = []
    total = 0
    join = b"".join
    for k in range(n):
        tp, sp = t_lists[k], s_lists[k]
        tj = join(tp)
        if tj != join(sp):
            out[k] = np.asarray(match_spans(tp, sp), dtype=np.int32).reshape(-1, 2)
            continue
        fast.append(k)
        t_len.extend(map(len, tp))
        s_len.extend(map(len, sp))
        t_cnt.append(len(tp))
        s_cnt.append(len(sp))
        base.append(total)
        blens.append(len(tj))
        total += len(tj) + 1  # one byte of space between samples keeps their spans apart
    if fast:
        def keys(lens, cnts, parity):
            lens = np.asarray(lens, dtype=np.int64)
            cnts = np.asarray(cnts, dtype=np.int64)
            sample = np.repeat(np.arange(len(cnts)), cnts)
            first = np.concatenate([[0], np.cumsum(cnts)[:-1]])
            excl = np.cumsum(lens) - lens  # running byte offset over the whole batch
            # restart it at each sample: minus the bytes of the samples before, plus the sample's base
            starts = excl - prev_bytes[sample] + base_arr[sample]
            local = np.arange(len(lens)) - first[sample]
            key = (starts << 32) | (starts + lens)
            key[lens == 0] = -1 - parity - 2 * np.arange(int((lens == 0).sum()))  # empty pieces never match
            return key, sample, local

        blen = np.asarray(blens, dtype=np.int64)
        prev_bytes = np.cumsum(blen) - blen
        base_arr = np.asarray(base, dtype=np.int64)
        tk, t_sample, t_local = keys(t_len, t_cnt, 0)
        sk, _s_sample, s_local = keys(s_len, s_cnt, 1)
        # the keys of non-empty pieces increase strictly along each side (spans are disjoint and in order,
        # samples are apart): a binary search of the teacher's keys in the student's, in teacher order
        s_ne = np.flatnonzero(sk >= 0)
        sk_ne = sk[s_ne]
        at = np.searchsorted(sk_ne, tk)
        at_c = np.minimum(at, max(len(sk_ne) - 1, 0))
        hit = (tk >= 0) & (at < len(sk_ne))
        if len(sk_ne):
            hit &= sk_ne[at_c] == tk
        ti = np.flatnonzero(hit)
        si = s_ne[at_c[ti]]
        pairs = np.stack([t_local[ti], s_local[si]], axis=1).astype(np.int32)
        cuts = np.searchsorted(t_sample[ti], np.arange(len(fast) + 1)).tolist()
        for k, a, b in zip(fast, cuts, cuts[1:]):
            out[k] = pairs[a:b]
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- results

@dataclass
class AlignedTarget:
    """Student-side targets of one teacher sample."""

    student_ids: np.ndarray  # int32 [n]: the student tokenisation of the target text
    positions: np.ndarray  # int32 [m]: indices into student_ids that carry a teacher distribution
    ids: np.ndarray  # int32 [m, k]: student ids of the teacher's candidates
    logprobs: np.ndarray  # float16 [m, k]: their teacher logprobs, -inf in empty slots
    n_teacher: int = 0  # teacher tokens
    n_one_to_one: int = 0  # one-to-one identical spans (before dropping positions without usable candidates)
    direct: bool = False  # direct-id fast path taken

    @property
    def n_student(self) -> int:
        return int(len(self.student_ids))

    @property
    def n_aligned(self) -> int:
        return int(len(self.positions))

    @property
    def aligned_fraction(self) -> float:
        return self.n_aligned / self.n_student if self.n_student else 0.0

    def rows(self, offset: int = 0):
        """``(positions + offset, ids, logprobs)``, the row format of ``losses.collate_topk``."""
        return self.positions.astype(np.int64) + offset, self.ids, self.logprobs


@dataclass
class AlignStats:
    samples: int = 0
    student_tokens: int = 0
    aligned: int = 0
    teacher_tokens: int = 0
    direct: int = 0
    per_sample: list[float] = field(default_factory=list)

    def add(self, t: AlignedTarget) -> None:
        self.samples += 1
        self.student_tokens += t.n_student
        self.aligned += t.n_aligned
        self.teacher_tokens += t.n_teacher
        self.direct += int(t.direct)
        self.per_sample.append(t.aligned_fraction)

    @property
    def fraction(self) -> float:
        return self.aligned / self.student_tokens if self.student_tokens else 0.0

    def summary(self) -> dict[str, Any]:
        return {"samples": self.samples, "student_tokens": self.student_tokens, "aligned_tokens": self.aligned,
                "aligned_fraction": round(self.fraction, 4), "direct_id_samples": self.direct,
                "min_sample_fraction": round(min(self.per_sample), 4) if self.per_sample else None}


# --------------------------------------------------------------------------------------------- aligner

_NEG_INF = np.float16(-np.inf)
_second = itemgetter(1)
_values = methodcaller("values")


class Aligner:
    """Align teacher top-k to one student tokenizer. Build once, call ``align`` per sample.

    ``same_vocab``: ``True``: the teacher uses the student's vocabulary: its tokens are the student ids (the
    direct-id fast path, no re-tokenisation; with ``student_ids`` given they must agree). ``"auto"`` (default):
    take the fast path whenever every teacher token is a student token and the sequence is the student's own
    tokenisation of the text (no merge needed). ``False``: always merge.
    ``top_k``: keep at most this many candidates per position (default: all that map).
    ``teacher_encoding``: ``auto`` | ``text`` | ``byte_level`` | ``sentencepiece`` (how teacher token strings
    are spelled; ``auto`` detects raw vocabulary pieces, else text).
    """

    def __init__(self, tokenizer: Any, *, same_vocab: bool | str = "auto", top_k: int | None = None,
                 teacher_encoding: str = "auto"):
        if teacher_encoding not in ("auto", "text", "byte_level", "sentencepiece"):
            raise DataError(f"teacher_encoding: expected auto|text|byte_level|sentencepiece, got {teacher_encoding!r}")
        self.vocab = tokenizer if isinstance(tokenizer, StudentVocab) else StudentVocab(tokenizer)
        self.same_vocab = same_vocab
        self.top_k = top_k
        self.teacher_encoding = teacher_encoding
        self._tb_cache: dict[str, dict[str, bytes]] = {}  # teacher token string -> bytes, per encoding
        self._cid_cache: dict[str, dict[str, int]] = {}  # teacher candidate string -> student id (-1: none)

    # -- candidates -----------------------------------------------------------------------------------
    def _bytes(self, token: str, enc: str) -> bytes:
        cache = self._tb_cache.setdefault(enc, {})
        b = cache.get(token)
        if b is None:
            b = cache[token] = teacher_token_bytes(token, enc)
        return b

    def _candidates(self, top: dict[str, float] | None, enc: str, own: tuple[bytes, int] | None):
        """The teacher's candidates that are single student tokens: ``[(student_id, logprob)]``, best first."""
        if not top:
            return None
        cids = self._cid_cache.get(enc)
        if cids is None:
            cids = self._cid_cache[enc] = {}
        try:
            sids = [cids[c] for c in top]
        except KeyError:
            lookup = self.vocab.lookup
            for c in top:
                if c not in cids:
                    cids[c] = lookup.get(self._bytes(c, enc), -1)
            sids = [cids[c] for c in top]
        dups = self.vocab.dup_ids
        if own is not None and dups and not dups.isdisjoint(sids):
            # a surface shared by several ids: where a candidate spells the student's own token, it is that id
            sids = [own[1] if s in dups and self._bytes(c, enc) == own[0] else s for s, c in zip(sids, top)]
        items = [(s, float(lp)) for s, lp in zip(sids, top.values())
                 if s >= 0 and lp is not None and -math.inf < lp < math.inf]
        if not items:
            return None
        if len(items) > 1:
            if len({s for s, _ in items}) < len(items):  # two spellings of one student token: merge their mass
                got: dict[int, float] = {}
                for s, lp in items:
                    if s in got:
                        hi, lo = (got[s], lp) if got[s] >= lp else (lp, got[s])
                        got[s] = hi + math.log1p(math.exp(lo - hi))
                    else:
                        got[s] = lp
                items = list(got.items())
            items.sort(key=_second, reverse=True)
        if self.top_k:
            items = items[: self.top_k]
        return items

    def _cids(self, enc: str, keys: list) -> list[int]:
        """Student ids of candidate strings (-1: not a single student token), memoized per candidate string."""
        cids = self._cid_cache.get(enc)
        if cids is None:
            cids = self._cid_cache[enc] = {}
        try:
            return list(map(cids.__getitem__, keys))
        except KeyError:
            lookup = self.vocab.lookup
            for c in keys:
                if c not in cids:
                    cids[c] = lookup.get(self._bytes(c, enc), -1)
            return list(map(cids.__getitem__, keys))

    def _targets_many(self, jobs: list) -> list[AlignedTarget]:
        """``_candidates`` + ``_pack`` for many samples at once, vectorized over all their candidates.

        Over 80 lines: one vectorized pass (gather every candidate, map, mask, pack) whose arrays are shared by
        every step; split, the steps would pass a dozen parallel arrays to each other.

        ``jobs``: ``(enc, top_logprobs, t_idx, s_idx, student_ids, own_surfaces, own_canon, n_teacher, n_pairs,
        direct)`` per sample: the pairs ``(t_idx[r], s_idx[r])`` whose teacher candidates become the targets of
        student position ``s_idx[r]``; ``own_surfaces[s]`` is the surface of student token ``s``; ``own_canon``
        (or ``None``: from the vocabulary) is ``lookup.get(own_surfaces[s_idx[r]], -1)`` per pair.
        Same targets as ``_candidates`` row by row: a candidate string maps to a student id through a dict
        memoized per string; filtering, the duplicate-surface rule, the best-first stable sort, ``top_k`` and
        the packing run as numpy operations on the whole batch; the rare rows where two candidates spell one
        student token (their mass is merged) go through ``_candidates`` itself.
        """
        canon, is_dup = self.vocab.canon_arrays()
        nsurf = len(canon) - 1
        sid_l: list = []
        lp_l: list = []
        len_l: list = []
        own_l: list = []
        pos_l: list = []
        row0 = [0]
        overrides = []
        for enc, tops, ti, sj, sids, _surf, own_canon, *_ in jobs:
            d = list(map(tops.__getitem__, ti))
            try:
                keys = list(chain.from_iterable(d))
            except TypeError:  # a position without a top-k (None)
                d = [x or {} for x in d]
                keys = list(chain.from_iterable(d))
            sid_l += self._cids(enc, keys)
            lp_l.extend(chain.from_iterable(map(_values, d)))
            len_l.extend(map(len, d))
            own_l.extend(map(sids.__getitem__, sj))
            pos_l.extend(sj)
            if own_canon is not None:
                overrides.append((row0[-1], own_canon))
            row0.append(row0[-1] + len(ti))
        nrows = row0[-1]
        lens = np.fromiter(len_l, dtype=np.int64, count=nrows)
        sid = np.fromiter(sid_l, dtype=np.int64, count=len(sid_l))
        lp = np.array(lp_l, dtype=np.float64).reshape(-1)  # None -> nan, filtered below
        row = np.repeat(np.arange(nrows, dtype=np.int64), lens)
        own = np.fromiter(own_l, dtype=np.int64, count=nrows)
        oc = canon[np.where((own >= 0) & (own < nsurf), own, nsurf)]
        for r0, lst in overrides:
            oc[r0:r0 + len(lst)] = lst
        # a surface shared by several ids: where a candidate spells the student's own token, it is that id
        ok = sid >= 0
        rep = ok & is_dup[np.where(ok & (sid < nsurf), sid, nsurf)] & (sid == oc[row])
        sid = np.where(rep, own[row], sid)
        # one row per pair, its candidates in the teacher's order, padded to the widest row
        width = int(lens.max()) if nrows else 0
        if nrows and (lens == width).all():
            S, L = sid.reshape(nrows, width), lp.reshape(nrows, width)
        else:
            col = np.arange(len(sid)) - np.repeat(np.cumsum(lens) - lens, lens)
            S = np.full((nrows, width), -1, dtype=np.int64)
            L = np.full((nrows, width), np.nan)
            S[row, col], L[row, col] = sid, lp
        valid = (S >= 0) & np.isfinite(L)
        cnt = valid.sum(axis=1)
        # best first, ties in the teacher's order (list.sort(reverse=True) is stable), unusable ones last
        o = np.argsort(np.where(valid, -L, np.inf), axis=1, kind="stable")
        S, L = np.take_along_axis(S, o, axis=1), np.take_along_axis(L, o, axis=1)
        # rows where two candidates are one student token: merged one by one (exact arithmetic of _candidates)
        dup_rows: list[int] = []
        if width > 1:
            inval = -1 - np.arange(width)  # distinct, so that unusable slots never look alike
            Sd = np.sort(np.where(np.arange(width) < cnt[:, None], S, inval), axis=1)
            dup_rows = np.flatnonzero((Sd[:, 1:] == Sd[:, :-1]).any(axis=1)).tolist()
        if self.top_k:
            cnt = np.minimum(cnt, self.top_k)
        fb = {}
        if dup_rows:
            jrow = np.searchsorted(np.asarray(row0), dup_rows, side="right") - 1
            for r, j in zip(dup_rows, jrow.tolist()):
                enc, tops, ti, sj, sids, surf = jobs[j][:6]
                x = r - row0[j]
                fb[r] = self._candidates(tops[ti[x]], enc, (surf[sj[x]], sids[sj[x]]))
                cnt[r] = len(fb[r])
        kmax = max(1, int(cnt.max()) if nrows else 1)
        if width < kmax:  # no candidates at all (width 0): one empty slot, as _pack
            S = np.pad(S, ((0, 0), (0, kmax - width)))
            L = np.pad(L, ((0, 0), (0, kmax - width)))
        S, L = S[:, :kmax], L[:, :kmax]
        slot = np.arange(kmax) < cnt[:, None]
        ids = np.where(slot, S, 0).astype(np.int32)
        lps = np.where(slot, L, -np.inf).astype(np.float16)
        for r, items in fb.items():
            ids[r] = 0
            lps[r] = -np.inf
            ids[r, :len(items)] = [a for a, _ in items]
            lps[r, :len(items)] = np.array([b for _, b in items], dtype=np.float16)
        kept = np.flatnonzero(cnt > 0)
        pos = np.fromiter(pos_l, dtype=np.int32, count=nrows)[kept]
        ids, lps = ids[kept], lps[kept]
        cuts = np.searchsorted(kept, row0).tolist()
        # K per sample: its longest row (1 without rows), as _pack
        r0 = np.asarray(row0)
        has = np.flatnonzero(np.diff(r0) > 0)
        kj = np.ones(len(jobs), dtype=np.int64)
        if len(has):
            kj[has] = np.maximum(np.maximum.reduceat(cnt, r0[has]), 1)
        out = []
        for j, (job, k) in enumerate(zip(jobs, kj.tolist())):
            a, b = cuts[j], cuts[j + 1]
            ij, lj = ids[a:b, :k], lps[a:b, :k]
            if k < kmax:
                ij, lj = np.ascontiguousarray(ij), np.ascontiguousarray(lj)
            out.append(AlignedTarget(np.asarray(job[4], dtype=np.int32), pos[a:b], ij, lj, job[7], job[8], job[9]))
        return out

    def _pack(self, student_ids, rows, n_teacher, n_pairs, direct) -> AlignedTarget:
        k = max((len(r[1]) for r in rows), default=1)
        m = len(rows)
        pos = np.fromiter((r[0] for r in rows), dtype=np.int32, count=m)
        flat_ids = [0] * (m * k)
        flat_lp = [-math.inf] * (m * k)
        for r, (_, items) in enumerate(rows):
            base = r * k
            for c, (sid, lp) in enumerate(items):
                flat_ids[base + c] = sid
                flat_lp[base + c] = lp
        ids = np.array(flat_ids, dtype=np.int32).reshape(m, k)
        lps = np.array(flat_lp, dtype=np.float16).reshape(m, k)
        return AlignedTarget(np.asarray(student_ids, dtype=np.int32), pos, ids, lps, n_teacher, n_pairs, direct)

    # -- main entry -----------------------------------------------------------------------------------
    def align(self, text: str, tokens: Sequence[str] | None, top_logprobs: Sequence[dict[str, float]] | None,
              student_ids: Sequence[int] | None = None) -> AlignedTarget:
        """Align one teacher sample to the student tokenisation of ``text`` (the training target).

        ``student_ids``: the trainer's own tokenisation of ``text`` (default: tokenise ``text`` here, without
        special tokens). Without teacher tokens/top-k, every position is one-hot (an empty target set).
        """
        if not tokens or not top_logprobs:
            ids = list(student_ids) if student_ids is not None else self.vocab.encode(text)[0]
            return self._pack(ids, [], 0, 0, False)
        if len(top_logprobs) != len(tokens):
            raise DataError(f"teacher sample has {len(tokens)} tokens but {len(top_logprobs)} top-k entries")
        enc = self.teacher_encoding if self.teacher_encoding != "auto" else detect_teacher_encoding(tokens)
        tb = self._tb_cache.setdefault(enc, {})
        t_pieces = list(map(tb.get, tokens))
        if None in t_pieces:
            t_pieces = [self._bytes(t, enc) for t in tokens]
        lookup = self.vocab.lookup

        s_ids = s_pieces = None
        if self.same_vocab:
            direct_ids = [lookup.get(b) for b in t_pieces]
            if all(d is not None for d in direct_ids):
                if student_ids is None and self.same_vocab == "auto":
                    s_ids, s_pieces = self.vocab.encode(text)
                want = list(student_ids) if student_ids is not None else s_ids
                if (want == direct_ids if want is not None
                        else b"".join(t_pieces) == text.encode("utf-8")):
                    idx = list(range(len(tokens)))
                    return self._targets_many([(enc, top_logprobs, idx, idx, direct_ids, t_pieces, direct_ids,
                                                len(tokens), len(tokens), True)])[0]

        if s_ids is None:
            if student_ids is None:
                s_ids, s_pieces = self.vocab.encode(text)
            else:
                s_ids = list(student_ids)
                s_pieces = self.vocab.surfaces_of(s_ids)
        pairs = match_spans(t_pieces, s_pieces)
        unk = self.vocab.unk_id
        # an unknown student token has no distribution to learn
        use = [(ii, jj) for ii, jj in pairs if s_ids[jj] != unk]
        ti = [ii for ii, _ in use]
        sj = [jj for _, jj in use]
        get = lookup.get
        own_canon = [get(s_pieces[jj], -1) for jj in sj]
        return self._targets_many([(enc, top_logprobs, ti, sj, s_ids, s_pieces, own_canon, len(tokens), len(pairs),
                                    False)])[0]

    def align_many(self, texts: Sequence[str], tokens: Sequence[Sequence[str] | None],
                   top_logprobs: Sequence[Sequence[dict[str, float]] | None],
                   student_ids: Sequence[Sequence[int]] | None = None) -> list[AlignedTarget]:
        """``align`` for many samples: the span matching of all samples runs as one batch (``match_spans_many``).

        Gives the same targets as calling ``align`` on each sample (the direct-id path aside, which yields the
        same pairs whenever the two tokenisations coincide).
        """
        n = len(texts)
        if student_ids is None:
            enc_all = self.vocab.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
            student_ids = enc_all
        if self.same_vocab is True:
            return [self.align(texts[k], tokens[k], top_logprobs[k], student_ids[k]) for k in range(n)]
        encs, t_lists, s_lists, todo = [], [], [], []
        out: list[AlignedTarget | None] = [None] * n
        for k in range(n):
            toks, tops = tokens[k], top_logprobs[k]
            if not toks or not tops or len(toks) != len(tops) or self.vocab.unk_id in student_ids[k]:
                out[k] = self.align(texts[k], toks, tops, student_ids[k])  # errors, unknown tokens: one by one
                continue
            enc = self.teacher_encoding if self.teacher_encoding != "auto" else detect_teacher_encoding(toks)
            tb = self._tb_cache.setdefault(enc, {})
            tp = list(map(tb.get, toks))
            if None in tp:
                tp = [self._bytes(t, enc) for t in toks]
            encs.append(enc)
            t_lists.append(tp)
            s_lists.append(self.vocab.surfaces_of(student_ids[k]))
            todo.append(k)
        jobs = []
        for k, enc, sp, pairs in zip(todo, encs, s_lists, match_spans_many(t_lists, s_lists)):
            # own surfaces come from surfaces_of(student ids): their canonical ids come from the vocabulary
            jobs.append((enc, top_logprobs[k], pairs[:, 0].tolist(), pairs[:, 1].tolist(), student_ids[k], sp, None,
                         len(tokens[k]), len(pairs), False))
        for k, t in zip(todo, self._targets_many(jobs)):
            out[k] = t
        return out  # type: ignore[return-value]

    def align_sample(self, sample: Any, text: str | None = None,
                     student_ids: Sequence[int] | None = None) -> AlignedTarget:
        """Align a ``records.Sample`` (its ``tokens``/``top_logprobs``) to ``text`` (default: ``sample.text``)."""
        return self.align(sample.text if text is None else text, sample.tokens, sample.top_logprobs, student_ids)


# --------------------------------------------------------------------------------------------- trainer glue

def attach_topk(encoded: list, examples: list, tokenizer: Any, kind: str, *,
                formats: Sequence[str] = ("in_context_cot", "zero_shot_cot"), top_k: int | None = None,
                aligner: "Aligner | None" = None) -> dict[str, Any]:
    """Align each training example's teacher top-k to its encoded target and set ``encoded[i].topk``.

    ``encoded[i]`` is a ``trainer.Encoded`` (``labels``: IGNORE over the prompt, then the target ids, maybe an
    EOS; seq2seq: the decoder targets). ``topk`` becomes ``(positions in labels, ids [m, k] int32, logprobs
    [m, k] float16)``, the row format of ``losses.collate_topk``; rows without a teacher distribution keep
    ``None`` (their loss is the NLL). Only chain-of-thought formats get distributions (an answer-only target is
    not what the teacher's distributions were computed for). Returns the alignment summary (aligned fraction).
    """
    al = aligner or Aligner(tokenizer, top_k=top_k)
    stats = AlignStats()
    eligible = with_topk = 0
    eos = getattr(tokenizer, "eos_token_id", None)
    for enc, ex in zip(encoded, examples):
        if ex.format not in formats:
            continue
        eligible += 1
        if not ex.teacher_tokens or not ex.teacher_top_logprobs:
            continue
        with_topk += 1
        labels = enc.labels
        start = next((k for k, v in enumerate(labels) if v != -100), len(labels))
        tgt = list(labels[start:])
        if tgt and eos is not None and tgt[-1] == eos:
            tgt = tgt[:-1]
        t = al.align(ex.target, ex.teacher_tokens, ex.teacher_top_logprobs, student_ids=tgt)
        stats.add(t)
        if t.n_aligned:
            enc.topk = t.rows(offset=start)
    if eligible and not with_topk:
        raise DataError(f"--loss needs the teacher's top-k logprobs, but none of the {eligible} chain-of-thought "
                        "training samples has them: teach with --top-logprobs K (a teacher that reports logprobs)")
    out = stats.summary()
    out.update({"cot_examples": eligible, "with_teacher_topk": with_topk})
    return out
