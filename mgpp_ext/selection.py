"""Which weights of a model are pruned: the encoder's linear weights by default."""
from __future__ import annotations

import re

import torch

# Weights (not biases) of the encoder/decoder blocks' linear layers.
DEFAULT_PATTERNS = (
    # BERT-like: query, key, value, attention output dense, intermediate, output
    r"(^|\.)layer\.\d+\.attention\.self\.(query|key|value)\.weight$",
    r"(^|\.)layer\.\d+\.attention\.output\.dense\.weight$",
    r"(^|\.)layer\.\d+\.intermediate\.dense\.weight$",
    r"(^|\.)layer\.\d+\.output\.dense\.weight$",
    # GPT-2-like
    r"(^|\.)h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$",
    # Llama-like
    r"(^|\.)layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight$",
    r"(^|\.)layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)\.weight$",
)


def prunable_param_groups(model: torch.nn.Module, patterns=None, **group_options):
    """Split ``model``'s trainable parameters into a pruned and a dense group.

    Args:
        model: the model to fine-tune.
        patterns: regular expressions matched (``re.search``) against
            parameter names; a parameter is pruned if any matches. ``None``
            uses the default selection: the query/key/value/attention-output/
            intermediate/output weights of BERT-like encoders, ``c_attn``,
            ``c_fc``, ``c_proj`` of GPT-2-like models, q/k/v/o and
            gate/up/down projections of Llama-like models. Embeddings,
            LayerNorms, biases, poolers and classifier heads are not pruned.
        **group_options: extra keys (e.g. ``weight_decay``) put in both groups.

    Returns:
        A list of param-group dicts for ``MGPP``: ``{"params", "prune",
        "param_names"}``, and in the pruned group ``"input_dims"``: each
        weight's input dimension, the one an n:m pattern runs along (the
        last dim of an ``nn.Linear`` weight ``[out, in]``, dim 0 of a GPT-2
        ``Conv1D`` weight ``[in, out]``; see ``input_dim``). Empty groups
        are left out.

    Raises:
        ValueError: if no parameter matches (nothing would be pruned).
    """
    regexes = [re.compile(p) for p in (DEFAULT_PATTERNS if patterns is None else patterns)]
    pruned, pruned_names, dense, dense_names = [], [], [], []
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(r.search(name) for r in regexes):
            pruned.append(p)
            pruned_names.append(name)
        else:
            dense.append(p)
            dense_names.append(name)
    if not pruned:
        which = "the default BERT/GPT-2/Llama patterns" if patterns is None else f"patterns {list(patterns)}"
        raise ValueError(f"prunable_param_groups: no parameter name of the model matches {which}")
    dims = [input_dim(modules.get(n.rpartition(".")[0]), p) for n, p in zip(pruned_names, pruned)]
    groups = [dict(params=pruned, prune=True, param_names=pruned_names, input_dims=dims, **group_options)]
    if dense:
        groups.append(dict(params=dense, prune=False, param_names=dense_names, **group_options))
    return groups


def input_dim(module, weight):
    """The input dimension of ``weight``, the parameter of ``module``: 0 for
    a GPT-2 ``Conv1D`` (weight ``[in, out]``, named so in transformers),
    else the last dim (``nn.Linear``'s weight is ``[out, in]``)."""
    if module is not None and type(module).__name__ == "Conv1D" and weight.dim() == 2:
        return 0
    return weight.dim() - 1
