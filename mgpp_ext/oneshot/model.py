"""Finding the parts of a decoder-only transformer that one-shot pruning
walks: its decoder layers, their linear sublayers, and the inputs of layer 0."""
from __future__ import annotations

import inspect

import torch
from torch import nn


def decoder_layers(model):
    """The decoder layers of a Llama-style (``model.model.layers``) or
    GPT-2-style (``model.transformer.h``) causal LM, in order."""
    for path in (("model", "layers"), ("transformer", "h"), ("model", "decoder", "layers"),
                 ("gpt_neox", "layers")):
        obj = model
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return list(obj)
    raise ValueError(
        f"model: no decoder layers found in {type(model).__name__} (looked for model.layers, "
        "transformer.h, model.decoder.layers and gpt_neox.layers)")


def _is_conv1d(module):
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def linear_sublayers(layer):
    """``{name: module}`` of the layer's ``nn.Linear`` and GPT-2 ``Conv1D``
    sublayers, in registration order."""
    return {name: mod for name, mod in layer.named_modules()
            if isinstance(mod, nn.Linear) or _is_conv1d(mod)}


def weight_view(module):
    """The module's weight as [out, in] (a view: a GPT-2 ``Conv1D`` stores
    [in, out])."""
    return module.weight.data.t() if _is_conv1d(module) else module.weight.data


def weight_param_view(module):
    """The same [out, in] view of the weight parameter itself, for autograd."""
    return module.weight.t() if _is_conv1d(module) else module.weight


class _Stop(Exception):
    pass


@torch.no_grad()
def layer0_inputs(model, layers, calibration, batch_size):
    """``[(hidden_states, kwargs)]`` with which the model calls layer 0, one
    per batch of calibration rows (the model run stops there)."""
    first = layers[0]
    seen = []
    signature = inspect.signature(first.forward)

    def grab(module, args, kwargs):
        # Positional arguments after the hidden states (GPT-2 passes its
        # causal mask so) are bound to their names, so that every re-run
        # of a layer as ``layer(hidden, **kwargs)`` gets them too.
        bound = signature.bind_partial(*args, **kwargs)
        named = dict(bound.arguments)
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                named.update(named.pop(name, {}))
            elif param.kind is inspect.Parameter.VAR_POSITIONAL and named.get(name):
                raise RuntimeError(f"model: decoder layer 0 took extra positional arguments {name}; "
                                   "cannot replay its call")
        hidden = named.pop(next(iter(signature.parameters)))
        kwargs = {k: v for k, v in named.items() if k not in ("past_key_value", "past_key_values",
                                                                "layer_past", "use_cache")}
        seen.append((hidden, kwargs))
        raise _Stop

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for b in range(0, calibration.shape[0], batch_size):
            try:
                model(input_ids=calibration[b:b + batch_size], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    if len(seen) != -(-calibration.shape[0] // batch_size):
        raise RuntimeError("model: decoder layer 0 was not called once per calibration batch")
    return seen


def layer_output(out):
    """The hidden states a decoder layer returns (a tensor, or the first
    element of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out
