"""One-shot importance scores over calibration batches, and masks from them.

The scores of DeepCuts (arXiv 2212.13392) and its baselines, for the
weights ``params`` of a model (usually ``prunable_param_groups(model)[0]
["params"]``), each a new fp32 tensor per weight:

- ``magnitude``: |W|;
- ``taylor``: |W * g|, g the loss gradient averaged over the batches
  (the first-order Taylor estimate of the loss change when W is removed);
- ``cam_cut``: |W * g * a|, a the module's output activation averaged over
  the batches and tokens, broadcast along the input dimension (so each
  output unit's weights are weighed by how active that unit is);
- ``smooth_cut``: |W * g~|, g~ the gradient averaged over ``passes`` noisy
  passes per batch, with N(0, noise_std^2) noise added to the output of
  every module that holds a weight or a bias (not to embeddings or
  normalisation layers), which smooths the loss surface the gradient is
  taken on.

``masks_from_scores`` turns scores into keep-masks at a sparsity, with one
global threshold or one per tensor (the exact k-th smallest score; ties at
it are pruned, as at the optimizers' events); ``mgpp_ext.FixedMask`` then
fine-tunes with them.

``loss_fn(model, batch)`` returns the scalar loss of one batch. The model's
parameters and their ``.grad`` are left as they were; the scores are
computed in eval mode (no dropout), and the mode is restored.

Two choices differ from DeepCuts' code, and are deliberate: its gradients
are taken in train mode (dropout adds noise of its own to every score, and
to Smooth-Cut's smoothing), and over several calibration batches it sums
the per-batch scores |W * g_b (* a_b)|, where here g and a are averaged
over all batches first, so each score is the formula above on the whole
calibration set.
"""
from __future__ import annotations

import contextlib
import math

import torch

__all__ = ["magnitude", "taylor", "cam_cut", "smooth_cut", "masks_from_scores", "SCORES"]

_NO_NOISE = (torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm,
             torch.nn.modules.batchnorm._NormBase)  # batch and instance norms


def _noised(model):
    """The modules whose outputs Smooth-Cut perturbs: those holding a weight
    or a bias of their own (linear layers, GPT-2's Conv1D), but embeddings
    and normalisation layers (torch's layer, RMS, group, batch and instance
    norms, and ``*Norm`` classes such as Llama's RMSNorm), as in
    DeepCuts' code; parameter-free modules (activations, dropout) and
    containers are not perturbed, so no output is perturbed twice."""
    return [m for m in model.modules()
            if (m._parameters.get("weight") is not None or m._parameters.get("bias") is not None)
            and not isinstance(m, _NO_NOISE) and not type(m).__name__.endswith("Norm")]


def _check_params(model, params):
    params = list(params)
    if not params:
        raise ValueError("params is empty: no weight to score")
    owned = {id(p) for p in model.parameters()}
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or id(p) not in owned:
            raise ValueError(f"params[{i}] is not a parameter of the model")
    return params


def _check_batches(batches):
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: the scores need at least one calibration batch")
    return batches


def _owner(model, p):
    for m in model.modules():
        if m._parameters.get("weight") is p:
            return m
    raise ValueError("a scored param is not the 'weight' of any module of the model")


def _linear_owner(model, p, i):
    """The nn.Linear or GPT-2 Conv1D whose weight ``p`` is (for a weight tied
    to an embedding, the linear layer that shares it): Cam-Cut's activation
    is that module's output, one value per output feature."""
    owners = [m for m in model.modules() if m._parameters.get("weight") is p]
    for m in owners:
        if p.dim() == 2 and (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"):
            return m
    kinds = ", ".join(type(m).__name__ for m in owners) or "no module"
    raise ValueError(f"cam_cut: params[{i}] is the weight of {kinds}; Cam-Cut scores the 2-D weights of "
                     "nn.Linear and Conv1D layers (their output per output feature is the activation)")


def _output_dim(module, weight):
    """The dim of ``weight`` that indexes the module's outputs: 0 for an
    ``nn.Linear`` ``[out, in]``, 1 for a GPT-2 ``Conv1D`` ``[in, out]``."""
    if type(module).__name__ == "Conv1D" and weight.dim() == 2:
        return 1
    return 0


@contextlib.contextmanager
def _scoring(model, params):
    """Eval mode, gradients on exactly ``params``; everything restored after."""
    modes = [(m, m.training) for m in model.modules()]  # each submodule's own mode
    saved_grads = {id(p): p.grad for p in model.parameters()}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    scored = {id(p) for p in params}
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in scored)
            p.grad = None
        yield
    finally:
        for p in model.parameters():
            p.grad = saved_grads[id(p)]
            p.requires_grad_(flags[id(p)])
        for m, training in modes:
            m.training = training


def _mean_gradients(model, params, batches, loss_fn, passes=1):
    """The loss gradient of each param averaged over batches x passes (fp32)."""
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    count = 0
    for batch in batches:
        for _ in range(passes):
            for p in params:
                p.grad = None
            with torch.enable_grad():
                loss = loss_fn(model, batch)
                if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
                    raise TypeError("loss_fn(model, batch) must return a scalar tensor")
                if not loss.requires_grad:
                    raise ValueError("loss_fn(model, batch) does not depend on any of the scored params; "
                                     "score parameters the loss uses")
                loss.backward()
            for s, p in zip(sums, params):
                if p.grad is not None:
                    s.add_(p.grad.float())
            count += 1
    for p in params:
        p.grad = None
    return [s.div_(count) for s in sums]


@torch.no_grad()
def magnitude(params):
    """|W| of every weight (fp32)."""
    return [p.detach().float().abs() for p in params]


def taylor(model, params, batches, loss_fn):
    """|W * g|, g the loss gradient averaged over ``batches``."""
    params = _check_params(model, params)
    batches = _check_batches(batches)
    with _scoring(model, params):
        grads = _mean_gradients(model, params, batches, loss_fn)
    return [(p.detach().float() * g).abs_() for p, g in zip(params, grads)]


def cam_cut(model, params, batches, loss_fn):
    """Cam-Cut: |W * g * a|, a the module's output averaged over the
    batches and tokens (every dim of the output but the last), broadcast
    along the weight's input dimension."""
    params = _check_params(model, params)
    batches = _check_batches(batches)
    owners = [_linear_owner(model, p, i) for i, p in enumerate(params)]
    sums = [torch.zeros(p.shape[_output_dim(m, p)], dtype=torch.float64, device=p.device)
            for m, p in zip(owners, params)]
    counts = [0] * len(params)

    def hook(i):
        def record(module, args, out):
            features = params[i].shape[_output_dim(module, params[i])]
            if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[-1] != features:
                raise ValueError(f"cam_cut: the output of params[{i}]'s module does not end in its "
                                 f"{features} output features (got {getattr(out, 'shape', type(out))})")
            y = out.detach().double().reshape(-1, out.shape[-1])
            sums[i].add_(y.sum(0))
            counts[i] += y.shape[0]
        return record

    with _scoring(model, params):
        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(owners)]
        try:
            grads = _mean_gradients(model, params, batches, loss_fn)
        finally:
            for h in handles:
                h.remove()
    for i, n in enumerate(counts):
        if n == 0:
            raise ValueError(f"cam_cut: the module of params[{i}] was never called by loss_fn, so it has "
                             "no activation to score with")
    scores = []
    for m, p, g, s, n in zip(owners, params, grads, sums, counts):
        a = (s / n).float()
        shape = [1] * p.dim()
        shape[_output_dim(m, p)] = -1
        scores.append((p.detach().float() * g * a.view(shape)).abs_())
    return scores


def smooth_cut(model, params, batches, loss_fn, *, passes=10, noise_std=1e-3, seed=0):
    """Smooth-Cut: |W * g~|, g~ the loss gradient averaged over ``passes``
    passes per batch, each with fresh N(0, noise_std^2) noise added to the
    output of every module with a weight or bias of its own but embeddings
    and normalisation layers. DeepCuts writes the noise as N(0, 1e-3), and
    its code adds ``1e-3 * randn`` to those modules' outputs: a standard
    deviation of 1e-3 (``noise_std``). ``seed`` fixes the noise."""
    params = _check_params(model, params)
    batches = _check_batches(batches)
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be an int >= 1, got {passes!r}")
    if not (isinstance(noise_std, (int, float)) and not isinstance(noise_std, bool)
            and 0 <= noise_std < math.inf):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    gen = None

    def add_noise(module, args, out):
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None
        noise = torch.randn(out.shape, generator=gen, device="cpu", dtype=torch.float32)
        return out + (noise_std * noise).to(out.device, out.dtype)

    with _scoring(model, params):
        gen = torch.Generator().manual_seed(seed)
        handles = [m.register_forward_hook(add_noise) for m in _noised(model)]
        try:
            grads = _mean_gradients(model, params, batches, loss_fn, passes=passes)
        finally:
            for h in handles:
                h.remove()
    return [(p.detach().float() * g).abs_() for p, g in zip(params, grads)]


#: The one-shot scores by name (each called as in its docstring).
SCORES = {"magnitude": magnitude, "taylor": taylor, "cam_cut": cam_cut, "smooth_cut": smooth_cut}


@torch.no_grad()
def masks_from_scores(scores, sparsity, *, scope="global"):
    """Keep-masks (bool, True: kept) that prune ``floor(sparsity * N)``
    weights by the lowest score: over all tensors at once (``scope=
    "global"``, N their total size) or in each tensor on its own
    (``scope="layer"``, N its size). The threshold is the exact k-th
    smallest score; every score at or below it is pruned (ties can prune a
    few more than k). Scores must be finite."""
    scores = list(scores)
    if not scores:
        raise ValueError("scores is empty")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    for i, s in enumerate(scores):
        if not torch.isfinite(s).all():
            raise ValueError(f"scores[{i}] holds inf or NaN")
    frac = _fraction(sparsity)

    def keep(tensors):
        flat = torch.cat([t.float().reshape(-1) for t in tensors])
        k = math.floor(frac * flat.numel())
        if k == 0:
            return [torch.ones_like(t, dtype=torch.bool) for t in tensors]
        tau = torch.kthvalue(flat.cpu(), k).values.to(flat.device)
        return [t.float() > tau for t in tensors]

    if scope == "global":
        return keep(scores)
    return [keep([s])[0] for s in scores]


def _fraction(x):
    from fractions import Fraction
    return Fraction(repr(float(x)))  # 0.3 N is exactly 3 N / 10, as in the schedule
