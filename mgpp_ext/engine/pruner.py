"""``PruningOptimizer``: AdamW composed with a schedule, a score, a pattern
and an optional regulariser.

The class is thin: it keeps state and makes one fused kernel call per
(group, dtype, step) bucket. The math lives in the kernels (``csrc/``) and
in the reference (``mgpp_ext/reference.py``); validation, the inf/NaN
check, events, the select, distributed sums and checkpoints are the
engine's other files. A method (``mgpp_ext/methods/``) only chooses parts.
"""
from __future__ import annotations

import torch

from .. import ops
from .buckets import adamw_buckets, adamw_hyper, adamw_lists
from .checkpoint import Checkpoint
from .distributed import check_one_sharding, local, reduce_histogram, shard_groups
from .events import Events
from .nonfinite import NonfiniteCheck, PendingCheck
from .select import GlobalSelect
from .validation import check_adamw, check_on_nonfinite, check_param_group


class PruningOptimizer(Checkpoint, NonfiniteCheck, Events, torch.optim.Optimizer):
    """AdamW that prunes while it fine-tunes, made of named parts.

    Args:
        params: tensors, or param-group dicts. A group's ``"prune"`` key says
            whether its tensors are pruned; a group without it (or a plain
            iterable of tensors) prunes every tensor with ``ndim >= 2``.
        lr, betas, eps, weight_decay: AdamW's, per group.
        schedule: a ``Schedule`` (when to prune, to what sparsity).
        score: what is ranked (``mgpp_ext.scores``).
        pattern: which weights compete (``mgpp_ext.patterns``).
        regulariser: a term added to the gradient in the fused step
            (``mgpp_ext.regularisers``), or None.
        on_nonfinite: ``"raise"``, ``"skip"`` or ``"propagate"`` (see ``MGPP``).
    """

    #: Name of the method in checkpoints (a checkpoint of one method is
    #: refused by another). Set by every method.
    method = None

    def __init__(self, params, lr, betas, eps, weight_decay, *, schedule, score, pattern,
                 regulariser=None, on_nonfinite="raise"):
        check_adamw(lr, betas, eps, weight_decay)
        check_on_nonfinite(on_nonfinite)
        if self.method is None:
            raise TypeError(f"{type(self).__name__} must set the class attribute 'method'")
        pattern.check_target(schedule.target_sparsity)
        if regulariser is not None and hasattr(score, "fused_step"):
            raise TypeError(
                f"{type(self).__name__}: the score '{score.name}' accumulates inside its own fused step, "
                f"so it cannot be combined with the regulariser '{regulariser.name}'")
        self.schedule = schedule
        self.score = score
        self.pattern = pattern
        # Whether an event selects on the histogram of |w| that the fused
        # step builds (then the step fills it, and on CUDA the inf/NaN check
        # is read with the select's result).
        self._fused_select = (score.fused_histogram and pattern.uses_fused_histogram
                              and (regulariser is None or regulariser.fills_histogram))
        self.regulariser = regulariser
        self.on_nonfinite = on_nonfinite
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, prune=None)
        super().__init__(params, defaults)
        self._t = 0  # optimizer steps taken (t of the schedule: taken, not skipped)
        self._threshold = None  # tau of the last event, a 0-dim tensor
        self._last_k = 0
        self._events = 0
        self._skipped = 0
        self._select = GlobalSelect()
        # The device-side inf/NaN check of the last step, not yet read back
        # (see NonfiniteCheck), and whether checks are deferred that way:
        # None is automatic (on CUDA), True/False forces it (tests).
        self._pending = None
        self._defer_finite_check = None
        # Under "propagate": whether every step since the last check of the
        # weights was checked itself (then they can hold no inf/NaN the
        # steps let in, and the next check reads the gradients only).
        self._inputs_checked = False
        if not self._prunable():
            raise ValueError(
                f"{type(self).__name__}: the prunable set is empty (no group has prune=True and no tensor "
                "with ndim >= 2 in a group without a 'prune' key)"
            )
        self._shapes = [tuple(p.shape) for _, _, p in self._prunable()]
        pattern.bind(self)

    def __getstate__(self):
        """Everything but the hooks (as ``torch.optim.Optimizer``, which keeps
        only defaults, state and groups, so that a copy or an unpickled
        optimizer had no schedule, score or position). A deferred inf/NaN
        check is read first: a copy takes no pending GPU event with it."""
        self._settle()
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_optimizer_")}

    def set_total_steps(self, total_steps):
        """Set the run length before the first step (for trainers that know it late)."""
        self._settle()
        if self._t != 0:
            raise RuntimeError(f"{type(self).__name__}.set_total_steps: {self._t} steps were already taken")
        self.schedule = self._schedule_for(total_steps)

    def _schedule_for(self, total_steps):
        """This method's schedule over ``total_steps`` steps (the cubic
        schedule with every other setting kept; a method whose schedule is
        built otherwise overrides this)."""
        d = self.schedule.as_dict()
        if "total_steps" not in d:
            raise RuntimeError(f"{type(self).__name__}.set_total_steps: this method's schedule has no run length")
        d["total_steps"] = total_steps
        d["lambda_anneal"] = tuple(d["lambda_anneal"])
        return type(self.schedule)(**d)

    # -- groups and parameters ------------------------------------------------
    def add_param_group(self, param_group):
        group = check_param_group(type(self).__name__, param_group)
        if getattr(self, "_shapes", None) is not None:
            # After construction the prunable set is fixed (the schedule's N,
            # the checkpoint's shapes): a group that adds to it is refused
            # here, not at every later step.
            prune = group.get("prune", self.defaults.get("prune"))
            added = [i for i, p in enumerate(group["params"]) if self._is_pruned(p, {"prune": prune})]
            if added:
                raise ValueError(
                    f"{type(self).__name__}.add_param_group: params{added} would be pruned, but the prunable "
                    "set is fixed once the optimizer is built; add the group with prune=False (trained, "
                    "not pruned) or rebuild the optimizer with it")
        super().add_param_group(group)

    @staticmethod
    def _is_pruned(p, group):
        return group["prune"] if group["prune"] is not None else p.dim() >= 2

    def _prunable(self):
        """(group index, param index, param) of every prunable tensor, in order."""
        return [(gi, pi, p) for gi, g in enumerate(self.param_groups)
                for pi, p in enumerate(g["params"]) if self._is_pruned(p, g)]

    def _name(self, gi, pi):
        names = self.param_groups[gi].get("param_names")
        return names[pi] if names is not None else f"group{gi}.param{pi}"

    def _check_prunable(self, prunable):
        shapes = [tuple(p.shape) for p in prunable]
        if shapes != self._shapes:
            for i, (a, b) in enumerate(zip(shapes, self._shapes)):
                if a != b:
                    raise RuntimeError(
                        f"{type(self).__name__}: prunable parameter {i} changed shape from {b} to {a} after "
                        "the optimizer was built; rebuild the optimizer")
            raise RuntimeError(f"{type(self).__name__}: the set of prunable parameters changed; rebuild the optimizer")
        check_one_sharding(prunable, type(self).__name__)
        devices = {p.device for p in prunable}
        if len(devices) > 1:
            raise RuntimeError(
                f"{type(self).__name__}: all prunable parameters must be on one device for the global threshold, "
                f"found {sorted(map(str, devices))}")

    # -- the step -------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One step; returns the closure's loss if a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        prunable = [p for _, _, p in self._prunable()]
        self._check_prunable(prunable)
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        for g in grads:
            if g.is_sparse:
                # Before the inf/NaN check, whose norm has no sparse form.
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        if not grads:
            # As torch.optim.AdamW: a step without any gradient changes
            # nothing, and it is not counted (no schedule step, no event).
            return loss
        self._settle()
        sch, t = self.schedule, self._t
        event = sch.is_event(t)
        device = local(prunable[0]).device
        if self.on_nonfinite == "propagate":
            gate = None  # as torch.optim.AdamW: no per-step check
            ranking = self._ranking_at(t, event)
            if ranking is not None:
                self._check_event_inputs(prunable, t, ranking)
            self._inputs_checked = ranking is not None
        else:
            gate = self._finite_gate(event, device)
            if gate is None and not self._grads_finite(device):
                return loss

        final = t > sch.t_e
        self.score.observe(self, t, event)
        reg = self.regulariser
        if reg is not None:
            reg.before_step(self, t)
        want_hist = event and self._fused_select
        hist = self._event_histograms(prunable, device, gate) if want_hist else None
        stepped = []
        no_hist = torch.empty(0, dtype=torch.int64, device=device)
        reg_kw = self._regulariser_args(t)

        for group in self.param_groups:
            buckets, counted = adamw_buckets(self, group, kind=lambda p: self._is_pruned(p, group))
            stepped += counted
            for (pruned, dev, _, step), ps in buckets.items():
                owner = self._step_owner(t) if pruned and not final else None
                if owner is not None:
                    # The regulariser's or the score's own op over the shared AdamW body.
                    owner.fused_step(self, ps, group, step, t, gate)
                    continue
                use_hist = pruned and want_hist
                kw = dict(reg_kw, apply_prior=pruned and reg_kw["apply_prior"])
                ops.mgpp_step_(
                    *adamw_lists(self, ps),
                    [local(self.state[p]["mask"]) for p in ps] if (pruned and final) else [],
                    hist.level0 if use_hist else (no_hist if dev == device else torch.empty(0, dtype=torch.int64, device=dev)),
                    **adamw_hyper(group, step), apply_if=gate, **(hist.kernel_args() if use_hist else {}), **kw)

        if event:
            self._fold_missing(prunable, hist, device)
            if not self._prune_event(t, prunable, hist):
                # The gate read with the select's result failed: the kernel
                # wrote nothing, and nothing after it was applied.
                self._take_back(stepped)
                self._refuse_nonfinite(None)
                return loss
        elif gate is not None:
            self._pending = PendingCheck.start(gate, t, stepped)
        if reg is not None:
            reg.after_step(self, t)
        self._t += 1
        return loss

    def _step_owner(self, t):
        """The part whose own op takes step t's pruned buckets, or None
        (then ``mgpp_step_`` does)."""
        reg = self.regulariser
        if reg is not None and reg.owns_step(t):
            return reg
        return self.score if self.score.owns_step(t) else None

    def _regulariser_args(self, t):
        """The fused step's regulariser arguments for step t."""
        if self.regulariser is None:
            return dict(apply_prior=False)
        return self.regulariser.step_args(self.schedule, t)

    # -- distributed ----------------------------------------------------------
    def _shard_groups(self):
        """Process groups across which the prunable tensors are split."""
        return shard_groups(p for _, _, p in self._prunable())

    def _reduce_histogram(self, hist, n_total):
        """Sum ``hist`` over the ranks that hold pieces of the model, in place."""
        reduce_histogram(hist, n_total, self._shard_groups())

    # -- the select's predictions (speed only; tests steer them) --------------
    @property
    def _hist_window(self):
        return self._select.window

    @_hist_window.setter
    def _hist_window(self, window):
        self._select.window = window

    @property
    def _bin_guess(self):
        return self._select.bin_guess

    @_bin_guess.setter
    def _bin_guess(self, guess):
        self._select.bin_guess = guess

    @property
    def _window_misses(self):
        return self._select.window_misses

    @property
    def _level1_passes(self):
        return self._select.level1_passes

    # -- what the schedule is doing -------------------------------------------
    @property
    def current_step(self) -> int:
        """Optimizer steps taken so far (t of the next step)."""
        self._settle()
        return self._t

    @property
    def current_target_sparsity(self) -> float:
        """s_t of the most recent step (0 before the first event)."""
        self._settle()
        return self.schedule.sparsity(max(self._t - 1, 0)) if self._t > self.schedule.t_s else 0.0

    @property
    def current_lambda(self) -> float:
        """lambda_t the next step will use (0 once the prior is off, and
        always 0 for methods without the prior)."""
        self._settle()
        if self.regulariser is None or not hasattr(self.regulariser, "current_lambda"):
            return 0.0
        return self.regulariser.current_lambda(self.schedule, self._t)

    @property
    def last_threshold(self):
        """tau of the most recent pruning event (None before any pruning)."""
        return None if self._threshold is None else float(self._threshold)

    @property
    def mask_fixed(self) -> bool:
        """True once the final mask is in force."""
        self._settle()
        return self._t > self.schedule.t_e

    def schedule_state(self) -> dict:
        """Step, phase, target sparsity, lambda, last threshold and counters."""
        self._settle()
        return dict(step=self._t, phase=self.schedule.phase(self._t),
                    target_sparsity=self.current_target_sparsity, lambda_t=self.current_lambda,
                    threshold=self.last_threshold, last_k=self._last_k, events=self._events,
                    skipped_steps=self._skipped)

    @torch.no_grad()
    def sparsity(self) -> dict:
        """Fraction of exact zeros: ``{"overall": float, "per_tensor": {name: float}}``."""
        entries = self._prunable()
        counts = torch.tensor([int((local(p) == 0).sum().item()) for _, _, p in entries],
                              dtype=torch.int64, device=local(entries[0][2]).device)
        for group in self._shard_groups():
            torch.distributed.all_reduce(counts, group=group)
        per, zeros, total = {}, 0, 0
        for (gi, pi, p), z in zip(entries, counts.tolist()):
            per[self._name(gi, pi)] = z / max(p.numel(), 1)
            zeros += z
            total += p.numel()
        return {"overall": zeros / max(total, 1), "per_tensor": per}
