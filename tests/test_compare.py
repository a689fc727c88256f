"""lorasp compare: paired statistics between two eval results; one-line errors when the problems differ."""

from __future__ import annotations

import json

import pytest

from lora_spec import stats
from lora_spec.compare import compare, render
from lora_spec.errors import DataError


def _write(d, tasks: dict[str, list[tuple[str, bool]]], suites: dict[str, list[str]] | None = None, mode="zs_cot"):
    """A minimal results dir in lorasp eval's layout: results.json + predictions/<task>.jsonl."""
    (d / "predictions").mkdir(parents=True)
    doc = {"tasks": {}, "suites": {}}
    for t, rows in tasks.items():
        pf = f"predictions/{t.replace('/', '__')}.jsonl"
        (d / pf).write_text("".join(json.dumps({"id": i, "correct": c, "output": "x"}) + "\n" for i, c in rows))
        k = sum(c for _, c in rows)
        doc["tasks"][t] = {"n": len(rows), "correct": k, "accuracy": k / len(rows), "mode": mode,
                           "predictions_file": pf}
    for s, ts in (suites or {"math": list(tasks)}).items():
        doc["suites"][s] = {"tasks": ts}
    (d / "results.json").write_text(json.dumps(doc))
    return d


def _rows(prefix, bits):
    return [(f"{prefix}-{i}", bool(b)) for i, b in enumerate(bits)]


def test_compare_pairs_by_id_and_matches_stats(tmp_path, capsys):
    a_bits = [0] * 80 + [1] * 20
    b_bits = [1] * 30 + [0] * 50 + [1] * 15 + [0] * 5  # 30 newly right, 5 newly wrong
    a = _write(tmp_path / "a", {"gsm8k": _rows("g", a_bits), "svamp": _rows("s", [1, 0] * 25)})
    # B lists the same problems in another order: pairing is by id, not by line
    rows_b = _rows("g", b_bits)[::-1]
    b = _write(tmp_path / "b", {"gsm8k": rows_b, "svamp": _rows("s", [1, 0] * 25)})
    res = compare(str(a), str(b / "results.json"))
    ref = stats.paired([bool(x) for x in a_bits], [bool(x) for x in b_bits])
    g = res["tasks"]["gsm8k"]
    assert g["n"] == 100 and g["delta"] == pytest.approx(25.0) and g["p"] == pytest.approx(ref["p"])
    assert g["delta_ci"] == pytest.approx(ref["delta_ci"]) and g["within_noise"] is False
    sv = res["tasks"]["svamp"]
    assert sv["delta"] == 0 and sv["p"] == 1.0 and sv["within_noise"] is True
    m = res["suites"]["math"]
    assert m["delta"] == pytest.approx(12.5) and m["better"] == 1 and m["worse"] == 0
    assert m["p"] == pytest.approx(stats.mcnemar([bool(x) for x in a_bits] + [True, False] * 25,
                                                 [bool(x) for x in b_bits] + [True, False] * 25))
    md = render(res)
    assert "| gsm8k | 100 | 20.0% [13.3, 28.9] (20/100) | 45.0% [35.6, 54.8] (45/100) | +25.0 [" in md
    assert "B better" in md and "within noise" in md and "Suite math (2 task(s), 150 problems)" in md


def test_compare_cli_and_errors(tmp_path, capsys):
    from tests.conftest import run_cli
    from tests.helpers import main_cli

    a = _write(tmp_path / "a", {"gsm8k": _rows("g", [1, 0, 0, 1]), "bbh/navigate": _rows("n", [1, 1])})
    b = _write(tmp_path / "b", {"gsm8k": _rows("g", [1, 1, 0, 1])})
    r = run_cli("compare", str(a), str(b))  # one real subprocess: the console script end to end
    assert r.returncode == 0, r.stderr
    assert "| gsm8k | 4 |" in r.stdout and "Not compared (in one run only): A: bbh/navigate." in r.stdout
    code, out, _ = main_cli(capsys, "compare", str(a), str(b), "--json")
    assert code == 0 and json.loads(out)["tasks"]["gsm8k"]["only_b"] == 1

    other = _write(tmp_path / "c", {"gsm8k": _rows("g", [1, 0, 0])})  # 3 problems, not 4
    code, _, err = main_cli(capsys, "compare", str(a), str(other))
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ")
    assert "task 'gsm8k': not the same problems (4 in" in err and "same --limit and --seed" in err

    code, _, err = main_cli(capsys, "compare", str(a), str(tmp_path / "nowhere"))
    assert code == 1 and "nowhere: no results.json there" in err

    bad = _write(tmp_path / "d", {"gsm8k": _rows("g", [1, 0, 0, 1])})
    (bad / "predictions" / "gsm8k.jsonl").write_text('{"id": "g-0", "correct": true}\nnot json\n')
    code, _, err = main_cli(capsys, "compare", str(a), str(bad))
    assert code == 1 and "gsm8k.jsonl:2: not valid JSON" in err

    nocommon = _write(tmp_path / "e", {"svamp": _rows("s", [1])})
    with pytest.raises(DataError, match="no task in common"):
        compare(str(a), str(nocommon))


def test_compare_says_when_only_one_side_had_the_calculator(tmp_path):
    a = _write(tmp_path / "a", {"gsm8k": _rows("g", [1, 0, 0, 1])})
    b = _write(tmp_path / "b", {"gsm8k": _rows("g", [1, 1, 0, 1])})
    assert not compare(str(a), str(b))["notes"]
    doc = json.loads((b / "results.json").read_text())
    doc["tasks"]["gsm8k"]["calculator"] = True
    (b / "results.json").write_text(json.dumps(doc))
    assert compare(str(a), str(b))["notes"] == ["gsm8k: the calculator (lorasp eval --calculator) was on in B only"]
