"""The baselines of ALGORITHM.md section 2, on MGPP's machinery.

Both share MGPP's cubic schedule, event steps, fused AdamW kernel, exact
global radix select (histograms all-reduced across FSDP2 shards), final-mask
phase and checkpoints, so a comparison between the three methods differs in
the method alone.

- ``GMP``: gradual magnitude pruning, i.e. MGPP with the prior switched off.
- ``PLATON``: the global threshold is taken on an importance score
  (upper confidence bound of |theta * grad|) instead of on |theta|.
"""
from __future__ import annotations

import torch

from . import ops
from .optimizer import MGPP, _local


class GMP(MGPP):
    """Gradual magnitude pruning (Zhu & Gupta) with AdamW.

    The same schedule, events and exact global magnitude threshold as
    ``MGPP``, without the prior gradient. Arguments as in ``MGPP``, minus
    the prior's (``num_train_examples``, ``lambda_mix``, ``sigma0_sq``,
    ``sigma1_sq``, ``lambda_anneal``).
    """

    method = "gmp"
    _prior_on = False
    # As in ALGORITHM.md, a weight pruned at one event may regrow before the
    # next (Zhu & Gupta keep it masked); the final mask is fixed after t_e.

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 total_steps, target_sparsity=0.9, initial_sparsity=0.0,
                 initial_warmup_steps=0, final_finetune_steps=0, prune_interval=100,
                 on_nonfinite="raise"):
        super().__init__(params, lr, betas, eps, weight_decay, total_steps=total_steps,
                         num_train_examples=1, target_sparsity=target_sparsity,
                         initial_sparsity=initial_sparsity, initial_warmup_steps=initial_warmup_steps,
                         final_finetune_steps=final_finetune_steps, prune_interval=prune_interval,
                         lambda_anneal=(1.0, 1.0), on_nonfinite=on_nonfinite)

    @property
    def current_lambda(self) -> float:
        """Always 0: there is no prior."""
        return 0.0

    def _hyper(self):
        return dict(method=self.method, schedule=self.schedule.as_dict())


class PLATON(MGPP):
    """PLATON (Zhang et al. 2022): prune by the upper confidence bound of importance.

    Importance I = |theta * grad| (the weight and the loss gradient before
    the update) is averaged over a window of ``prune_interval`` steps. At
    each window end (every multiple of ``prune_interval`` up to t_e, and
    every event step)::

        Ibar <- b1 * Ibar + (1 - b1) * I
        U    <- b2 * U    + (1 - b2) * |I - Ibar|
        score = Ibar * U

    and at an event the ``floor(s_t * N)`` weights with the smallest score
    (ties at the threshold included) are zeroed. Everything else (AdamW,
    schedule, final mask) is MGPP's, without the prior.

    A step in which a weight has no gradient adds 0 to its window (the
    window mean still divides by the window's length). ``last_threshold``
    is the threshold on the score, not on |theta|.

    Args: as ``GMP``, plus ``importance_betas=(b1, b2)`` (the paper's
    defaults 0.85 and 0.95). Memory: three fp32 tensors per prunable weight
    (window sum, Ibar, U) on top of AdamW's state, freed once the final mask
    is fixed.
    """

    method = "platon"
    _prior_on = False
    _magnitude_scores = False
    _fp32_state_keys = ("ipt_sum", "ipt_bar", "ipt_unc")

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 total_steps, target_sparsity=0.9, initial_sparsity=0.0,
                 initial_warmup_steps=0, final_finetune_steps=0, prune_interval=100,
                 importance_betas=(0.85, 0.95), on_nonfinite="raise"):
        if not (isinstance(importance_betas, (tuple, list)) and len(importance_betas) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0
                        for b in importance_betas)):
            raise ValueError(f"importance_betas must be two numbers in [0, 1), got {importance_betas!r}")
        self.importance_betas = tuple(float(b) for b in importance_betas)
        super().__init__(params, lr, betas, eps, weight_decay, total_steps=total_steps,
                         num_train_examples=1, target_sparsity=target_sparsity,
                         initial_sparsity=initial_sparsity, initial_warmup_steps=initial_warmup_steps,
                         final_finetune_steps=final_finetune_steps, prune_interval=prune_interval,
                         lambda_anneal=(1.0, 1.0), on_nonfinite=on_nonfinite)
        self._window = 0  # steps accumulated in the current window

    @property
    def current_lambda(self) -> float:
        """Always 0: there is no prior."""
        return 0.0

    def _hyper(self):
        return dict(method=self.method, schedule=self.schedule.as_dict(),
                    importance_betas=list(self.importance_betas))

    def _extra_record(self):
        return {"window": self._window}

    def _load_extra_record(self, extra):
        self._window = int(extra.get("window", 0))

    def _score_state(self, p):
        state = self.state[p]
        if "ipt_sum" not in state:
            for key in ("ipt_sum", "ipt_bar", "ipt_unc"):
                state[key] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        return state

    def scores(self):
        """The current score Ibar * U of every prunable tensor (new tensors)."""
        if self.mask_fixed:
            raise RuntimeError("PLATON.scores: the final mask is fixed and the scores were freed")
        out = []
        for _, _, p in self._prunable():
            st = self._score_state(p)
            out.append(st["ipt_bar"] * st["ipt_unc"])
        return out

    def _observe_gradients(self, t, event):
        sch = self.schedule
        if t > sch.t_e:
            return  # the final mask is fixed: no more scores needed
        for _, _, p in self._prunable():
            st = self._score_state(p)
            if p.grad is not None:
                st["ipt_sum"].add_((p.detach().float() * p.grad.float()).abs_())
        self._window += 1
        if event or t % sch.prune_interval == 0:
            b1, b2 = self.importance_betas
            for _, _, p in self._prunable():
                st = self._score_state(p)
                ipt = st["ipt_sum"].div_(self._window)
                # Products rounded before the sum, as the formula reads (and
                # the reference computes it): add_(x, alpha=a) would fuse them.
                st["ipt_bar"].mul_(b1).add_(ipt * (1.0 - b1))
                st["ipt_unc"].mul_(b2).add_((ipt - st["ipt_bar"]).abs_().mul_(1.0 - b2))
                st["ipt_sum"].zero_()
            self._window = 0

    def _prune_k(self, local, k, n_total, hist, want_masks):
        scores = [_local(s) for s in self.scores()]
        sel = self._global_select(scores, k, n_total)
        tau = ops.threshold_from_select_state(sel)
        masks = []
        for p, s in zip(local, scores):
            keep = s > tau  # ties at the threshold are pruned, as for |w|
            p.masked_fill_(~keep, 0.0)
            masks.append(keep)
        self._threshold = tau
        return masks if want_masks else []

    def _prune_event(self, t, prunable, hist):
        if not super()._prune_event(t, prunable, hist):
            return False
        if t == self.schedule.t_e:  # the scores are not needed once the mask is fixed
            for p in prunable:
                for key in self._fp32_state_keys:
                    self.state[p].pop(key, None)
        return True
