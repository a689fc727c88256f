"""``arith``: seeded synthetic multi-step arithmetic word problems with exact step-by-step rationales.

Each problem starts from a quantity and applies 2-5 operations (+, -, x, / with integer results), each worded in
one of several ways; the rationale writes one line per step (``12 + 5 = 17``). Splits are generated from
independent seeded streams, and a problem whose computation (start value and operation sequence) already
belongs to an earlier split is skipped, so test, dev and train never share a problem. Everything is
deterministic given ``seed``.
"""

from __future__ import annotations

import hashlib
import random
from typing import Iterator

from ...errors import ConfigError
from ...records import Problem
from .base import BuiltinDataset

_PEOPLE = [("Tom", "he", "his", "him"), ("Mary", "she", "her", "her"), ("Sam", "he", "his", "him"),
           ("Lily", "she", "her", "her"), ("Ben", "he", "his", "him"), ("Emma", "she", "her", "her"),
           ("Omar", "he", "his", "him"), ("Aisha", "she", "her", "her"), ("Lucas", "he", "his", "him"),
           ("Mia", "she", "her", "her"), ("Kenji", "he", "his", "him"), ("Sofia", "she", "her", "her"),
           ("Diego", "he", "his", "him"), ("Chloe", "she", "her", "her"), ("Ravi", "he", "his", "him"),
           ("Nora", "she", "her", "her")]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "books", "cookies", "stamps", "seashells", "cards",
          "coins", "beads", "tickets", "crayons", "balloons", "toy cars", "postcards", "oranges", "buttons"]

# (template, rationale template); {k} operand, {x} before, {y} after, {n} name, {p} pronoun, {q} possessive,
# {o} object pronoun, {i} item
_OPS = {
    "+": [("{P} buys {k} more {i}.", "{n} buys {k} more: {x} + {k} = {y}."),
          ("{P} finds {k} {i} on the way home.", "{n} finds {k}: {x} + {k} = {y}."),
          ("A friend gives {o} {k} {i}.", "A friend gives {k}: {x} + {k} = {y}."),
          ("Then {p} receives another {k} {i} as a gift.", "{n} receives {k} more: {x} + {k} = {y}."),
          ("{n}'s aunt adds {k} {i} to {q} collection.", "The aunt adds {k}: {x} + {k} = {y}.")],
    "-": [("{P} gives away {k} {i}.", "{n} gives away {k}: {x} - {k} = {y}."),
          ("{P} loses {k} of them.", "{n} loses {k}: {x} - {k} = {y}."),
          ("Then {p} sells {k} {i} at the market.", "{n} sells {k}: {x} - {k} = {y}."),
          ("{P} trades away {k} {i} to a classmate.", "{n} trades away {k}: {x} - {k} = {y}."),
          ("A neighbor borrows {k} {i} and never returns them.", "{k} are never returned: {x} - {k} = {y}.")],
    "*": [("The number of {i} {p} has then becomes {k} times as large.", "{k} times as many: {x} * {k} = {y}."),
          ("{P} buys enough {i} to end up with {k} times what {p} had.", "{k} times as many: {x} * {k} = {y}."),
          ("Then {q} {i} are multiplied by {k} in a lucky game.", "Multiplied by {k}: {x} * {k} = {y}."),
          ("{P} gets {k} times as many {i} as {p} currently has, replacing them.",
           "{k} times as many: {x} * {k} = {y}.")],
    "/": [("{P} splits {q} {i} equally into {k} groups and keeps only one group.",
           "One of {k} equal groups: {x} / {k} = {y}."),
          ("{P} shares the {i} equally among {k} people, including {o}self, and keeps {q} share.",
           "Sharing among {k}: {x} / {k} = {y}."),
          ("Then {p} keeps only one {kth} of {q} {i}.", "One {kth}: {x} / {k} = {y}.")],
}
_ORD = {2: "half", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth",
        10: "tenth"}
_START = ["{n} has {x} {i}.", "{n} starts the day with {x} {i}.", "At first, {n} owns {x} {i}.",
          "{n} has a box with {x} {i} in it."]
_ASK = ["How many {i} does {n} have now?", "How many {i} does {n} end up with?",
        "How many {i} are left with {n} at the end?", "What is the number of {i} {n} has in the end?"]


def _step(rng: random.Random, x: int) -> tuple[str, int, int] | None:
    ops = ["+", "-", "*", "/"]
    rng.shuffle(ops)
    for op in ops:
        if op == "+":
            k = rng.randint(1, 40)
            return op, k, x + k
        if op == "-" and x > 1:
            k = rng.randint(1, x - 1)
            return op, k, x - k
        if op == "*" and x <= 250:
            k = rng.randint(2, 5)
            return op, k, x * k
        if op == "/":
            divs = [k for k in range(2, 11) if x % k == 0 and x // k >= 1]
            if divs:
                k = rng.choice(divs)
                return op, k, x // k
    return None


def make_problem(rng: random.Random, n_steps: int) -> tuple[str, str, int, tuple]:
    """``(question, rationale, answer, signature)`` of one problem drawn from ``rng``."""
    name, p, q, o = rng.choice(_PEOPLE)
    item = rng.choice(_ITEMS)
    x = rng.randint(2, 60)
    f = {"n": name, "p": p, "P": p.capitalize(), "q": q, "o": o, "i": item}
    sents = [rng.choice(_START).format(x=x, **f)]
    lines = [f"{name} starts with {x} {item}."]
    sig: list = [x]
    for _ in range(n_steps):
        op, k, y = _step(rng, x)  # type: ignore[misc]
        tmpl, rat = rng.choice(_OPS[op])
        if "{kth}" in tmpl and k not in _ORD:
            tmpl, rat = _OPS["/"][0]
        g = dict(f, k=k, x=x, y=y, kth=_ORD.get(k, ""))
        s = tmpl.format(**g)
        sents.append(s[0].upper() + s[1:])
        lines.append(rat.format(**g))
        sig += [op, k]
        x = y
    sents.append(rng.choice(_ASK).format(**f))
    lines.append(f"So {name} has {x} {item}.")
    return " ".join(sents), "\n".join(lines), x, tuple(sig)


class Arith(BuiltinDataset):
    """Synthetic seeded multi-step (2-5) arithmetic word problems with exact rationales (embedded default)."""

    name = "arith"
    _splits = ("train", "dev", "test")

    def __init__(self, seed: int = 0, n_train: int = 2000, n_dev: int = 200, n_test: int = 500,
                 min_steps: int = 2, max_steps: int = 5, data_dir=None):
        super().__init__(data_dir)
        self.seed, self.min_steps, self.max_steps = int(seed), int(min_steps), int(max_steps)
        self.sizes = {"train": int(n_train), "dev": int(n_dev), "test": int(n_test)}
        if not 1 <= self.min_steps <= self.max_steps <= 8:
            raise ConfigError(f"arith: need 1 <= min_steps <= max_steps <= 8, got {min_steps}..{max_steps}")
        if any(v < 0 for v in self.sizes.values()):
            raise ConfigError(f"arith: split sizes must be >= 0, got {self.sizes}")
        self._cache: dict[str, list[Problem]] = {}

    def params(self) -> dict:
        """The generator parameters (enough to rebuild every split)."""
        return {"seed": self.seed, "n_train": self.sizes["train"], "n_dev": self.sizes["dev"],
                "n_test": self.sizes["test"], "min_steps": self.min_steps, "max_steps": self.max_steps}

    def _generate(self, split: str, taken: set) -> list[Problem]:
        out: list[Problem] = []
        seen = set(taken)
        i = 0
        while len(out) < self.sizes[split]:
            h = hashlib.sha256(f"arith:{self.seed}:{split}:{i}".encode()).digest()
            rng = random.Random(int.from_bytes(h[:8], "big"))
            i += 1
            steps = rng.randint(self.min_steps, self.max_steps)
            qtext, rationale, ans, sig = make_problem(rng, steps)
            if sig in seen:
                continue
            seen.add(sig)
            out.append(Problem(id=f"arith/{split}/{len(out)}", question=qtext, answer=str(ans),
                               rationale=rationale,
                               meta={"dataset": "arith", "split": split, "steps": steps, "signature": list(sig),
                                     "seed": self.seed, "answer_type": "number", "params": self.params()}))
            if i > 50 * self.sizes[split] + 1000:
                raise ConfigError(f"arith: cannot draw {self.sizes[split]} distinct {split} problems with "
                                  f"{self.min_steps}-{self.max_steps} steps")
        return out

    def problems(self, split: str) -> list[Problem]:
        self._check_split(split)
        if split not in self._cache:
            taken: set = set()
            for s in ("test", "dev", "train"):  # fixed order: later splits avoid earlier ones
                if s not in self._cache:
                    self._cache[s] = self._generate(s, taken)
                taken |= {tuple(p.meta["signature"]) for p in self._cache[s]}
                if s == split:
                    break
        return self._cache[split]

    def _iter(self, split: str) -> Iterator[Problem]:
        for p in self.problems(split):
            yield Problem(p.id, p.question, p.answer, p.rationale, dict(p.meta))
