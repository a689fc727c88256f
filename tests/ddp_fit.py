"""Run under ``accelerate launch`` (2 CPU processes): a short fit on tiny-llama; every rank writes a digest of its
trained adapter weights to ``$LORASP_DDP_OUT/rank{R}.json`` so that the test can compare them.

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no tests/ddp_fit.py TEACH_RUN OUT
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def main() -> None:
    from lora_spec.fit import FitConfig, fit
    from lora_spec.trainer import dist_state

    teach_run, out = sys.argv[1], sys.argv[2]
    state = dist_state()
    cfg = FitConfig(student="tiny-llama", data=teach_run, max_steps=4, batch_size=2, max_length=160,
                    save_every=2, dropout=0.1, formats="zero_shot_cot=3,zero_shot_answer=1", tracker="none",
                    progress=False, out=out)
    res = fit(cfg)
    h = hashlib.sha256()
    n = 0
    changed = False
    for name, p in sorted(res.model.named_parameters()):
        if p.requires_grad:
            t = p.detach().cpu().contiguous()
            h.update(name.encode())
            h.update(t.numpy().tobytes())
            n += t.numel()
            if "lora_B" in name and t.abs().sum() > 0:  # lora_B starts at zero: nonzero means it trained
                changed = True
    Path(os.environ["LORASP_DDP_OUT"], f"rank{state.process_index}.json").write_text(json.dumps(
        {"digest": h.hexdigest(), "n_params": n, "world_size": state.num_processes, "changed": changed}))


if __name__ == "__main__":
    main()
