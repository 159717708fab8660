"""``AdaptByPruning``: adapt a pretrained model to a task by learning only
a mask over its frozen weights (arXiv 2105.03343), and a new head.

A mask learner on the engine's parts: the ``Schedule`` gives the sparsity
s_t the mask holds at every step (by default the target from the first
step), the score is a learned fp32 (or bf16) tensor S per prunable weight,
and the mask keeps the weights whose S lies above the exact global k-th
smallest, k = floor(s_t N). The frozen weights are never written.
"""
from __future__ import annotations

import json
import math

import torch
from torch.nn.utils import parametrize

from .. import ops
from ..engine.buckets import adamw_buckets, adamw_hyper, adamw_lists
from ..engine.validation import (FLOAT_DTYPES, check_adamw, check_number, check_on_nonfinite, python_numbers,
                                 record_field)
from ..schedule import Schedule

RELAXATIONS = ("topk", "hard_concrete")


class _MaskSTE(torch.autograd.Function):
    """W * 1[S > tau]; the gradient of S is the straight-through one,
    dL/dS = dL/dW' * W (movement pruning's), W gets none (it is frozen)."""

    @staticmethod
    def forward(ctx, weight, scores, tau):
        ctx.save_for_backward(weight)
        ctx.score_dtype = scores.dtype
        return weight * (scores > tau).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        return None, (grad_out.float() * weight.float()).to(ctx.score_dtype), None


class _Mask(torch.nn.Module):
    """The parametrization of one frozen weight: ``weight = W * mask(S)``.
    S is its parameter, so it is in the model's state dict."""

    def __init__(self, learner, scores):
        super().__init__()
        self.scores = torch.nn.Parameter(scores)
        self._learner = [learner]  # a list: not a submodule

    def forward(self, weight):
        lr = self._learner[0]
        tau = lr._tau
        if lr._fixed:  # S and tau no longer move: the mask is 1[S > tau], with no gradient
            return weight * (self.scores.detach() > tau).to(weight.dtype)
        if lr.relaxation == "hard_concrete" and self.training:
            lo, hi = lr.stretch
            u = torch.rand(self.scores.shape, generator=lr._gen, dtype=torch.float32).to(self.scores.device)
            u = u.clamp_(1e-6, 1 - 1e-6)
            logits = (u.log() - (-u).log1p() + (self.scores.float() - lr._hc_tau)) / lr.temperature
            z = (torch.sigmoid(logits) * (hi - lo) + lo).clamp(0.0, 1.0)
            return weight * z.to(weight.dtype)
        return _MaskSTE.apply(weight, self.scores, tau)


class AdaptByPruning(torch.optim.Optimizer):
    """Learn a sparse mask over frozen pretrained weights, and train a head.

    The prunable weights (``weights``, e.g. ``prunable_param_groups(model)
    [0]["params"]``) are frozen and bitwise unchanged at the end: each is
    reparametrized (``torch.nn.utils.parametrize``) as ``W * mask(S)`` with
    a learned score S per weight. ``head`` (e.g. the new classifier's
    parameters) trains with AdamW in the same ``step``.

    The mask holds the schedule's sparsity s_t at every step: tau_t is the
    exact global k-th smallest S (k = floor(s_t N)), taken from the scores
    before every step t that is a multiple of ``mask_interval`` or an event
    of the schedule, and

    - ``relaxation="topk"``: the forward pass sees ``W * 1[S > tau_t]``,
      and S gets the straight-through gradient ``dL/dW' * W``;
    - ``relaxation="hard_concrete"``: in training the forward pass sees
      ``W * z``, z a hard-concrete sample (Louizos et al. 2018) with
      location ``log alpha = S - c_t``, temperature ``beta`` (2/3) and
      stretch ``(gamma, zeta)`` (-0.1, 1.1), and S gets z's reparametrized
      gradient; in eval mode the mask is ``1[S > tau_t]``. A gate is
      nonzero with probability ``sigmoid(log alpha - beta log(-gamma /
      zeta))``, and c_t is the offset at which these probabilities sum to
      the ``N - k`` weights the mask keeps (found by safeguarded Newton
      steps, to half a weight or 1e-6 N): the sampled masks hold the
      schedule's sparsity in expectation, the eval mask exactly, and no L0
      penalty is needed.

    S starts at ``|W| / mean|W|`` (the magnitude mask, on a scale of 1) and
    takes plain SGD steps normalised per tensor, ``S -= lr_S * g / rms(g)``,
    so that its only state is S itself: 4 bytes per prunable weight in fp32,
    2 with ``score_dtype=torch.bfloat16``. After t_e the mask is fixed (S no
    longer moves, and the mask is recomputed as ``1[S > tau]`` in each
    forward pass rather than stored) and the head trains on.

    Args:
        model: the model that owns ``weights``.
        weights: the prunable weights (frozen and masked).
        head: parameters trained with AdamW (``lr``, ``betas``, ``eps``,
            ``weight_decay``).
        target_sparsity: s_f; ``initial_sparsity`` (default: s_f) and
            ``initial_warmup_steps``, ``final_finetune_steps``,
            ``prune_interval`` as in ``MGPP`` (a cubic path from s_i to s_f).
        total_steps: optimizer steps of the run.
        score_lr: the scores' step size (the ``lr`` of their param group,
            so an LR scheduler scales it with the head's).
        mask_interval: steps between threshold updates.
        seed: of the hard-concrete samples.
        on_nonfinite: ``"raise"`` or ``"skip"`` (as in ``MGPP``).

    ``masks()`` gives the current masks (``1[S > tau_t]``), ``scores()`` the
    scores. ``state_dict()`` holds the head's AdamW state and the schedule
    position; the scores are in ``model.state_dict()`` (save both).
    """

    method = "adapt_by_pruning"

    def __init__(self, model, weights, head=(), *, target_sparsity, total_steps, relaxation="topk",
                 score_lr=1e-2, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 initial_sparsity=None, initial_warmup_steps=0, final_finetune_steps=0, prune_interval=10,
                 mask_interval=10, score_dtype=torch.float32, temperature=2.0 / 3.0, stretch=(-0.1, 1.1),
                 seed=0, on_nonfinite="raise"):
        check_adamw(lr, betas, eps, weight_decay)
        check_on_nonfinite(on_nonfinite, propagate=False)
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        check_number("score_lr", score_lr, lo=0.0, lo_open=True)
        check_number("temperature", temperature, lo=0.0, lo_open=True)
        if isinstance(mask_interval, bool) or not isinstance(mask_interval, int) or mask_interval < 1:
            raise ValueError(f"mask_interval must be an int >= 1, got {mask_interval!r}")
        if score_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"score_dtype must be torch.float32 or torch.bfloat16, got {score_dtype!r}")
        try:
            lo, hi = (float(x) for x in stretch)
        except (TypeError, ValueError):
            raise ValueError(f"stretch must be a pair (lo, hi), got {stretch!r}") from None
        if not (lo < 0.0 and hi > 1.0 and math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"stretch must have finite lo < 0 and hi > 1, got {stretch!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)) \
                or not 0.0 <= target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be a number in [0, 1), got {target_sparsity!r}")
        if initial_sparsity is None:
            initial_sparsity = target_sparsity
        self.schedule = Schedule(total_steps=total_steps, initial_warmup_steps=initial_warmup_steps,
                                 final_finetune_steps=final_finetune_steps, prune_interval=prune_interval,
                                 initial_sparsity=initial_sparsity, target_sparsity=target_sparsity,
                                 lambda_anneal=(1.0, 1.0))
        weights = list(weights)
        head = list(head)
        if not weights:
            raise ValueError("AdaptByPruning: 'weights' is empty: nothing to mask")
        owners = _owners(model, weights)
        ids = {id(w) for w in weights}
        # Every check before the model is touched: the weights are frozen
        # and parametrized below, which a later error must not leave behind.
        for i, p in enumerate(head):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"AdaptByPruning: head[{i}] must be a torch.Tensor, got {type(p).__name__}")
            if id(p) in ids:
                raise ValueError(f"AdaptByPruning: head[{i}] is also one of the masked weights")
            if not p.is_leaf:
                raise ValueError(f"AdaptByPruning: head[{i}] is not a leaf tensor; an optimizer "
                                 "can only update leaves")
            if p.dtype not in FLOAT_DTYPES or p.layout != torch.strided:
                raise TypeError(f"AdaptByPruning: head[{i}] is a {p.layout} {p.dtype} tensor; supported "
                                "are dense float32, bfloat16, float16")
        self.relaxation = relaxation
        self.temperature = float(temperature)
        self.stretch = (lo, hi)
        self.mask_interval = mask_interval
        self.seed = int(seed)
        self.on_nonfinite = on_nonfinite
        self.score_dtype = score_dtype
        self._gen = torch.Generator().manual_seed(self.seed)
        self._tau = -math.inf  # the exact k-th smallest S: the binary mask keeps S > tau
        self._hc_tau = -math.inf  # hard-concrete's offset c_t (see the class docstring)
        self._t = 0
        self._skipped = 0
        self._fixed = False
        with torch.no_grad():
            scale = torch.cat([w.detach().float().abs().reshape(-1) for w in weights]).mean().clamp_min(1e-30)
        self._masks_modules = []
        scores = []
        for (module, name), w in zip(owners, weights):
            w.requires_grad_(False)
            mask = _Mask(self, (w.detach().float().abs() / scale).to(score_dtype))
            parametrize.register_parametrization(module, name, mask, unsafe=True)
            self._masks_modules.append(mask)
            scores.append(mask.scores)
        self._weights = weights
        groups = [dict(params=scores, lr=float(score_lr), kind="scores")]
        if head:
            groups.append(dict(params=head, lr=float(lr), kind="head"))
        super().__init__(groups, dict(betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self._update_threshold(0)

    # -- the mask --------------------------------------------------------------
    def _scores(self):
        return [m.scores for m in self._masks_modules]

    @torch.no_grad()
    def _update_threshold(self, t):
        scores = self._scores()
        n = sum(s.numel() for s in scores)
        k = self.schedule.num_pruned(t, n)
        if k == 0:
            self._tau = self._hc_tau = -math.inf
            return
        flat = self._flat_scores()
        self._tau = float(torch.kthvalue(flat, k).values)
        if self.relaxation == "hard_concrete":
            self._hc_tau = _expected_keep_offset(flat, n - k, self._gate_shift(), start=self._tau)

    def _flat_scores(self):
        """Every score S in one fp32 CPU vector."""
        return torch.cat([s.detach().float().reshape(-1) for s in self._scores()]).cpu()

    def _gate_shift(self):
        """-beta log(-gamma / zeta): P(z > 0) = sigmoid(log alpha + this)."""
        lo, hi = self.stretch
        return -self.temperature * math.log(-lo / hi)

    def expected_sparsity(self):
        """The expected fraction of zero gates of a hard-concrete sample
        (training mode) under the current offset; for ``"topk"`` and after
        the mask is fixed, the sparsity of the binary mask."""
        if self.relaxation != "hard_concrete" or self._fixed:
            return self.sparsity()["overall"]
        flat = self._flat_scores()
        keep = torch.sigmoid(flat - self._hc_tau + self._gate_shift()).double().sum()
        return 1.0 - float(keep) / flat.numel()

    def masks(self):
        """The current keep-mask of every masked weight (bool)."""
        return [m.scores.detach() > self._tau for m in self._masks_modules]

    def scores(self):
        """The learned score S of every masked weight (new tensors)."""
        return [m.scores.detach().clone() for m in self._masks_modules]

    def pretrained_weights(self):
        """The frozen weights (the tensors themselves, never written)."""
        return list(self._weights)

    # -- the step --------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One step: SGD on the scores (up to t_e), AdamW on the head."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if grads and not bool(ops.all_finite(grads)):
            if self.on_nonfinite == "raise":
                raise FloatingPointError(
                    "AdaptByPruning: a gradient holds inf or NaN; nothing was changed (on_nonfinite='skip' "
                    "skips such steps)")
            self._skipped += 1
            return loss
        t, sch = self._t, self.schedule
        for group in self.param_groups:
            if group["kind"] == "scores":
                if t <= sch.t_e:
                    lr = float(group["lr"])
                    for s in group["params"]:
                        if s.grad is None:
                            continue
                        g = s.grad.float()
                        rms = g.pow(2).mean().sqrt()
                        if rms > 0:
                            s.sub_((g * (lr / rms)).to(s.dtype))
            else:
                self._adamw(group)
        if t == sch.t_e:
            self._update_threshold(t)
            self._fixed = True
        elif t < sch.t_e and ((t + 1) % self.mask_interval == 0 or sch.is_event(t + 1)):
            self._update_threshold(t + 1)
        self._t += 1
        return loss

    def _adamw(self, group):
        buckets, _ = adamw_buckets(self, group)
        for (_, dev, _, step), ps in buckets.items():
            ops.mgpp_step_(*adamw_lists(self, ps), [], torch.empty(0, dtype=torch.int64, device=dev),
                           **adamw_hyper(group, step), apply_prior=False)

    # -- accessors -------------------------------------------------------------
    @property
    def current_step(self):
        return self._t

    @property
    def mask_fixed(self):
        return self._fixed

    def sparsity(self):
        """Fraction of masked-out weights of the current mask, as
        ``PruningOptimizer.sparsity``: ``{"overall", "per_tensor"}`` (tensors
        named by their index)."""
        masks = self.masks()
        per = {f"weights[{i}]": 1.0 - int(m.sum()) / m.numel() for i, m in enumerate(masks)}
        overall = 1.0 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
        return {"overall": overall, "per_tensor": per}

    # -- checkpoints -------------------------------------------------------------
    def _hyper(self):
        return dict(method=self.method, schedule=self.schedule.as_dict(), relaxation=self.relaxation,
                    temperature=self.temperature, stretch=list(self.stretch), mask_interval=self.mask_interval,
                    seed=self.seed, score_dtype=str(self.score_dtype),
                    shapes=[list(w.shape) for w in self._weights])

    def __getstate__(self):
        """Everything but the hooks (``torch.optim.Optimizer`` keeps only
        defaults, state and groups). The masks are parametrizations of the
        model: copy or pickle the model and the learner together, e.g.
        ``copy.deepcopy((model, learner))``, so that they stay one."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_optimizer_")}

    def state_dict(self):
        sd = super().state_dict()
        record = json.dumps(dict(t=self._t, tau=self._tau, hc_tau=self._hc_tau, skipped=self._skipped,
                                 hyper=self._hyper(), fixed=self._fixed))
        for group in sd["param_groups"]:
            python_numbers(group)
            group["mgpp"] = record
        sd["generator"] = self._gen.get_state()
        return sd

    def load_state_dict(self, state_dict):
        """Restore the schedule position (load ``model.state_dict()``, which
        holds the scores, first: the fixed mask is rebuilt from them)."""
        state_dict = dict(state_dict)
        groups = state_dict.get("param_groups") or []
        if not groups or "mgpp" not in groups[0]:
            raise ValueError("AdaptByPruning.load_state_dict: the state dict has no 'mgpp' record")
        rec = json.loads(groups[0]["mgpp"])
        saved, mine = rec["hyper"], json.loads(json.dumps(self._hyper()))
        for key in sorted(set(saved) | set(mine)):
            if saved.get(key) != mine.get(key):
                raise ValueError(f"AdaptByPruning.load_state_dict: the checkpoint's {key} is {saved.get(key)!r}, "
                                 f"this learner's {mine.get(key)!r}")
        owner = "AdaptByPruning.load_state_dict"
        for key in ("t", "skipped"):
            record_field(owner, rec, key, "count")
        for key in ("tau", "hc_tau"):
            record_field(owner, rec, key, "number", default=0.0)
        record_field(owner, rec, "fixed", "bool")
        gen = state_dict.pop("generator", None)
        super().load_state_dict(state_dict)
        self._t, self._tau, self._skipped = rec["t"], float(rec["tau"]), rec["skipped"]
        if "hc_tau" in rec:
            self._hc_tau = float(rec["hc_tau"])
        elif self.relaxation == "hard_concrete" and not rec["fixed"]:
            # a checkpoint from before the offset was recorded: derive it
            # from the loaded scores at this step's sparsity
            flat = self._flat_scores()
            k = self.schedule.num_pruned(self._t, flat.numel())
            self._hc_tau = (_expected_keep_offset(flat, flat.numel() - k, self._gate_shift(), start=self._tau)
                            if k else -math.inf)
        if gen is not None:
            self._gen.set_state(gen)
        self._fixed = bool(rec["fixed"])


def _expected_keep_offset(scores, keep, shift, start, max_iter=100):
    """The offset c with sum_i sigmoid(scores_i - c + shift) = keep: the
    root of a decreasing function of c, by Newton steps kept inside a
    shrinking bracket (bisection where a step would leave it). Sums in
    float64; converged within half a weight or 1e-6 of the count."""
    tol = max(0.5, 1e-6 * scores.numel())
    lo = float(scores.min()) + shift - 60.0  # every probability ~1: the sum exceeds keep
    hi = float(scores.max()) + shift + 60.0  # every probability ~0: the sum is below keep
    c = min(max(start + shift, lo), hi)
    for _ in range(max_iter):
        p = torch.sigmoid(scores - c + shift)
        f = float(p.double().sum()) - keep
        if abs(f) <= tol:
            break
        if f > 0:  # too many kept: c must grow
            lo = c
        else:
            hi = c
        slope = float((p * (1 - p)).double().sum())
        step = c + f / slope if slope > 0 else math.nan
        c = step if lo < step < hi else 0.5 * (lo + hi)
    return c


def _owners(model, weights):
    """(module, attribute name) that holds each weight."""
    where = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                where.setdefault(id(p), (module, name))
    out = []
    for i, w in enumerate(weights):
        if id(w) not in where:
            raise ValueError(f"AdaptByPruning: weights[{i}] is not a parameter of the model")
        out.append(where[id(w)])
    return out
