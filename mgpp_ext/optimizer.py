"""``MGPP``: AdamW + mixture Gaussian prior + cubic schedule + global threshold.

The class is thin: it validates, keeps state, and makes one fused kernel
call per (group, dtype) bucket. The math lives in the kernels
(``csrc/``) and in the reference (``mgpp_ext/reference.py``).
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import NamedTuple, Optional

import torch

from . import ops
from .schedule import Schedule

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Smallest variance whose reciprocal (and half-reciprocal) is finite in fp32.
_MIN_VARIANCE = 1e-38


class MGPP(torch.optim.Optimizer):
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
            within the call, as CPU steps do.

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

    #: Name of the method in checkpoints (a checkpoint of one method is
    #: refused by another).
    method = "mgpp"
    #: Whether the spike-and-slab prior gradient is added (GMP turns it off).
    _prior_on = True
    #: Whether events threshold |w| (PLATON thresholds its own score).
    _magnitude_scores = True
    #: Per-param state kept in fp32 whatever the param dtype.
    _fp32_state_keys = ()

    def __init__(self, params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, *,
                 total_steps, num_train_examples,
                 target_sparsity=0.9, initial_sparsity=0.0,
                 initial_warmup_steps=0, final_finetune_steps=0, prune_interval=100,
                 lambda_mix=0.1, sigma0_sq=1e-10, sigma1_sq=0.05, lambda_anneal=(1.0, 0.001),
                 on_nonfinite="raise"):
        _check_number("lr", lr, lo=0.0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            _check_number(f"betas[{i}]", b, lo=0.0, hi=1.0, hi_open=True)
        _check_number("eps", eps, lo=0.0, lo_open=True)
        _check_number("weight_decay", weight_decay, lo=0.0)
        _check_number("num_train_examples", num_train_examples, lo=0.0, lo_open=True)
        _check_number("sigma0_sq", sigma0_sq, lo=0.0, lo_open=True)
        _check_number("sigma1_sq", sigma1_sq, lo=0.0, lo_open=True)
        if sigma0_sq < _MIN_VARIANCE:
            raise ValueError(
                f"sigma0_sq must be >= {_MIN_VARIANCE} so that 1/sigma0_sq is finite in float32, "
                f"got {sigma0_sq}")
        if not sigma0_sq < sigma1_sq:
            raise ValueError(
                f"sigma0_sq must be smaller than sigma1_sq (spike narrower than slab), "
                f"got sigma0_sq={sigma0_sq}, sigma1_sq={sigma1_sq}"
            )
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        self.schedule = Schedule(
            total_steps=total_steps, initial_warmup_steps=initial_warmup_steps,
            final_finetune_steps=final_finetune_steps, prune_interval=prune_interval,
            initial_sparsity=initial_sparsity, target_sparsity=target_sparsity,
            lambda_mix=lambda_mix, lambda_anneal=tuple(lambda_anneal))
        self.num_train_examples = float(num_train_examples)
        self.sigma0_sq = float(sigma0_sq)
        self.sigma1_sq = float(sigma1_sq)
        self.on_nonfinite = on_nonfinite
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, prune=None)
        super().__init__(params, defaults)
        self._t = 0  # optimizer steps taken (ALGORITHM.md's t)
        self._threshold = None  # tau of the last event, a 0-dim tensor
        self._last_k = 0
        self._events = 0
        self._skipped = 0
        # Level-0 window and predicted threshold bin of the next event (see
        # _bin_and_next_window); speed only, never the result, so they are
        # not checkpointed.
        self._hist_window = ops.FULL_WINDOW
        self._bin_guess = -1
        self._window_misses = 0
        self._level1_passes = 0
        # The device-side inf/NaN check of the last step, not yet read back
        # (see _finite_gate), and whether checks are deferred that way: None
        # is automatic (on CUDA), True/False forces it (tests).
        self._pending = None
        self._defer_finite_check = None
        if not self._prunable():
            raise ValueError(
                f"{type(self).__name__}: the prunable set is empty (no group has prune=True and no tensor "
                "with ndim >= 2 in a group without a 'prune' key)"
            )
        self._shapes = [tuple(p.shape) for _, _, p in self._prunable()]

    def set_total_steps(self, total_steps):
        """Set the run length before the first step (for trainers that know it late)."""
        self._settle()
        if self._t != 0:
            raise RuntimeError(f"{type(self).__name__}.set_total_steps: {self._t} steps were already taken")
        d = self.schedule.as_dict()
        d["total_steps"] = total_steps
        d["lambda_anneal"] = tuple(d["lambda_anneal"])
        self.schedule = Schedule(**d)

    # -- groups and parameters ------------------------------------------------
    def add_param_group(self, param_group):
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if params and all(isinstance(p, tuple) and len(p) == 2 for p in params):
            # named_parameters(), as torch.optim accepts: keep the names.
            param_group = dict(param_group)
            param_group.setdefault("param_names", [n for n, _ in params])
            params = [p for _, p in params]
            param_group["params"] = params
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{type(self).__name__}: params[{i}] must be a torch.Tensor, got {type(p).__name__}")
            if p.layout != torch.strided:
                raise ValueError(f"{type(self).__name__}: params[{i}] is a {p.layout} tensor; only dense tensors are supported")
            if p.dtype not in _FLOAT_DTYPES:
                raise TypeError(
                    f"{type(self).__name__}: params[{i}] has dtype {p.dtype}; supported are float32, bfloat16, float16"
                )
        prune = param_group.get("prune", None)
        if prune is not None and not isinstance(prune, bool):
            raise TypeError(f"{type(self).__name__}: a param group's 'prune' must be a bool, got {prune!r}")
        names = param_group.get("param_names")
        if names is not None and len(names) != len(params):
            raise ValueError(
                f"{type(self).__name__}: 'param_names' has {len(names)} names for {len(params)} params"
            )
        super().add_param_group(param_group)

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

    # -- the step -------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One MGPP step; returns the closure's loss if a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        prunable = [p for _, _, p in self._prunable()]
        self._check_prunable(prunable)
        self._settle()
        sch, t = self.schedule, self._t
        event = sch.is_event(t)
        device = _local(prunable[0]).device
        gate = self._finite_gate(event, device)
        if gate is None and not self._grads_finite(device):
            return loss

        final = t > sch.t_e
        self._observe_gradients(t, event)
        want_hist = event and self._magnitude_scores
        hist = self._event_histograms(prunable, device, gate) if want_hist else None
        stepped = []
        no_hist = torch.empty(0, dtype=torch.int64, device=device)
        prior_kw = dict(num_examples=self.num_train_examples, lambda_mix=sch.lambda_at(t),
                        sigma0_sq=self.sigma0_sq, sigma1_sq=self.sigma1_sq)

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            buckets = OrderedDict()
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MGPP does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0 or "exp_avg" not in state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                stepped.append(p)
                pruned = self._is_pruned(p, group)
                key = (pruned, _local(p).device, p.dtype, int(state["step"].item()))
                buckets.setdefault(key, []).append(p)
            for (pruned, dev, _, step), ps in buckets.items():
                use_hist = pruned and want_hist
                ops.mgpp_step_(
                    [_local(p) for p in ps], [_local(p.grad) for p in ps],
                    [_local(self.state[p]["exp_avg"]) for p in ps],
                    [_local(self.state[p]["exp_avg_sq"]) for p in ps],
                    [_local(self.state[p]["mask"]) for p in ps] if (pruned and final) else [],
                    hist.level0 if use_hist else (no_hist if dev == device else torch.empty(0, dtype=torch.int64, device=dev)),
                    lr=_as_float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"], step=step,
                    apply_prior=pruned and self._prior_on and sch.prior_active(t),
                    apply_if=gate, **(hist.kernel_args() if use_hist else {}), **prior_kw)

        if event:
            missing = [p for p in prunable if p.grad is None]
            if missing and want_hist:  # unchanged this step, but they still count in the threshold
                full = torch.zeros_like(hist.level0)
                ops.abs_histogram_([_local(p) for p in missing], ops.new_select_state(1, device), full, 0)
                _fold_into_window(full, hist.level0, hist.window)
            if not self._prune_event(t, prunable, hist):
                # The gate read with the select's result failed: the kernel
                # wrote nothing, and nothing after it was applied.
                self._take_back(stepped)
                self._refuse_nonfinite(None)
                return loss
        elif gate is not None:
            self._pending = _PendingCheck.start(gate, t, stepped)
        self._t += 1
        return loss

    def _defers_finite_check(self, device):
        if type(self)._observe_gradients is not MGPP._observe_gradients:
            return False  # scores would take in the gradients before the check is known
        if self._defer_finite_check is not None:
            return bool(self._defer_finite_check)
        return device.type == "cuda"

    def _finite_gate(self, event, device):
        """The inf/NaN check left on the device: a one-element bool tensor
        that gates the fused kernel. Between pruning events it is read back
        by the next call (``_settle``), so that such a step does not wait for
        the GPU to finish it; on an event it is read together with the
        select's result, the event's one host read. None when the check is
        read at once instead: on CPU, for methods that observe gradients or
        do not select on |w|, and when gradients live on several devices."""
        if not self._defers_finite_check(device) or (event and not self._magnitude_scores):
            return None
        if any(_local(p.grad).device != device for g in self.param_groups for p in g["params"]
               if p.grad is not None):
            return None
        return self._finite_flag(device)

    def _finite_flag(self, device):
        """Whether every gradient is finite, as a one-element bool tensor on
        ``device`` (no host read), or None when no param has a gradient.

        Under "skip" every rank must take or skip the step together, so the
        flag is the minimum over the shard group; under "raise" the rank
        that sees the inf/NaN raises on its own, so a clean step costs no
        communication."""
        by_device = {}
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    grad = _local(p.grad)
                    by_device.setdefault(grad.device, []).append(grad)
        if not by_device:
            return None
        oks = [ops.all_finite(gs).to(device) for gs in by_device.values()]
        ok = oks[0] if len(oks) == 1 else torch.stack(oks).all()
        groups = self._shard_groups() if self.on_nonfinite == "skip" else []
        if groups:
            flag = ok.to(torch.int32).reshape(1)
            for group in groups:
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=group)
            ok = flag.bool()
        return ok

    def _settle(self):
        """Read back the deferred check of the previous step (see
        ``_finite_gate``). If it failed, the kernel changed nothing on the
        device; here the host takes back its count of that step, then
        raises or counts the skip as ``on_nonfinite`` says."""
        pending, self._pending = self._pending, None
        if pending is None or pending.passed():
            return
        self._take_back(pending.stepped)
        self._t -= 1
        self._refuse_nonfinite(pending.t)

    def _take_back(self, stepped):
        """Undo the host's count of a step whose gate failed on the device."""
        for p in stepped:
            state = self.state[p]
            state["step"] -= 1
            if int(state["step"].item()) == 0:
                # The step created the moments: as if it had never been
                # taken. Anything else (a final mask) stays.
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    del state[key]
                if not state:
                    del self.state[p]

    def _event_histograms(self, prunable, device, gate):
        """The histograms an event's fused pass fills: level 0 in the window
        predicted by the last event and, when that event also predicted the
        threshold's bin, the level-1 histograms of that bin and its two
        neighbours (skipped when a prunable tensor has no gradient, since the
        fused pass would not see it, and for bf16 weights, which never need
        a level-1 pass). ``gate``: the step's device-side inf/NaN check, or
        None."""
        level0 = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
        lo, hi = self._hist_window
        lo1 = self._bin_guess - 1
        if self._bin_guess < 0 or not (lo < lo1 and lo1 + 2 < hi) or _low_bits_zero(prunable) \
                or any(p.grad is None for p in prunable):
            return _EventHist(level0, self._hist_window, None, 0, gate)
        level1 = torch.zeros(3 * ops.HIST_BINS, dtype=torch.int64, device=device)
        return _EventHist(level0, self._hist_window, level1, lo1, gate)

    def _prune_event(self, t, prunable, hist):
        """Prune to the schedule's k at step ``t``. Returns False, having
        changed nothing, when the step's device-side gate (``hist.gate``)
        turns out to have failed."""
        sch = self.schedule
        n_total = sum(p.numel() for p in prunable)
        k = sch.num_pruned(t, n_total)
        final_event = t == sch.t_e
        local = [_local(p) for p in prunable]
        if k > 0:
            masks = self._prune_k(local, k, n_total, hist, final_event)
            if masks is None:
                return False
        else:
            if hist is not None and hist.gate is not None and not bool(hist.gate.reshape(()).item()):
                return False
            masks = [torch.ones_like(p, dtype=torch.bool) for p in local] if final_event else []
        self._last_k = k
        self._events += 1
        if final_event:
            for p, m in zip(prunable, masks):
                self.state[p]["mask"] = _like_param(m, p)
        return True

    def _prune_k(self, local, k, n_total, hist, want_masks):
        """Zero the weights at or below the k-th smallest score over ``local``
        (this rank's pieces), set the threshold, and return the keep-masks
        when ``want_masks`` (else []). MGPP's score is |w|; ``hist`` holds the
        histograms of it that the fused step built (an ``_EventHist``).
        None when the step's gate failed (nothing changed)."""
        sel = self._global_select(local, k, n_total, hist, predict=True)
        if sel is None:
            return None
        masks = [torch.empty_like(p, dtype=torch.bool) for p in local] if want_masks else []
        ops.apply_threshold_(local, sel, masks)
        self._threshold = ops.threshold_from_select_state(sel)
        return masks

    def _observe_gradients(self, t, event):
        """Called once per taken step, after the finite check and before the
        update, with the gradients and weights of step ``t``. MGPP needs
        nothing here; importance-score methods accumulate their scores."""

    def _global_select(self, local, k, n_total, hist=None, predict=False):
        """Exact radix select of the k-th smallest |x| over ``local`` (this
        rank's pieces of every scored tensor), summed over the shard group.

        ``hist`` (an ``_EventHist``) holds what the fused step already built:
        the level-0 histogram with its keys clamped to a window and perhaps
        the level-1 histograms of the predicted bins. If the k-th element
        falls in an edge bin of the window, the window missed: the level-0
        histogram is rebuilt in full with one more pass. If it falls in a
        predicted bin, that bin's level-1 histogram is used and the level-1
        pass is skipped. Either way the result never depends on the
        predictions. With ``predict``, the next event's window and bin are
        predicted from this one's histogram. Returns the select state (see
        ``ops.new_select_state``), or None if ``hist.gate`` (the step's
        device-side inf/NaN check, read with the bin) failed: then the
        histograms were meaningless and nothing was changed."""
        device = local[0].device
        sel = ops.new_select_state(k, device)
        if hist is None:
            level0 = torch.zeros(ops.HIST_BINS, dtype=torch.int64, device=device)
            ops.abs_histogram_(local, sel, level0, 0)
            hist = _EventHist(level0, ops.FULL_WINDOW, None, 0)
        level0, window = hist.level0, hist.window
        self._reduce_histogram(level0, n_total)
        ops.select_bin_(level0, sel, 0)
        level1 = None
        if window != ops.FULL_WINDOW or predict or hist.gate is not None:
            # One small device-to-host read per event: the bin, the next
            # event's window predicted from this histogram and the gate,
            # together.
            nxt = self._next_k(n_total) if predict else 0
            b, nxt_window, guess, ok = _bin_and_next_window(level0, sel, nxt, window, n_total, hist.gate)
            if not ok:
                return None
            lo, hi = window
            if (b == lo and lo > 0) or (b == hi and hi < ops.HIST_BINS - 1):
                self._window_misses += 1
                sel = ops.new_select_state(k, device)
                level0.zero_()
                ops.abs_histogram_(local, sel, level0, 0)
                self._reduce_histogram(level0, n_total)
                ops.select_bin_(level0, sel, 0)
                b, nxt_window, guess, _ = _bin_and_next_window(level0, sel, nxt, ops.FULL_WINDOW, n_total)
            elif hist.level1 is not None and 0 <= b - hist.level1_lo < hist.level1.numel() // ops.HIST_BINS:
                i = b - hist.level1_lo
                level1 = hist.level1[i * ops.HIST_BINS:(i + 1) * ops.HIST_BINS]
            if predict:
                self._hist_window, self._bin_guess = nxt_window, guess
        if level1 is None and _low_bits_zero(local):
            # The level-0 bin is the value itself: tau is known without a
            # level-1 pass.
            sel[2:3].copy_(sel[1:2] * ops.HIST_BINS)
            return sel
        if level1 is None:
            self._level1_passes += 1
            level1 = level0
            level1.zero_()
            ops.abs_histogram_(local, sel, level1, 1)
        self._reduce_histogram(level1, n_total)
        ops.select_bin_(level1, sel, 1)
        return sel

    def _next_k(self, n_total):
        """k of the next pruning event, or 0 if there is none."""
        nxt = self.schedule.next_event(self._t)
        return 0 if nxt is None else self.schedule.num_pruned(nxt, n_total)

    def _shard_groups(self):
        """Process groups across which the prunable tensors are split."""
        for _, _, p in self._prunable():
            if _is_dtensor(p):
                from torch.distributed.tensor import Shard

                mesh = p.device_mesh
                return [mesh.get_group(i) for i, pl in enumerate(p.placements) if isinstance(pl, Shard)]
        return []

    def _reduce_histogram(self, hist, n_total):
        """Sum ``hist`` over the ranks that hold pieces of the model, in place.

        ``n_total`` is the global number of prunable weights: no bin can count
        more, so below 2^31 the sum is exact in int32 and half the bytes travel.
        """
        groups = self._shard_groups()
        if not groups:
            return
        wire = hist.to(torch.int32) if n_total < 2 ** 31 else hist
        for group in groups:
            torch.distributed.all_reduce(wire, op=torch.distributed.ReduceOp.SUM, group=group)
        if wire is not hist:
            hist.copy_(wire)

    def _check_prunable(self, prunable):
        shapes = [tuple(p.shape) for p in prunable]
        if shapes != self._shapes:
            for i, (a, b) in enumerate(zip(shapes, self._shapes)):
                if a != b:
                    raise RuntimeError(
                        f"{type(self).__name__}: prunable parameter {i} changed shape from {b} to {a} after "
                        "the optimizer was built; rebuild the optimizer")
            raise RuntimeError(f"{type(self).__name__}: the set of prunable parameters changed; rebuild the optimizer")
        devices = {p.device for p in prunable}
        if len(devices) > 1:
            raise RuntimeError(
                f"{type(self).__name__}: all prunable parameters must be on one device for the global threshold, "
                f"found {sorted(map(str, devices))}")

    def _grads_finite(self, device):
        """False if the step must be skipped; raises under on_nonfinite='raise'."""
        flag = self._finite_flag(device)
        if flag is None or bool(flag.reshape(()).item()):
            return True
        self._refuse_nonfinite(None)
        return False

    def _refuse_nonfinite(self, late_step):
        """Raise or count a skipped step. ``late_step``: the step whose
        deferred check failed, or None for the step being taken now."""
        if self.on_nonfinite == "raise":
            what = ("a gradient contains inf or NaN; no parameter or state was changed" if late_step is None
                    else f"a gradient of step {late_step} contained inf or NaN (its check is read back one "
                         "call later, so that steps between pruning events do not wait for the GPU); that "
                         "step changed no parameter or state, and neither did this call")
            raise FloatingPointError(
                f"{type(self).__name__}: {what}. "
                "Use torch.amp.GradScaler, fix the loss, or pass on_nonfinite='skip' to "
                "skip such steps without advancing the schedule."
                + (" The parameters are sharded: only this rank raised and the others went on, "
                   "so this error is fatal to the run ('skip' keeps the ranks together)."
                   if self._shard_groups() else ""))
        self._skipped += 1

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
        """lambda_t the next step will use (0 once the prior is off)."""
        self._settle()
        return self.schedule.lambda_at(self._t) if self.schedule.prior_active(self._t) else 0.0

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
        counts = torch.tensor([int((_local(p) == 0).sum().item()) for _, _, p in entries],
                              dtype=torch.int64, device=_local(entries[0][2]).device)
        for group in self._shard_groups():
            torch.distributed.all_reduce(counts, group=group)
        per, zeros, total = {}, 0, 0
        for (gi, pi, p), z in zip(entries, counts.tolist()):
            per[self._name(gi, pi)] = z / max(p.numel(), 1)
            zeros += z
            total += p.numel()
        return {"overall": zeros / max(total, 1), "per_tensor": per}

    # -- checkpoints ----------------------------------------------------------
    def _hyper(self):
        return dict(method=self.method, schedule=self.schedule.as_dict(),
                    num_train_examples=self.num_train_examples,
                    sigma0_sq=self.sigma0_sq, sigma1_sq=self.sigma1_sq)

    def _extra_record(self):
        """Method-specific scalars saved in the checkpoint record."""
        return {}

    def _load_extra_record(self, extra):
        pass

    def state_dict(self):
        """torch's optimizer state dict; every param group also carries, under
        the key ``"mgpp"``, a JSON record of the schedule position and the
        hyper-parameters (param groups survive every checkpoint format,
        ``torch.distributed.checkpoint`` included)."""
        self._settle()
        sd = super().state_dict()
        record = json.dumps(dict(
            t=self._t, events=self._events, skipped=self._skipped, last_k=self._last_k,
            threshold=self.last_threshold, hyper=self._hyper(),
            shapes=[list(s) for s in self._shapes], extra=self._extra_record()))
        for group in sd["param_groups"]:
            group["mgpp"] = record
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        groups = state_dict.get("param_groups") or []
        if not groups or "mgpp" not in groups[0]:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state dict has no 'mgpp' record in its "
                             "param groups; it was not saved by MGPP")
        extra = json.loads(groups[0]["mgpp"])
        saved = extra["hyper"]
        mine = json.loads(json.dumps(self._hyper()))
        saved = {"method": "mgpp", **saved}  # records before GMP/PLATON existed
        flat_saved = {**saved.get("schedule", {}), **{k: v for k, v in saved.items() if k != "schedule"}}
        flat_mine = {**mine["schedule"], **{k: v for k, v in mine.items() if k != "schedule"}}
        if saved["method"] != self.method:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the checkpoint is of method "
                f"{saved['method']!r}, this optimizer is {self.method!r}")
        for key in flat_mine:
            if flat_saved.get(key) != flat_mine[key]:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: hyper-parameter '{key}' differs: saved "
                    f"{flat_saved.get(key)!r}, this optimizer {flat_mine[key]!r}")
        shapes = [tuple(s) for s in extra["shapes"]]
        if shapes != self._shapes:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the prunable parameters differ from the saved ones "
                f"(saved {len(shapes)} tensors, here {len(self._shapes)}; first difference at "
                f"{next((i for i, (a, b) in enumerate(zip(shapes, self._shapes)) if a != b), min(len(shapes), len(self._shapes)))})")
        self._check_state_shapes(state_dict)
        # torch casts floating state to each param's dtype on load; state that
        # must stay fp32 (PLATON's scores) is held back and restored as fp32.
        held = {}
        if self._fp32_state_keys:
            state = {}
            for pid, st in state_dict["state"].items():
                st = dict(st)
                kept = {k: st.pop(k) for k in self._fp32_state_keys if k in st}
                if kept:
                    held[pid] = kept
                state[pid] = st
            state_dict["state"] = state
        super().load_state_dict(state_dict)
        self._pending = None  # the loaded state replaces the step it was about
        if held:
            for pid, p in self._saved_ids_with_params(state_dict):
                for k, v in held.get(pid, {}).items():
                    self.state[p][k] = v.to(device=p.device, dtype=torch.float32)
        for group in self.param_groups:
            group.pop("mgpp", None)  # the record is rebuilt by state_dict()
        # torch casts floating state to the param dtype; masks are bool.
        for state in self.state.values():
            if "mask" in state:
                state["mask"] = state["mask"].to(torch.bool)
        self._t = int(extra["t"])
        self._events = int(extra["events"])
        self._skipped = int(extra["skipped"])
        self._last_k = int(extra["last_k"])
        th = extra["threshold"]
        self._threshold = None if th is None else torch.tensor(
            th, dtype=torch.float32, device=_local(self._prunable()[0][2]).device)
        self._load_extra_record(extra.get("extra", {}))

    def _saved_ids_with_params(self, state_dict):
        """(saved param id, param) pairs, matched by order as torch does."""
        ids = [i for sg in state_dict["param_groups"] for i in sg["params"]]
        return list(zip(ids, [p for g in self.param_groups for p in g["params"]]))

    def _check_state_shapes(self, state_dict):
        """torch zips saved state to params by order; refuse a silent misalignment."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(sg["params"]) != len(g["params"]) for sg, g in zip(saved_groups, self.param_groups)):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved param groups do not match this "
                             "optimizer's groups (number of groups or of params per group)")
        for i, p in self._saved_ids_with_params(state_dict):
            st = state_dict["state"].get(i)
            if st is None:
                continue
            for key, v in st.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != tuple(p.shape):
                    raise ValueError(
                        f"{type(self).__name__}.load_state_dict: saved '{key}' of param {i} has shape "
                        f"{tuple(v.shape)} but the param has shape {tuple(p.shape)} "
                        "(different model or parameter order)")


# Width of the level-0 window around the predicted bin of the next event's
# threshold, in bins of 1/128 octave: about -17% .. +41% in |w|. Sparsity
# only grows, so the threshold tends to move up. On the demo's MiniLM
# fine-tune the threshold's bin lay within 20 bins of the prediction from
# the previous event's histogram.
_WINDOW_BELOW = 32
_WINDOW_ABOVE = 64
# A window holding more than this share of the weights costs about as much
# as the full histogram (a scattered increment per weight inside it), so the
# full one is used.
_WINDOW_MAX_SHARE = 0.5


class _PendingCheck(NamedTuple):
    """A step's device-side inf/NaN check on its way to the host."""
    ok: torch.Tensor  # one bool; on CUDA in pinned memory, valid once ``ready`` has passed
    ready: Optional[object]  # torch.cuda.Event recorded after the copy, or None
    t: int
    stepped: list  # the params whose state["step"] the step advanced

    @classmethod
    def start(cls, gate, t, stepped):
        if gate.device.type != "cuda":
            return cls(gate, None, t, stepped)
        ok = gate.to("cpu", non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(gate.device))
        return cls(ok, ready, t, stepped)

    def passed(self):
        # By the next call the forward and backward in between have run, so
        # the event has almost always passed and query() costs no wait.
        if self.ready is not None and not self.ready.query():
            self.ready.synchronize()
        return bool(self.ok.reshape(()).item())


class _EventHist(NamedTuple):
    """The histograms an event step's fused pass fills (see mgpp_step_)."""
    level0: torch.Tensor
    window: tuple
    level1: Optional[torch.Tensor]  # n1 * HIST_BINS bins, or None
    level1_lo: int
    gate: Optional[torch.Tensor] = None  # the step's device-side inf/NaN check

    def kernel_args(self):
        """mgpp_step_'s keyword arguments for these histograms, but ``hist``."""
        return dict(hist_window=self.window, hist1=self.level1, hist1_lo=self.level1_lo)


def _low_bits_zero(tensors):
    """Whether every value's fp32 bit pattern has 16 zero low bits (bf16
    widened to fp32), so that its level-0 bin is the value itself."""
    return all(t.dtype == torch.bfloat16 for t in tensors)


def _bin_and_next_window(hist, sel, next_k, window, n_total, gate=None):
    """(the level-0 bin just selected, the next event's window, the next
    event's predicted bin or -1, whether ``gate`` holds True).

    The predicted bin is where this event's cumulative count reaches
    ``next_k``, and the window is around it; the window is the full range
    (and no bin is predicted) when there is no next event, when ``hist``
    (exact only strictly inside ``window``) cannot place that bin, or when
    the window would hold too many weights. One host read, which also
    brings ``gate`` (a one-element bool tensor, or None: True).
    """
    full_range = ops.FULL_WINDOW
    extra = [] if gate is None else [gate.reshape(1).to(torch.int64)]
    if next_k <= 0:
        b, *ok = torch.cat([sel[1:2]] + extra).tolist()
        return b, full_range, -1, all(ok)
    cum = hist.cumsum(0)
    guess = torch.searchsorted(cum, torch.full((1,), next_k, dtype=torch.int64, device=hist.device))
    lo = (guess - _WINDOW_BELOW).clamp(0, ops.HIST_BINS - 1)
    hi = (guess + _WINDOW_ABOVE).clamp(0, ops.HIST_BINS - 1)
    # Weights in the new window, counted in the bins where ``hist`` is
    # exact (an edge bin of a clamped window also counts all beyond it).
    a = lo.clamp(min=window[0] + int(window[0] > 0))
    z = hi.clamp(max=window[1] - int(window[1] < ops.HIST_BINS - 1))
    inside = torch.where(z >= a, cum[z] - torch.where(a > 0, cum[(a - 1).clamp(min=0)], 0), 0)
    b, g, lo, hi, inside, *ok = torch.cat([sel[1:2], guess, lo, hi, inside] + extra).tolist()
    placed = window == full_range or window[0] < g < window[1]
    if g >= ops.HIST_BINS or not placed or inside > _WINDOW_MAX_SHARE * n_total:
        return b, full_range, -1, all(ok)
    return b, (lo, hi), g, all(ok)


def _fold_into_window(full, hist, window):
    """Add a full level-0 histogram into ``hist``, whose keys are clamped to ``window``."""
    lo, hi = window
    hist[lo:hi + 1] += full[lo:hi + 1]
    hist[lo] += full[:lo].sum()
    hist[hi] += full[hi + 1:].sum()


def _is_dtensor(t):
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)


def _local(t):
    """The local shard of a DTensor (a view: writes reach the DTensor), else t."""
    return t.to_local() if _is_dtensor(t) else t


def _like_param(local, p):
    """Wrap a local tensor as sharded like ``p`` when ``p`` is a DTensor."""
    if not _is_dtensor(p):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                              shape=p.shape, stride=p.stride())


def _as_float(x):
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _check_number(name, value, lo=None, hi=None, lo_open=False, hi_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value}")
