"""The sequential driver every one-shot method runs in (``prune``).

Layer by layer: the inputs of decoder layer 0 are recorded once; for each
layer, hooks on its linear sublayers collect the method's statistics in one
pass over the calibration batches, the sublayers are pruned, and the layer
is re-run so that the next layer is calibrated on the pruned outputs. Only
one layer's inputs are held at a time, so memory does not grow with depth.
Every argument is checked before anything is changed.
"""
from __future__ import annotations

import time

import torch

from ..nm import parse_pattern
from .magnitude import Magnitude
from .model import decoder_layers, layer0_inputs, layer_output, linear_sublayers, weight_view
from .sparsegpt import SparseGPT
from .wanda import Wanda

METHODS = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGPT}


def check_sparsity_and_pattern(sparsity, pattern):
    """Returns ``(sparsity, (n, m) or None)``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if pattern is None:
        return float(sparsity), None
    n, m = parse_pattern(pattern)
    if abs(float(sparsity) - (1 - n / m)) > 1e-9:
        raise ValueError(f"pattern '{n}:{m}' keeps {n} of every {m} weights, so sparsity must be "
                         f"1 - {n}/{m} = {1 - n / m!r}, got sparsity={sparsity!r}")
    return float(sparsity), (n, m)


def check_calibration(calibration, model):
    if not isinstance(calibration, torch.Tensor):
        raise TypeError(f"calibration must be a LongTensor of token ids [samples, seq_len], got "
                        f"{type(calibration).__name__}")
    if calibration.dtype != torch.long:
        raise TypeError(f"calibration must hold int64 token ids, got dtype {calibration.dtype}")
    if calibration.dim() != 2 or calibration.shape[0] < 1 or calibration.shape[1] < 1:
        raise ValueError(f"calibration must have shape [samples, seq_len] with both >= 1, got "
                         f"{tuple(calibration.shape)}")
    check_ids(calibration, model, "calibration")


def check_ids(ids, model, what):
    """Token ids the model can read: inside its vocabulary, and, for a model
    with learned absolute positions (GPT-2's ``n_positions``), rows no
    longer than those (an embedding lookup past them fails with a bare
    IndexError). Rotary models (Llama) have no such table."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"{what} holds token ids outside [0, {vocab}) (the model's vocabulary): "
                         f"min {int(ids.min())}, max {int(ids.max())}")
    positions = getattr(config, "n_positions", None)
    if isinstance(positions, int) and ids.shape[-1] > positions:
        raise ValueError(f"{what} rows are {ids.shape[-1]} tokens long, but the model has learned "
                         f"positions for {positions} (config.n_positions); use a shorter seq_len")


def check_model_fits(model, nm):
    """The decoder layers and their linear sublayers, refusing a model with
    none, or an n:m pattern that does not divide a sublayer's input dim."""
    layers = decoder_layers(model)
    subs = [linear_sublayers(layer) for layer in layers]
    if not any(subs):
        raise ValueError("model: its decoder layers hold no nn.Linear or Conv1D sublayers")
    if nm is not None:
        for li, mods in enumerate(subs):
            for name, mod in mods.items():
                cols = weight_view(mod).shape[1]
                if cols % nm[1]:
                    raise ValueError(f"pattern '{nm[0]}:{nm[1]}' needs every input dim to be a multiple "
                                     f"of {nm[1]}, but layer {li} '{name}' has {cols} inputs")
    return layers, subs


def make_method(method, options):
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    cls = METHODS[method]
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise TypeError(f"method '{method}' got unknown option(s) {unknown}; it takes "
                        f"{sorted(cls.options) or 'none'}")
    return cls(**options)


@torch.no_grad()
def prune(model, calibration, *, method, sparsity, pattern=None, batch_size=8, progress=True,
          **options):
    """Prune ``model``'s decoder-layer linear sublayers in place.

    Args:
        model: a causal LM (Llama-style or GPT-2-style decoder layers).
        calibration: LongTensor of token ids, ``[samples, seq_len]``.
        method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
        sparsity: fraction pruned in [0, 1); with ``pattern`` it must be
            1 - n/m.
        pattern: None (unstructured) or ``"n:m"`` (n kept of every m
            consecutive weights along each sublayer's input dim).
        batch_size: calibration rows per forward call.
        progress: a progress bar over the layers.
        **options: the method's own (SparseGPT: ``blocksize``, ``percdamp``).

    Returns:
        A list with one dict per pruned sublayer: ``layer``, ``module``,
        ``shape`` ([out, in]), ``sparsity`` (measured), ``seconds`` (its
        layer's statistics pass and its own pruning) and the method's extras.
    """
    pruner = make_method(method, options)
    sparsity, nm = check_sparsity_and_pattern(sparsity, pattern)
    check_calibration(calibration, model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    layers, subs = check_model_fits(model, nm)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    report = []
    originals = []  # (weight, its values before pruning, on the CPU): undone if anything fails
    try:
        inputs = layer0_inputs(model, layers, calibration.to(device), batch_size)
        bar = _progress(len(layers), method, progress)
        for li, (layer, mods) in enumerate(zip(layers, subs)):
            t0 = time.perf_counter()
            stats = {}
            if pruner.needs_inputs:
                stats = _collect(layer, mods, inputs, pruner, device)
            t_stats = time.perf_counter() - t0
            for name, mod in mods.items():
                t1 = time.perf_counter()
                w = weight_view(mod)
                originals.append((w, w.detach().to("cpu", copy=True)))
                try:
                    extra = pruner.prune(w, stats.get(name), sparsity, nm)
                except torch.linalg.LinAlgError as e:
                    raise ValueError(f"{method}: layer {li} '{name}': {e} Raise percdamp or give more "
                                     "calibration tokens; the model was left as it was") from None
                report.append(dict(layer=li, module=name, shape=tuple(w.shape),
                                   sparsity=float((w == 0).sum()) / w.numel(),
                                   seconds=t_stats / len(mods) + time.perf_counter() - t1, **extra))
            if li + 1 < len(layers):
                inputs = [(layer_output(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in inputs]
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    except BaseException:
        for w, before in originals:
            w.copy_(before)
        raise
    finally:
        model.train(was_training)
    return report


def _collect(layer, mods, inputs, pruner, device):
    """``{name: statistics}`` of one layer's sublayers over the calibration
    batches. Sublayers fed the very same input tensor (q, k and v; gate and
    up) share one collector, so each statistic is computed once per input.
    (The shared input is held for the batch, so its address cannot be
    reused by a later tensor and mistaken for it.)"""
    stats, owner, seen = {}, {}, {}

    def hook(name):
        def add(module, args, out):
            x = args[0]
            key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype)
            if name not in stats:
                if key in seen:
                    stats[name], owner[name] = stats[seen[key][0]], False
                    return
                stats[name] = pruner.collector(x.shape[-1], device)
                owner[name] = True
                seen[key] = (name, x)
            if owner[name]:
                stats[name].add(x)
        return add

    handles = [mod.register_forward_hook(hook(name)) for name, mod in mods.items()]
    try:
        for hidden, kwargs in inputs:
            layer(hidden, **kwargs)
            seen.clear()
    finally:
        for h in handles:
            h.remove()
    return stats


def _progress(total, method, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a requirement
        return None
    return tqdm(total=total, desc=f"{method}: layers", unit="layer")
