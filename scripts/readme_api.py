"""Run the README's "Python API" block verbatim (the real SmolLM2-135M, as written) in a scratch directory.

CI calls this after the test suite (``make readme-api``): a test in ``tests/test_cli_usage.py`` runs the same
block with the tiny fixture model for speed; this script proves the block a user copies works exactly as printed. It checks
what the block promises: a teach run, an adapter, an eval under ``runs/eval/arith``, a printed generation and a
merged model. Exit code 0 on success; on failure, the block's own error and a non-zero code.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_block(readme: Path = ROOT / "README.md") -> str:
    m = re.search(r"\n## Python API\n.*?```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    if not m:
        raise SystemExit(f"{readme}: no ```python block under '## Python API'")
    return m.group(1)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    block = readme_block()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="lorasp-readme-") as tmp:
        os.chdir(tmp)
        exec(compile(block, "README.md (Python API)", "exec"), {"__name__": "readme"})
        res = json.loads(Path("runs/eval/arith/results.json").read_text())
        task = res["tasks"]["arith"]
        missing = [p for p in ("adapters/arith/adapter_model.safetensors", "merged/arith/config.json")
                   if not Path(p).exists()]
        if missing:
            print(f"README Python API block: expected {', '.join(missing)} after it ran", file=sys.stderr)
            return 1
        print(f"README Python API block ran verbatim in {time.time() - t0:.0f} s: arith "
              f"{task['correct']}/{task['n']} ({task['mode']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
