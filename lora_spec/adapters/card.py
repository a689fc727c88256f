"""The model card (``README.md``) of an artifact, in the Hugging Face Hub's format.

The card opens with the Hub's metadata header (YAML between ``---`` lines: ``base_model``, ``library_name``,
``license``, ``datasets``, ``tags``, ``pipeline_tag`` and a ``model-index`` with the held-out results), then says
what the artifact is, how it was trained, the prompt format it was trained with (chat template + system message:
an adapter answers best in the layout it was trained on), the specialization report's numbers and how to use it
with PEFT, lorasp, llama.cpp and Ollama. Everything comes from ``lorasp.json`` (and ``adapter_config.json``), so a
card can be rebuilt anywhere the manifest is.
"""

from __future__ import annotations

from typing import Any

import yaml

from .. import registry
from ..prompts import TRIGGER, artifact_prompting
from ..student import PRESET_LICENSES, hub_id, preset_of

TAGS = ["lorasp", "model-specialization", "chain-of-thought", "math-reasoning"]
SET_NAMES = {"in_dist": "in-distribution", "ood": "out-of-distribution", "generic": "generic (BBH)"}


def base_hub_id(manifest: dict[str, Any]) -> str | None:
    """The Hub id of the artifact's base (presets map to their Hub id; local directories have none)."""

    base = manifest.get("base") or {}
    if "hub_id" in base:  # recorded when the base was loaded (a relative local path cannot pass for a Hub id later)
        return base["hub_id"]
    return hub_id(base.get("name"))


def base_license(manifest: dict[str, Any]) -> str | None:
    name = (manifest.get("base") or {}).get("name")
    preset = preset_of(name) if name else None
    return PRESET_LICENSES.get(preset) if preset else None


def training_system(manifest: dict[str, Any]) -> str | None:
    """The chat system message the artifact was trained with (None: plain-text prompts, or no system message)."""

    p = artifact_prompting(manifest)
    return p["system"] if p["chat"] else None


def _dataset_hub_ids(manifest: dict[str, Any]) -> list[str]:
    """Hub ids of the training data set (from the dataset plugin's Hub fallback table), if it has any."""
    data = manifest.get("data") or {}
    name = data.get("dataset")
    if not isinstance(name, str) or not name:
        return []
    try:
        cls = registry.resolve("datasets", name)
    except Exception:  # a plugin that is not installed here: the card simply names no Hub data set
        return []
    hub = getattr(cls, "_hub", None)
    if not isinstance(hub, dict):
        return []
    return sorted({v[0] for v in hub.values() if isinstance(v, (tuple, list)) and v and isinstance(v[0], str)})


def _pct(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return round(100.0 * float(x), 1)


def model_index(manifest: dict[str, Any], name: str) -> list[dict[str, Any]] | None:
    """The Hub ``model-index``: the chosen checkpoint's held-out scores and the before/after test accuracy."""
    results: list[dict[str, Any]] = []
    sel = manifest.get("selection") or {}
    chosen = sel.get("chosen_step")
    cks = [c for c in manifest.get("checkpoints") or [] if isinstance(c, dict)]
    ck = next((c for c in cks if c.get("step") == chosen), None) if chosen is not None else None
    sets = sel.get("sets") or {}
    if ck is not None:
        scores = ck.get("scores") or {}
        for s, title in SET_NAMES.items():
            v = _pct(scores.get(s))
            d = sets.get(s) or {}
            if v is None or not d.get("datasets"):
                continue
            tasks = d.get("tasks") or {}
            n = sum(int(x) for x in tasks.values()) if tasks else d.get("limit")
            results.append({
                "task": {"type": "text-generation", "name": f"{title} held-out set"},
                "dataset": {"name": f"{title}: {', '.join(map(str, d['datasets']))} ({n} problems, seed "
                                    f"{d.get('seed')})", "type": str(d["datasets"][0]).split(":")[0].split("@")[0]},
                "metrics": [{"type": "accuracy", "value": v,
                             "name": f"accuracy % ({d.get('mode')}, checkpoint step {chosen})"}]})
    after = (manifest.get("before_after") or {}).get("after") or {}
    for task, r in after.items():
        if not isinstance(r, dict) or _pct(r.get("accuracy")) is None:
            continue
        ds, _, split = str(task).partition(":")
        results.append({
            "task": {"type": "text-generation", "name": "held-out test"},
            "dataset": {"name": f"{ds} {split or 'test'} ({r.get('n')} problems)", "type": ds,
                        "split": split or "test"},
            "metrics": [{"type": "accuracy", "value": _pct(r["accuracy"]),
                         "name": f"accuracy % ({r.get('mode', 'zs_cot')}, greedy)"}]})
    return [{"name": name, "results": results}] if results else None


def metadata(manifest: dict[str, Any], adapter_cfg: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The card's YAML header as a dict (only fields with a known value)."""
    kind = manifest.get("kind", "adapter")
    meta: dict[str, Any] = {}
    hub = base_hub_id(manifest)
    if hub:
        meta["base_model"] = hub
    meta["library_name"] = "peft" if kind in ("adapter", "combined") else "transformers"
    lic = base_license(manifest)
    if lic:
        meta["license"] = lic
    ds = _dataset_hub_ids(manifest)
    if ds:
        meta["datasets"] = ds
    tags = list(TAGS)
    method = manifest.get("method")
    if kind in ("adapter", "combined"):
        tags += ["peft", "dora" if (adapter_cfg or {}).get("use_dora") or method == "dora" else "lora"]
        if manifest.get("quant") in ("nf4", "int8"):
            tags.append("qlora")
    elif kind == "merged":
        tags.append("merged-lora")
    if hub:
        tags.append(f"base_model:{'adapter' if kind in ('adapter', 'combined') else 'finetune'}:{hub}")
    meta["tags"] = tags
    meta["pipeline_tag"] = "text-generation" if (manifest.get("base") or {}).get("kind", "causal") == "causal" \
        else "text2text-generation"
    mi = model_index(manifest, name)
    if mi:
        meta["model-index"] = mi
    return meta


def _prompt_section(manifest: dict[str, Any]) -> list[str]:
    if manifest.get("chat"):
        system = training_system(manifest)
        lines = ["## Prompt format", "",
                 "Trained with the base tokenizer's chat template"
                 + (f" and this system message:\n\n```text\n{system}\n```" if system else " and no system message.")]
        lines += ["", f"Chain-of-thought prompts pre-fill the assistant turn with `{TRIGGER}` and a newline; the "
                      "adapter then writes the steps and ends with `The answer is X.` (as `lorasp eval --mode "
                      "zs_cot` asks). `lorasp export THIS_DIR --format gguf` writes an Ollama `Modelfile` with "
                      "this template and system message.", ""]
        return lines
    return ["## Prompt format", "", "Plain text: `Question: ...` then a line `" + TRIGGER + "`; the model continues "
            "with the steps and `The answer is X.`", ""]


def _report_section(manifest: dict[str, Any], name: str) -> list[str]:
    from ..report import has_scores, render_markdown

    lines: list[str] = []
    ba = manifest.get("before_after") or {}
    if ba.get("before") or ba.get("after"):
        lines += ["## Held-out test accuracy", "", "| set | n | before | after |", "|---|---:|---:|---:|"]
        for task in dict.fromkeys(list(ba.get("before") or {}) + list(ba.get("after") or {})):
            b = (ba.get("before") or {}).get(task) or {}
            a = (ba.get("after") or {}).get(task) or {}
            def f(r):
                return "–" if _pct(r.get("accuracy")) is None else \
                    f"{_pct(r['accuracy']):.1f}% ({r.get('correct')}/{r.get('n')})"
            lines.append(f"| {task} | {a.get('n', b.get('n', ''))} | {f(b)} | {f(a)} |")
        lines.append("")
    if has_scores(manifest):
        try:
            md = render_markdown(manifest, name)
        except Exception:  # a manifest the report cannot render: the card still has everything else
            md = ""
        body = md.split("\n", 2)[2] if md.startswith("# ") else md
        if body.strip():
            lines += ["## Specialization report", "", body.rstrip(), ""]
    return lines


def model_card(manifest: dict[str, Any], adapter_cfg: dict[str, Any] | None, name: str = "lorasp-adapter") -> str:
    """The whole ``README.md`` of an artifact."""
    kind = manifest.get("kind", "adapter")
    base = manifest.get("base") or {}
    hub = base_hub_id(manifest)
    header = yaml.safe_dump(metadata(manifest, adapter_cfg, name), sort_keys=False, allow_unicode=True, width=120)
    what = {"adapter": "A reasoning adapter", "combined": "A combination of reasoning adapters",
            "merged": "A model with a reasoning adapter merged into its weights",
            "full": "A fully fine-tuned reasoning model"}.get(kind, "A model")
    lines = ["---", header.rstrip(), "---", "", f"# {name}", "",
             f"{what} written by lorasp: model specialization (Fu et al., ICML 2023, *Specializing Smaller "
             "Language Models towards Multi-Step Reasoning*): a small student tuned on a teacher's chain-of-thought "
             "in a mixture of in-context/zero-shot × CoT/answer-only formats.", "",
             f"- base: `{hub or base.get('name')}`" + (f" (lorasp preset `{base.get('name')}`)"
                                                        if hub and base.get("name") != hub else "")
             + f"; base fingerprint `{(base.get('fingerprint') or {}).get('id')}` (in `lorasp.json`)",
             f"- quantization trained against: `{manifest.get('quant', 'none')}`",
             f"- method: `{manifest.get('method', '?')}`"]
    if adapter_cfg:
        lines.append(f"- LoRA: r={adapter_cfg.get('r')}, alpha={adapter_cfg.get('lora_alpha')}, "
                     f"targets={adapter_cfg.get('target_modules')}, dora={bool(adapter_cfg.get('use_dora'))}")
    data = manifest.get("data") or {}
    if data:
        src = ", ".join(f"{k} {data[k]}" for k in ("dataset", "split", "teacher") if data.get(k))
        lines.append(f"- data: {src or data.get('path') or data.get('kind')}"
                     + (f"; {data['n_examples']} training rows" if data.get("n_examples") else ""))
    if manifest.get("formats"):
        lines.append(f"- formats: {manifest['formats']}" + (f", loss `{manifest['loss']}`" if manifest.get("loss") else ""))
    if manifest.get("parents"):
        lines.append("- parents: " + ", ".join(f"`{p.get('path')}` x {p.get('weight', 1)}"
                                               for p in manifest["parents"]))
    sel = manifest.get("selection") or {}
    if sel.get("rule") is not None or sel.get("chosen_step") is not None:
        lines.append(f"- selection: {sel.get('rule')} -> step {sel.get('chosen_step')}")
    lines.append("")
    lines += _prompt_section(manifest)
    lines += _report_section(manifest, name)
    lines += ["## Use", ""]
    if kind in ("adapter", "combined"):
        lines += ["```python", "from peft import AutoPeftModelForCausalLM  # loads the base by its Hub id",
                  "model = AutoPeftModelForCausalLM.from_pretrained('THIS_DIR')", "```", "",
                  "```bash", "lorasp generate --adapter math=THIS_DIR --use math --prompt '...'",
                  "lorasp merge THIS_DIR --out merged/",
                  "lorasp export THIS_DIR --format gguf --out gguf/   # llama.cpp LoRA GGUF + Ollama Modelfile",
                  "```", ""]
    else:
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained('THIS_DIR')", "```", "",
                  "```bash", "lorasp export THIS_DIR --format gguf --out gguf/   # llama.cpp model GGUF + Ollama "
                  "Modelfile", "```", ""]
    return "\n".join(lines)
