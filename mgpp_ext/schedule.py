"""The MGPP schedule: phases, cubic sparsity, lambda annealing, pruning events.

Pure Python, no tensors: the optimizer asks it what step ``t`` must do.
Step indices follow README.md, "The algorithm in brief": ``t = 0, 1, ...`` counts optimizer steps
actually taken.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Schedule:
    total_steps: int
    initial_warmup_steps: int = 0
    final_finetune_steps: int = 0
    prune_interval: int = 100
    initial_sparsity: float = 0.0
    target_sparsity: float = 0.9
    lambda_mix: float = 0.1
    lambda_anneal: tuple = (1.0, 0.001)

    def __post_init__(self):
        _check_int("total_steps", self.total_steps, minimum=1)
        _check_int("initial_warmup_steps", self.initial_warmup_steps, minimum=0)
        _check_int("final_finetune_steps", self.final_finetune_steps, minimum=0)
        _check_int("prune_interval", self.prune_interval, minimum=1)
        if self.total_steps <= self.initial_warmup_steps + self.final_finetune_steps:
            raise ValueError(
                "total_steps must be larger than initial_warmup_steps + final_finetune_steps "
                f"(got total_steps={self.total_steps}, initial_warmup_steps="
                f"{self.initial_warmup_steps}, final_finetune_steps={self.final_finetune_steps})"
            )
        for name in ("initial_sparsity", "target_sparsity"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v < 1.0):
                raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
        if self.initial_sparsity > self.target_sparsity:
            raise ValueError(
                f"initial_sparsity ({self.initial_sparsity}) must not exceed "
                f"target_sparsity ({self.target_sparsity})"
            )
        if isinstance(self.lambda_mix, bool) or not isinstance(self.lambda_mix, (int, float)) \
                or not (0.0 < self.lambda_mix < 1.0):
            raise ValueError(f"lambda_mix must be a number in (0, 1), got {self.lambda_mix!r}")
        try:
            if isinstance(self.lambda_anneal, (str, bytes)):
                raise TypeError
            a_i, a_f = self.lambda_anneal
        except (TypeError, ValueError):
            raise ValueError(
                f"lambda_anneal must be a pair (alpha_initial, alpha_final), got {self.lambda_anneal!r}"
            ) from None
        for name, a in (("lambda_anneal[0]", a_i), ("lambda_anneal[1]", a_f)):
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not (0.0 < a <= 1.0 / self.lambda_mix) \
                    or not (a * self.lambda_mix < 1.0):
                raise ValueError(
                    f"{name} must be > 0 and keep lambda_mix * alpha inside (0, 1), got {a!r}"
                )
        object.__setattr__(self, "lambda_anneal", (float(a_i), float(a_f)))

    # -- the phase boundaries -------------------------------------------------
    @property
    def t_s(self) -> int:
        """First pruning event: the end of the initial warm-up."""
        return self.initial_warmup_steps

    @property
    def t_e(self) -> int:
        """Last pruning event: its mask is fixed for the final fine-tune."""
        return self.total_steps - self.final_finetune_steps - 1

    def phase(self, t: int) -> str:
        if t < self.t_s:
            return "warmup"
        if t <= self.t_e:
            return "pruning"
        return "final"

    # -- what step t does -----------------------------------------------------
    def prior_active(self, t: int) -> bool:
        return t <= self.t_e

    def alpha(self, t: int) -> float:
        a_i, a_f = self.lambda_anneal
        if t <= self.t_s:
            return a_i
        if t >= self.t_e:
            return a_f
        return a_i + (a_f - a_i) * (t - self.t_s) / (self.t_e - self.t_s)

    def lambda_at(self, t: int) -> float:
        return self.lambda_mix * self.alpha(t)

    def sparsity(self, t: int) -> float:
        """Target sparsity s_t (0 before the first event, s_i at the first,
        s_f from the last on), the nearest float to the exact value."""
        return float(self._exact_sparsity(t))

    def _exact_sparsity(self, t: int) -> Fraction:
        # Exact arithmetic on the decimals the user gave (repr recovers 0.3
        # from the float 0.3): in floats, s_f + (s_i - s_f) * 1 at t_s is
        # 0.29999999999999993 for s_i = 0.3 and s_f = 0.9, and floor(s_t N)
        # then prunes one weight too few when 0.3 N is an integer.
        if t < self.t_s:
            return Fraction(0)
        s_f = Fraction(repr(float(self.target_sparsity)))
        if t >= self.t_e:
            return s_f
        s_i = Fraction(repr(float(self.initial_sparsity)))
        frac = Fraction(t - self.t_s, self.t_e - self.t_s)
        return s_f + (s_i - s_f) * (1 - frac) ** 3

    def is_event(self, t: int) -> bool:
        if t == self.t_s or t == self.t_e:
            return True
        return self.t_s < t < self.t_e and t % self.prune_interval == 0

    def next_event(self, t: int):
        """The first event step after t, or None after the last one (t_e)."""
        if t < self.t_s:
            return self.t_s
        if t >= self.t_e:
            return None
        return min((t // self.prune_interval + 1) * self.prune_interval, self.t_e)

    def num_pruned(self, t: int, n: int) -> int:
        """k = floor(s_t * N) weights to prune at an event of step t, exactly."""
        return math.floor(self._exact_sparsity(t) * n)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["lambda_anneal"] = list(self.lambda_anneal)
        return d

    @classmethod
    def one_shot(cls, total_steps, final_finetune_steps, target_sparsity):
        """One event, at t_e = total_steps - final_finetune_steps - 1, that
        prunes straight to ``target_sparsity``; the mask is fixed after it
        (ADMM's hard projection after its ADMM phase)."""
        _check_int("total_steps", total_steps, minimum=1)
        _check_int("final_finetune_steps", final_finetune_steps, minimum=0)
        if total_steps <= final_finetune_steps:
            raise ValueError(f"total_steps must be larger than final_finetune_steps (got total_steps="
                             f"{total_steps}, final_finetune_steps={final_finetune_steps})")
        return cls(total_steps=total_steps, initial_warmup_steps=total_steps - final_finetune_steps - 1,
                   final_finetune_steps=final_finetune_steps, prune_interval=1,
                   initial_sparsity=target_sparsity, target_sparsity=target_sparsity)


class _NoEvents:
    """What the schedules without pruning events share: a constant
    ``target_sparsity``, no events, no prior."""

    prune_interval = 1

    def _check_target(self):
        if not isinstance(self.target_sparsity, (int, float)) or not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be a number in [0, 1), got {self.target_sparsity!r}")

    def is_event(self, t):
        return False

    def next_event(self, t):
        return None

    def prior_active(self, t):
        return False

    def lambda_at(self, t):
        return 0.0

    def sparsity(self, t):
        return float(self.target_sparsity)

    def num_pruned(self, t, n):
        return math.floor(Fraction(repr(float(self.target_sparsity))) * n)

    def as_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class EveryStep(_NoEvents):
    """No pruning events: the method keeps its mask at ``target_sparsity``
    on every step itself (SR-STE recomputes its n:m mask inside the fused
    step every ``mask_interval`` steps). There is no final phase."""

    target_sparsity: float
    mask_interval: int = 1

    def __post_init__(self):
        _check_int("mask_interval", self.mask_interval, minimum=1)
        self._check_target()

    t_s = 0
    t_e = math.inf  # never final: the mask is never frozen by the schedule

    def phase(self, t):
        return "pruning"

    def updates_mask(self, t):
        return t % self.mask_interval == 0


@dataclass(frozen=True)
class FixedMaskSchedule(_NoEvents):
    """No pruning events: the mask is given and in force from the first
    step (fine-tuning with a mask chosen before training, e.g. from
    importance scores). Every step is a final-phase step."""

    target_sparsity: float

    def __post_init__(self):
        self._check_target()

    t_s = 0
    t_e = -1  # every step t >= 0 is after the last event: the mask is fixed

    def phase(self, t):
        return "final"


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
