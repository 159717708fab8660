"""Hugging Face Trainer integration.

Two ways to train with ``transformers.Trainer``:

1. Build the optimizer yourself and pass it in::

       opt = MGPP(prunable_param_groups(model), total_steps=..., num_train_examples=...)
       trainer = Trainer(model, args, ..., optimizers=(opt, scheduler))

2. Let the Trainer build it, with the run length taken from the Trainer's
   own step count (optimizer steps, so gradient accumulation is accounted
   for)::

       trainer = Trainer(model, args, ..., optimizer_cls_and_kwargs=(
           TrainerMGPP, dict(model=model, num_train_examples=len(train_set),
                             target_sparsity=0.9, ...)))

Either way, ``add_mgpp_callback(trainer)`` logs overall and per-layer
sparsity, lambda and the threshold to whatever the Trainer reports to, and
gives a ``TrainerMGPP`` its ``total_steps`` when training starts.
"""
from __future__ import annotations

import json

import torch

from ..engine import PruningOptimizer
from ..methods import MGPP
from ..selection import prunable_param_groups

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is optional for the core
    TrainerCallback = object


def unwrap_optimizer(optimizer):
    """The pruning optimizer (MGPP, GMP, PLATON, ...) inside accelerate's/Trainer's
    optimizer wrappers, or None."""
    seen = 0
    while optimizer is not None and not isinstance(optimizer, PruningOptimizer) and seen < 8:
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return optimizer if isinstance(optimizer, PruningOptimizer) else None


class TrainerMGPP(MGPP):
    """``MGPP`` for ``Trainer(optimizer_cls_and_kwargs=(TrainerMGPP, kwargs))``.

    Differences from ``MGPP``: ``total_steps`` may be left out (``MGPPCallback``
    sets it from the Trainer's ``max_steps`` when training begins), and
    ``params`` may be the model itself (the Trainer passes the model when
    the kwargs hold ``model=model``), which is split into pruned and dense
    groups by parameter name with ``patterns`` or the default selection.
    """

    def __init__(self, params, *args, total_steps=None, patterns=None, **kwargs):
        if isinstance(params, torch.nn.Module):
            params = prunable_param_groups(params, patterns)
        self.total_steps_deferred = total_steps is None
        if total_steps is None:
            # A placeholder that passes validation; replaced before step 0.
            total_steps = kwargs.get("initial_warmup_steps", 0) + kwargs.get("final_finetune_steps", 0) + 1
        super().__init__(params, *args, total_steps=total_steps, **kwargs)

    def step(self, closure=None):
        if self.total_steps_deferred:
            raise RuntimeError(
                "TrainerMGPP: total_steps was not given and no MGPPCallback set it; "
                "call add_mgpp_callback(trainer) or pass total_steps")
        return super().step(closure)

    def set_total_steps(self, total_steps):
        super().set_total_steps(total_steps)
        self.total_steps_deferred = False

    def state_dict(self):
        """As ``MGPP.state_dict``; while ``total_steps`` is deferred, the record
        says so (its run length is a placeholder, not to be taken on load:
        accelerate reloads the optimizer's own state dict when it wraps it)."""
        sd = super().state_dict()
        if self.total_steps_deferred:
            for group in sd["param_groups"]:
                record = json.loads(group["mgpp"])
                record["total_steps_deferred"] = True
                group["mgpp"] = json.dumps(record)
        return sd

    def load_state_dict(self, state_dict):
        """As ``MGPP.load_state_dict``; with ``total_steps`` still deferred, the
        run length of a checkpoint that had one is taken first (the Trainer
        loads a resumed run's optimizer before ``on_train_begin`` would set
        it)."""
        if not self.total_steps_deferred:
            return super().load_state_dict(state_dict)
        saved = _saved_total_steps(state_dict)
        if saved is None:
            return super().load_state_dict(state_dict)  # refuses the record by name
        schedule = self.schedule
        self.set_total_steps(saved)
        try:
            return super().load_state_dict(state_dict)
        except BaseException:
            self.schedule, self.total_steps_deferred = schedule, True  # nothing half-loaded
            raise


def _saved_total_steps(state_dict):
    """The run length in a checkpoint's record, or None if it has none."""
    try:
        record = json.loads(state_dict["param_groups"][0]["mgpp"])
        total = record["hyper"]["schedule"]["total_steps"]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if record.get("total_steps_deferred"):
        return None  # a placeholder
    return total if isinstance(total, int) and not isinstance(total, bool) and total >= 1 else None


class MGPPCallback(TrainerCallback):
    """Logs MGPP's sparsity, lambda and threshold with the Trainer's logs.

    Keys: ``mgpp/sparsity``, ``mgpp/target_sparsity``, ``mgpp/lambda``,
    ``mgpp/threshold``, ``mgpp/step`` and, with ``per_layer=True``,
    ``mgpp/sparsity/<param name>``. It must run before the reporting
    callbacks to reach them: ``add_mgpp_callback`` puts it first.
    """

    def __init__(self, per_layer=True):
        self.per_layer = per_layer

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        if opt is None:
            return
        total = getattr(opt.schedule, "total_steps", None)  # None: no run length (SRSTE, FixedMask)
        if getattr(opt, "total_steps_deferred", False):
            opt.set_total_steps(int(state.max_steps))
        elif total is not None and total != state.max_steps and opt.current_step == 0:
            # Not an error: the user may prune on a shorter horizon on purpose.
            print(f"MGPPCallback: optimizer total_steps={opt.schedule.total_steps} but the "
                  f"Trainer will take {state.max_steps} optimizer steps")

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        opt = unwrap_optimizer(optimizer)
        if opt is None or logs is None:
            return
        logs.update(mgpp_log_values(opt, self.per_layer))


def mgpp_log_values(opt, per_layer=True):
    """The values ``MGPPCallback`` logs, as a flat dict of floats."""
    sp = opt.sparsity()
    st = opt.schedule_state()
    values = {
        "mgpp/sparsity": sp["overall"],
        "mgpp/target_sparsity": st["target_sparsity"],
        "mgpp/lambda": st["lambda_t"],
        "mgpp/threshold": st["threshold"] if st["threshold"] is not None else 0.0,
        "mgpp/step": float(st["step"]),
    }
    if per_layer:
        values.update({f"mgpp/sparsity/{k}": v for k, v in sp["per_tensor"].items()})
    return values


def add_mgpp_callback(trainer, per_layer=True):
    """Insert an ``MGPPCallback`` ahead of the Trainer's reporting callbacks."""
    cb = MGPPCallback(per_layer=per_layer)
    trainer.callback_handler.callbacks.insert(0, cb)
    return cb
