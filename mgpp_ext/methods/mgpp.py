"""``MGPP``: AdamW + mixture Gaussian prior + cubic schedule + global threshold.

The method of Zhang, Sun & Liang (arXiv 2411.00969), as a composition of
the engine's parts: the cubic ``Schedule``, the ``Magnitude`` score, the
``GlobalPattern`` and the ``MixturePrior`` regulariser fused into the step.
"""
from __future__ import annotations

from ..engine import PruningOptimizer
from ..engine.validation import check_adamw, check_on_nonfinite
from ..patterns import NMPattern
from ..regularisers import MixturePrior
from ..schedule import Schedule
from ..scores import Magnitude


class MGPP(PruningOptimizer):
    """AdamW that prunes while it fine-tunes (mixture Gaussian prior pruning).

    Every step adds the gradient of the spike-and-slab prior
    ``lambda_t N(0, sigma1_sq) + (1 - lambda_t) N(0, sigma0_sq)`` (scaled by
    ``1/num_train_examples``) to the gradient of each prunable weight, then
    takes an AdamW step. At the pruning events of the cubic schedule it finds
    one exact global magnitude threshold over all prunable weights and zeroes
    every weight at or below it; after the last event the mask is fixed.

    Args:
        params: tensors, or param-group dicts. A group's ``"prune"`` key says
            whether its tensors are pruned; a group without it (or a plain
            iterable of tensors) prunes every tensor with ``ndim >= 2``.
            ``mgpp_ext.prunable_param_groups(model)`` builds the usual groups.
        lr, betas, eps, weight_decay: AdamW's, per group.
        total_steps: optimizer steps of the whole run.
        num_train_examples: n, the training-set size (the prior is a
            per-example term next to the mean minibatch loss).
        target_sparsity, initial_sparsity: s_f and s_i of the cubic schedule.
        initial_warmup_steps: t_s, steps before the first pruning event.
        final_finetune_steps: steps after the last event, with a fixed mask.
        prune_interval: events between t_s and t_e fall on multiples of it.
        lambda_mix: lambda, weight of the wide (slab) component.
        sigma0_sq, sigma1_sq: variances of the spike and the slab.
        lambda_anneal: (alpha_i, alpha_f); lambda_t = lambda * alpha_t with
            alpha linear from alpha_i at t_s to alpha_f at t_e.
        on_nonfinite: ``"raise"`` (default) raises on an inf/NaN gradient
            before anything is changed; ``"skip"`` skips such a step without
            advancing the schedule. (``torch.amp.GradScaler`` skips those
            steps itself before calling ``step``.) With FSDP2 only the rank
            whose gradient shard holds the inf/NaN raises, so there
            ``"raise"`` is fatal to the run; ``"skip"`` keeps the ranks in step.
            On CUDA a step between pruning events does not wait for its own
            check: the result gates the fused kernel on the device (a failed
            check changes nothing) and is read back by the next call to
            ``step``, ``state_dict`` or a schedule accessor (by then it has
            long arrived), which then raises or counts the skip. A pruning event reads it
            with the threshold's bin, its one host read, and raises or skips
            within the call, as CPU steps do. ``"propagate"`` checks no
            step, as ``torch.optim.AdamW``: an inf/NaN gradient reaches the
            weights it touches. Only the steps that rank weights are
            checked (pruning events here; also ADMM's global projections:
            gradients, weights, scores and the regulariser's state, before
            the step changes anything), and raise, since an inf/NaN would
            corrupt a threshold over every weight. An n:m ranking (SR-STE's
            mask updates, ADMM's n:m projections) is not checked: within a
            group inf and NaN rank above every number, so they are kept. Use it
            where the gradients are checked already (``GradScaler``, or
            ``clip_grad_norm_(..., error_if_nonfinite=True)``): it saves
            the check's read of every gradient, about a seventh of the
            step's memory traffic.
        pattern: None (default) prunes with one global threshold over all
            prunable weights; ``"n:m"`` (e.g. ``"2:4"``, or a
            ``mgpp_ext.patterns.NMPattern``) ends in an exact n:m mask along
            each tensor's input dim, ``target_sparsity`` must then be 1 - n/m,
            and each event prunes the schedule's k among the weights outside
            each group's n largest (see ``NMPattern``); ``"row"``: every
            output row drops its own floor(s_t L) smallest (``RowPattern``);
            ``"tensor"``: every tensor its own floor(s_t N_i)
            (``TensorPattern``).

    Distributed runs need no option. Under DDP every rank holds the whole
    model and takes the same step. FSDP2 (DTensor) parameters carry their
    device mesh: each rank steps its local shard with the fused kernel; on
    event steps the two 65,536-bin histograms of the radix select are
    all-reduced, so every rank finds the same exact global threshold. They travel as int32 (256 KiB each, 512 KiB per event) while
    the model has fewer than 2^31 prunable weights (no count can exceed
    that), as int64 (1 MiB per event) above. That is the only extra
    communication, whatever the model size. Only ``on_nonfinite="skip"``
    adds one 4-byte all-reduce per step, so that all ranks skip together;
    under ``"raise"`` the rank that sees an inf/NaN gradient raises (and
    ``torchrun`` stops the job).
    """

    method = "mgpp"

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 total_steps, num_train_examples,
                 target_sparsity=0.9, initial_sparsity=0.0,
                 initial_warmup_steps=0, final_finetune_steps=0, prune_interval=100,
                 lambda_mix=0.1, sigma0_sq=1e-10, sigma1_sq=0.05, lambda_anneal=(1.0, 0.001),
                 on_nonfinite="raise", pattern=None):
        check_adamw(lr, betas, eps, weight_decay)
        prior = MixturePrior(num_train_examples, sigma0_sq, sigma1_sq)
        check_on_nonfinite(on_nonfinite)
        schedule = Schedule(
            total_steps=total_steps, initial_warmup_steps=initial_warmup_steps,
            final_finetune_steps=final_finetune_steps, prune_interval=prune_interval,
            initial_sparsity=initial_sparsity, target_sparsity=target_sparsity,
            lambda_mix=lambda_mix, lambda_anneal=lambda_anneal)
        super().__init__(params, lr, betas, eps, weight_decay, schedule=schedule, score=Magnitude(),
                         pattern=NMPattern.parse(pattern), regulariser=prior, on_nonfinite=on_nonfinite)

    @property
    def num_train_examples(self):
        return self.regulariser.num_train_examples

    @property
    def sigma0_sq(self):
        return self.regulariser.sigma0_sq

    @property
    def sigma1_sq(self):
        return self.regulariser.sigma1_sq
