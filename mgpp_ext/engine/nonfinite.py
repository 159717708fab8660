"""The inf/NaN check of every step, and the deferred form it takes on a GPU.

A step whose gradients hold an inf or a NaN changes nothing: under
``on_nonfinite="raise"`` it raises, under ``"skip"`` it is counted and the
schedule does not advance. Under ``"propagate"`` only the steps that rank
weights across groups are checked (``_check_event_inputs``): pruning
events, and a regulariser's own rankings (ADMM's global projections; an
n:m ranking, as SR-STE's mask updates, orders inf/NaN above every number
within its group and is not checked).
The steps between them behave as ``torch.optim.AdamW``'s, for runs whose
gradients are already checked (``GradScaler`` skips such steps itself),
which then do not pay for a second read of every gradient each step. On CPU the check is read at once. On CUDA a step
between pruning events does not wait for it: the check's result gates the
fused kernel on the device (a failed check changes nothing there) and is
read back by the next call (``_settle``), by which time it has long arrived.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import ops
from .distributed import local


def _by_device(tensors):
    """The tensors grouped by device (``ops.all_finite`` takes one device's list)."""
    groups = {}
    for x in tensors:
        groups.setdefault(x.device, []).append(x)
    return groups


def _all_finite(tensors):
    """Whether every tensor is free of inf and NaN (a host read)."""
    return all(bool(ops.all_finite(xs)) for xs in _by_device(tensors).values())


class PendingCheck(NamedTuple):
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


class NonfiniteCheck:
    """The optimizer's side of the check (a mixin of ``PruningOptimizer``).

    Uses ``self.on_nonfinite``, ``self.score``, ``self._pending``,
    ``self._defer_finite_check`` (None: automatic, on CUDA; True/False
    forces it), ``self._t`` and ``self._skipped``."""

    def _defers_finite_check(self, device):
        if self.score.observes_gradients:
            return False  # the score would take in the gradients before the check is known
        if self.regulariser is not None and self.regulariser.has_hooks:
            return False  # its hooks change state around the step: the check is read first
        if self._defer_finite_check is not None:
            return bool(self._defer_finite_check)
        return device.type == "cuda"

    def _finite_gate(self, event, device):
        """The inf/NaN check left on the device: a one-element bool tensor
        that gates the fused kernel. Between pruning events it is read back
        by the next call (``_settle``), so that such a step does not wait for
        the GPU to finish it; on an event it is read together with the
        select's result, the event's one host read. None when the check is
        read at once instead: on CPU, for scores that observe gradients, on
        events that do not select on the histogram of |w| the fused step
        builds, and when gradients live on several devices."""
        if not self._defers_finite_check(device) or (event and not self._fused_select):
            return None
        if any(local(p.grad).device != device for g in self.param_groups for p in g["params"]
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
        by_device = _by_device(local(p.grad) for g in self.param_groups for p in g["params"]
                               if p.grad is not None)
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

    def _ranking_at(self, t, event):
        """What ranks weights in or right after step t, as the error names
        it ("the pruning event", "the ADMM projection", ...), or None: the
        steps ``on_nonfinite='propagate'`` checks."""
        if event:
            return "the pruning event"
        reg = self.regulariser
        return None if reg is None else reg.ranking_at(self, t)

    def _check_event_inputs(self, prunable, t, ranking="the pruning event"):
        """The check of a step that ranks weights, under on_nonfinite='propagate'.

        The steps before it may not have been checked, so an inf/NaN
        gradient may have reached the weights, scores and regulariser state
        it touched (as it would with ``torch.optim.AdamW``). Nothing can
        rank such values, so before the step changes anything its
        gradients are read, and, unless every step since the last such
        check was checked too, the prunable weights, the scores and the
        regulariser's state; an inf/NaN raises."""
        flag = self._finite_flag(local(prunable[0]).device)  # no communication: not under "skip"
        parts = [("a gradient", flag is None or bool(flag.reshape(()).item()))]
        if not self._inputs_checked:
            parts.append(("a prunable weight", _all_finite(local(p) for p in prunable)))
            if self._t > 0:  # before the first step a score has no state to read
                parts.append((f"a {self.score.name} score", _all_finite(self.score.tensors(self) or [])))
            reg = self.regulariser
            if reg is not None:
                parts.append((f"the '{reg.name}' state", _all_finite(reg.state_tensors(self))))
        for what, finite in parts:
            if finite:
                continue
            raise FloatingPointError(
                f"{type(self).__name__}: {what} holds inf or NaN at {ranking} of step {t}. "
                "Under on_nonfinite='propagate' only steps that rank weights are checked, so it came from "
                "this step's or an earlier step's gradients, and nothing can rank it; this step changed "
                "nothing. Use on_nonfinite='raise' or 'skip' to stop such a gradient at its own step.")

    def _grads_finite(self, device):
        """False if the step must be skipped; raises under on_nonfinite='raise'."""
        flag = self._finite_flag(device)
        if flag is None or bool(flag.reshape(()).item()):
            return True
        self._refuse_nonfinite(None)
        return False

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
