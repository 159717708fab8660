"""Regularisers: terms added to the gradient inside the fused step.

A regulariser gives the checkpoint its hyper-parameters (``hyper()``) and
the fused step either its arguments (``step_args(schedule, t)``, for
``mgpp_step_``) or, when ``owns_step(t)``, the whole call
(``fused_step``), through its family's own op over the shared templated
AdamW kernel body, so that no op carries every family's arguments.
``before_step``/``after_step`` run around the step (ADMM's projections);
``has_hooks`` says they do anything, ``ranking_at(opt, t)`` names the
ranking of weights across groups it makes in or right after step t (the
steps ``on_nonfinite="propagate"`` checks, with ``state_tensors``; an n:m
ranking is local and orders inf/NaN, so it is not named),
``fills_histogram`` whether its step
op builds the level-0 histogram of |w| an event can select on, and
``fp32_state_keys`` names per-param state kept in fp32.
"""
from __future__ import annotations

import math

import torch

from .engine.buckets import adamw_hyper, adamw_lists
from .engine.distributed import local
from .engine.validation import FLOAT32_MAX, MIN_VARIANCE, check_number


class MixturePrior:
    """MGPP's spike-and-slab prior (README.md, "The algorithm in brief"): the gradient of
    ``-log(lambda_t N(0, sigma1_sq) + (1 - lambda_t) N(0, sigma0_sq))``
    over ``num_train_examples``, added to every prunable weight's gradient
    while the schedule's prior is active (up to the last event). lambda_t
    comes from the schedule (``Schedule.lambda_at``)."""

    name = "mixture_gaussian_prior"
    fills_histogram = True
    has_hooks = False
    fp32_state_keys = ()
    exact_state_keys = ()

    def __init__(self, num_train_examples, sigma0_sq, sigma1_sq):
        check_number("num_train_examples", num_train_examples, lo=0.0, lo_open=True)
        check_number("sigma0_sq", sigma0_sq, lo=0.0, lo_open=True)
        check_number("sigma1_sq", sigma1_sq, lo=0.0, lo_open=True)
        if sigma0_sq < MIN_VARIANCE:
            raise ValueError(
                f"sigma0_sq must be >= {MIN_VARIANCE} so that 1/sigma0_sq is finite in float32, "
                f"got {sigma0_sq}")
        if not sigma0_sq < sigma1_sq:
            raise ValueError(
                f"sigma0_sq must be smaller than sigma1_sq (spike narrower than slab), "
                f"got sigma0_sq={sigma0_sq}, sigma1_sq={sigma1_sq}")
        self.num_train_examples = float(num_train_examples)
        self.sigma0_sq = float(sigma0_sq)
        self.sigma1_sq = float(sigma1_sq)

    def hyper(self):
        return dict(num_train_examples=self.num_train_examples,
                    sigma0_sq=self.sigma0_sq, sigma1_sq=self.sigma1_sq)

    def active(self, schedule, t):
        return schedule.prior_active(t)

    def current_lambda(self, schedule, t):
        return schedule.lambda_at(t) if schedule.prior_active(t) else 0.0

    def step_args(self, schedule, t):
        """``ops.mgpp_step_``'s prior arguments for step t."""
        return dict(apply_prior=self.active(schedule, t), num_examples=self.num_train_examples,
                    lambda_mix=schedule.lambda_at(t), sigma0_sq=self.sigma0_sq, sigma1_sq=self.sigma1_sq)

    def owns_step(self, t):
        return False

    def ranking_at(self, opt, t):
        return None  # it ranks nothing: the schedule's events do

    def state_tensors(self, opt):
        return []

    def before_step(self, opt, t):
        pass

    def after_step(self, opt, t):
        pass


class AdmmProximal:
    """ADMM pattern pruning's proximal term (Zhang et al. 2018; seed 001).

    The W-step is AdamW on ``L(W) + (rho_t / 2) ||W - Z + U||^2``: the
    gradient ``rho_t ((W - Z) + U)`` is added inside the step op. Every
    ``admm_interval`` steps ``Z <- Proj(W + U)`` onto the optimizer's
    pattern (n:m, or the k largest |.| globally), then ``U <- U + W - Z``;
    the first projection, before step 0, starts from U = 0.

    Memory: right after a projection Z = (W + U) M and U' = (W + U)(1 - M)
    for the projection's keep mask M, so one fp32 tensor A = W + U plus M
    packed to 1 bit per weight hold both (``"admm_dual"``,
    ``"admm_dual_mask"`` in the param's state): 4 bytes and 1 bit per weight
    instead of two fp32 tensors. ``rho_t = rho * rho_growth ** (t //
    admm_interval)``: an increasing rho schedule when ``rho_growth > 1``.
    The state is freed at the last event (the hard projection).
    """

    name = "admm"
    fills_histogram = False
    has_hooks = True
    fp32_state_keys = ("admm_dual",)
    exact_state_keys = ("admm_dual_mask",)  # uint8, kept as saved on load
    packed_state_keys = ("admm_dual_mask",)  # ceil(numel / 8) bytes

    def __init__(self, rho, admm_interval, rho_growth=1.0):
        check_number("rho", rho, lo=0.0, lo_open=True)
        if isinstance(admm_interval, bool) or not isinstance(admm_interval, int) or admm_interval < 1:
            raise ValueError(f"admm_interval must be an int >= 1, got {admm_interval!r}")
        check_number("rho_growth", rho_growth, lo=1.0)
        self.rho = float(rho)
        self.admm_interval = int(admm_interval)
        self.rho_growth = float(rho_growth)

    def hyper(self):
        return dict(rho=self.rho, admm_interval=self.admm_interval, rho_growth=self.rho_growth)

    def rho_at(self, t):
        return self.rho * self.rho_growth ** (t // self.admm_interval)

    def check_run(self, t_e):
        """Refuse a rho schedule whose last value, rho_{t_e} at the hard
        projection, is not a finite float32 (the step op takes rho in
        float32): with ``rho_growth > 1`` rho grows without bound over a
        long run. Checked in log space, before anything is built."""
        growths = t_e // self.admm_interval
        log_last = math.log(self.rho) + growths * math.log(self.rho_growth)
        if log_last > math.log(FLOAT32_MAX):
            raise ValueError(
                f"rho_growth={self.rho_growth} over {growths} projections (admm_interval="
                f"{self.admm_interval}, hard projection at step {t_e}) takes rho={self.rho} to "
                f"exp({log_last:.1f}), past float32's largest value {FLOAT32_MAX:.4g}; "
                "use a smaller rho_growth or rho, or a larger admm_interval")

    def ranking_at(self, opt, t):
        """The global projection step t starts with (a fresh state's first)
        or ends with, or None. The hard projection at t_e is the schedule's
        event. An n:m projection is not named: each group keeps its n
        largest |W + U| by nm.py's rule, under which inf and NaN rank above
        every number, so an inf/NaN that reached W + U stays in its own
        group, kept, and "propagate" lets it through as AdamW would. A
        global projection's threshold is one number over every weight,
        which an inf/NaN would corrupt everywhere."""
        from .patterns import NMPattern

        if t >= opt.schedule.t_e or isinstance(opt.pattern, NMPattern):
            return None
        if self._fresh(opt):
            return "the first ADMM projection"
        return "the ADMM projection" if self._projects_after(opt, t) else None

    @staticmethod
    def _fresh(opt):
        """The prunable params without Z and U yet (before_step starts them)."""
        return [p for _, _, p in opt._prunable() if "admm_dual" not in opt.state[p]]

    def _projects_after(self, opt, t):
        """Whether after_step projects after step t (t_e's hard projection aside)."""
        return t < opt.schedule.t_e and (t + 1) % self.admm_interval == 0

    def state_tensors(self, opt):
        """Z and U (both in the one fp32 tensor ``admm_dual``)."""
        return [opt.state[p]["admm_dual"] for _, _, p in opt._prunable() if "admm_dual" in opt.state[p]]

    def owns_step(self, t):
        return True

    def step_args(self, schedule, t):
        """``ops.mgpp_step_``'s regulariser arguments, for the steps it does
        not own (after the last event: masked fine-tuning, no term)."""
        return dict(apply_prior=False)

    def before_step(self, opt, t):
        if t > opt.schedule.t_e:
            return
        fresh = self._fresh(opt)
        if not fresh:
            return
        from . import regulariser_ops as rops

        for p in fresh:
            # A = 0 and M = 1 everywhere (U = 0): the projection below makes
            # Z = Proj(W) and M its mask.
            st = opt.state[p]
            st["admm_dual"] = torch.zeros_like(local(p), dtype=torch.float32)
            st["admm_dual_mask"] = rops.new_dual_mask(local(p)).fill_(255)
        self.project(opt)
        # Zhang et al.'s start is Z0 = Proj(W0), U0 = 0. The projection also
        # took the dual step, U = W0 - Z0, which would pull every dropped
        # weight towards -W0 from the first step: clear U (A <- A M).
        for p in fresh:
            st = opt.state[p]
            a = st["admm_dual"]
            a.masked_fill_(~rops.unpack_dual_mask(st["admm_dual_mask"], a), 0.0)

    def fused_step(self, opt, ps, group, step, t, gate):
        from . import regulariser_ops as rops

        st = [opt.state[p] for p in ps]
        rops.admm_step_(*adamw_lists(opt, ps), [s["admm_dual"] for s in st], [s["admm_dual_mask"] for s in st],
                        **adamw_hyper(group, step), rho=self.rho_at(t), apply_if=gate)

    def after_step(self, opt, t):
        sch = opt.schedule
        if self._projects_after(opt, t):
            self.project(opt)
        elif t == sch.t_e:
            for _, _, p in opt._prunable():  # the hard projection is done: Z and U are not needed
                opt.state[p].pop("admm_dual", None)
                opt.state[p].pop("admm_dual_mask", None)

    def project(self, opt):
        """Z <- Proj(W + U), U <- U + W - Z over every prunable tensor."""
        from . import regulariser_ops as rops
        from .patterns import NMPattern

        prunable = [p for _, _, p in opt._prunable()]
        pieces = [local(p) for p in prunable]
        duals = [opt.state[p]["admm_dual"] for p in prunable]
        masks = [opt.state[p]["admm_dual_mask"] for p in prunable]
        pattern = opt.pattern
        if isinstance(pattern, NMPattern):
            rops.admm_project_(pieces, duals, masks, pattern.n, pattern.m, pattern.dims)
            return
        rops.admm_combine_(pieces, duals, masks)
        n_total = sum(p.numel() for p in prunable)
        k = opt.schedule.num_pruned(opt.schedule.t_e, n_total)
        if k == 0:
            for m in masks:
                m.fill_(255)
            return
        sel = opt._global_select(duals, k, n_total)
        rops.admm_threshold_mask_(duals, sel, masks)


class SrsteDecay:
    """SR-STE's sparse-refined decay (Zhou et al. 2021).

    The parameter holds W * M, M the n:m mask of |W|, so the forward pass
    sees the sparse weights and the backward pass gives the gradient at
    W * M. The dense W lives in the param's state (``"dense"``, the param's
    dtype) with M (``"nm_mask"``, bool). Each step, in one op over
    each group: ``g~ = g + lambda_w (1 - M) W``, AdamW on the dense W, M
    recomputed from |W| every ``mask_interval`` steps, and W * M written
    into the parameter: the next backward pass's gradient is exactly the
    straight-through one.
    """

    name = "srste"
    fills_histogram = False
    has_hooks = True
    fp32_state_keys = ()
    exact_state_keys = ("nm_mask",)  # bool, kept as saved on load

    def __init__(self, lambda_w):
        check_number("lambda_w", lambda_w, lo=0.0)
        self.lambda_w = float(lambda_w)

    def hyper(self):
        return dict(lambda_w=self.lambda_w)

    def ranking_at(self, opt, t):
        """None: its mask updates rank |W| within n:m groups only, by
        nm.py's rule (inf and NaN above every number), so an inf/NaN that
        reached W stays in its own group, kept, and the next forward pass
        sees it, as it would after ``torch.optim.AdamW``. SR-STE's schedule
        has no events, so "propagate" checks no SR-STE step."""
        return None

    def state_tensors(self, opt):
        """The dense W."""
        return [opt.state[p]["dense"] for _, _, p in opt._prunable() if "dense" in opt.state[p]]

    def owns_step(self, t):
        return True

    def step_args(self, schedule, t):
        """``ops.mgpp_step_``'s regulariser arguments, for the steps it does
        not own (after the last event: masked fine-tuning, no term)."""
        return dict(apply_prior=False)

    @torch.no_grad()
    def start(self, opt):
        """Keep the dense weights and put W * M in the parameters."""
        from .nm import nm_mask

        pattern = opt.pattern
        for (_, _, p), dim in zip(opt._prunable(), pattern.dims):
            st = opt.state[p]
            if "dense" in st:
                continue
            w = local(p)
            st["dense"] = w.detach().clone()
            st["nm_mask"] = nm_mask(w.detach().abs(), pattern.n, pattern.m, dim)
            w.masked_fill_(~st["nm_mask"], 0.0)

    def before_step(self, opt, t):
        pass

    def fused_step(self, opt, ps, group, step, t, gate):
        from . import regulariser_ops as rops

        pattern = opt.pattern
        index = {id(p): i for i, (_, _, p) in enumerate(opt._prunable())}
        st = [opt.state[p] for p in ps]
        rops.srste_step_(
            [local(p) for p in ps], [local(p.grad) for p in ps], [s["dense"] for s in st],
            [local(s["exp_avg"]) for s in st], [local(s["exp_avg_sq"]) for s in st],
            [s["nm_mask"] for s in st], **adamw_hyper(group, step), lambda_w=self.lambda_w,
            n=pattern.n, m=pattern.m, dims=[pattern.dims[index[id(p)]] for p in ps],
            update_mask=opt.schedule.updates_mask(t), apply_if=gate)

    def after_step(self, opt, t):
        pass
