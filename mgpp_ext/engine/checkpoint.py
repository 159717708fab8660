"""Checkpoints: torch's optimizer state dict plus the engine's record.

A mixin of ``PruningOptimizer``. Every param group of the state dict also
carries, under the key ``"mgpp"``, a JSON record of the schedule position,
the hyper-parameters of the method's parts and what the score carries
(param groups survive every checkpoint format, ``torch.distributed
.checkpoint`` included). A checkpoint of one method, or of other
hyper-parameters or other prunable shapes, is refused by name.
"""
from __future__ import annotations

import collections
import contextlib
import json

import torch

from .distributed import as_float, is_dtensor, local
from .validation import check_adamw, python_numbers, record_field


@contextlib.contextmanager
def _hooks_held(optimizer, attr):
    """Within the block, torch's calls of the hooks in ``optimizer.<attr>``
    find none; yields them, so that the engine calls them where its own
    work is done."""
    hooks = getattr(optimizer, attr)
    setattr(optimizer, attr, collections.OrderedDict())
    try:
        yield hooks
    finally:
        setattr(optimizer, attr, hooks)


class Checkpoint:

    def _hyper(self):
        """What defines the run: the method's name, the schedule and the
        hyper-parameters of the regulariser, score and pattern."""
        hyper = dict(method=self.method, schedule=self.schedule.as_dict())
        if self.regulariser is not None:
            hyper.update(self.regulariser.hyper())
        hyper.update(self.score.hyper())
        hyper.update(self.pattern.hyper())
        return hyper

    def state_dict(self):
        """torch's optimizer state dict; every param group also carries, under
        the key ``"mgpp"``, a JSON record of the schedule position and the
        hyper-parameters (param groups survive every checkpoint format,
        ``torch.distributed.checkpoint`` included)."""
        self._settle()
        with _hooks_held(self, "_optimizer_state_dict_post_hooks") as post_hooks:
            sd = super().state_dict()
        record = json.dumps(dict(
            t=self._t, events=self._events, skipped=self._skipped, last_k=self._last_k,
            threshold=self.last_threshold, hyper=self._hyper(),
            shapes=[list(s) for s in self._shapes], extra=self.score.record()))
        # (The regularisers' state is per param, in torch's state.)
        for group in sd["param_groups"]:
            python_numbers(group)
            group["mgpp"] = record
        # The user's post-hooks see the whole state dict, record included.
        for hook in post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict):
        name = type(self).__name__
        state_dict = dict(state_dict)
        # The user's pre-hooks adapt the dict before it is checked, and the
        # post-hooks run once the engine's position is restored (torch's own
        # calls of them are held back below).
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = dict(result)
        groups = state_dict.get("param_groups") or []
        if not groups or "mgpp" not in groups[0]:
            raise ValueError(f"{name}.load_state_dict: the state dict has no 'mgpp' record in its "
                             "param groups; it was not saved by MGPP")
        extra = json.loads(groups[0]["mgpp"])
        saved = extra["hyper"]
        mine = json.loads(json.dumps(self._hyper()))
        saved = {"method": "mgpp", **saved}  # records before GMP/PLATON existed
        flat_saved = {**saved.get("schedule", {}), **{k: v for k, v in saved.items() if k != "schedule"}}
        flat_mine = {**mine["schedule"], **{k: v for k, v in mine.items() if k != "schedule"}}
        if saved["method"] != self.method:
            raise ValueError(
                f"{name}.load_state_dict: the checkpoint is of method "
                f"{saved['method']!r}, this optimizer is {self.method!r}")
        for key in sorted(set(flat_mine) | set(flat_saved)):
            if flat_saved.get(key) != flat_mine.get(key):
                raise ValueError(
                    f"{name}.load_state_dict: hyper-parameter '{key}' differs: saved "
                    f"{flat_saved.get(key)!r}, this optimizer {flat_mine.get(key)!r}")
        shapes = [tuple(s) for s in extra["shapes"]]
        if shapes != self._shapes:
            raise ValueError(
                f"{name}.load_state_dict: the prunable parameters differ from the saved ones "
                f"(saved {len(shapes)} tensors, here {len(self._shapes)}; first difference at "
                f"{next((i for i, (a, b) in enumerate(zip(shapes, self._shapes)) if a != b), min(len(shapes), len(self._shapes)))})")
        self._check_state_shapes(state_dict)
        self._check_groups(state_dict)
        position = self._read_position(extra)
        # Everything is checked: from here on the load cannot stop half-way.
        # torch casts floating state to each param's dtype on load; state that
        # must stay fp32 (PLATON's scores) is held back and restored as fp32.
        held = {}
        fp32_keys = tuple(self.score.fp32_state_keys) + tuple(
            getattr(self.regulariser, "fp32_state_keys", ()))
        # State whose dtype is its own (a regulariser's bool / packed masks).
        exact_keys = tuple(getattr(self.regulariser, "exact_state_keys", ()))
        fp32_keys = fp32_keys + exact_keys
        if fp32_keys:
            state = {}
            for pid, st in state_dict["state"].items():
                st = dict(st)
                kept = {k: st.pop(k) for k in fp32_keys if k in st}
                if kept:
                    held[pid] = kept
                state[pid] = st
            state_dict["state"] = state
        with _hooks_held(self, "_optimizer_load_state_dict_pre_hooks"), \
                _hooks_held(self, "_optimizer_load_state_dict_post_hooks") as post_hooks:
            super().load_state_dict(state_dict)
        self._pending = None  # the loaded state replaces the step it was about
        self._inputs_checked = False  # the loaded weights have not been checked
        if held:
            for pid, p in self._saved_ids_with_params(state_dict):
                for k, v in held.get(pid, {}).items():
                    dtype = v.dtype if k in exact_keys else torch.float32
                    self.state[p][k] = v.to(device=p.device, dtype=dtype)
        for group in self.param_groups:
            group.pop("mgpp", None)  # the record is rebuilt by state_dict()
        # torch casts floating state to the param dtype; masks are bool.
        for state in self.state.values():
            if "mask" in state:
                state["mask"] = state["mask"].to(torch.bool)
        self._t, self._events, self._skipped, self._last_k, th = position
        self._threshold = None if th is None else torch.tensor(
            th, dtype=torch.float32, device=local(self._prunable()[0][2]).device)
        self.score.load_record(extra.get("extra", {}))
        for hook in post_hooks.values():
            hook(self)

    def _read_position(self, extra):
        """(t, events, skipped, last_k, threshold) of the record, each
        checked, so that a corrupt record is refused before anything loads."""
        name = type(self).__name__
        owner = f"{name}.load_state_dict"
        values = [record_field(owner, extra, key, "count") for key in ("t", "events", "skipped", "last_k")]
        th = record_field(owner, extra, "threshold", "number or None")
        record = extra.get("extra", {})
        if not isinstance(record, dict):
            raise ValueError(f"{name}.load_state_dict: the record's 'extra' must be a dict, got "
                             f"{record!r} (corrupt checkpoint)")
        return (*values, th)

    def _check_groups(self, state_dict):
        """Each saved group's AdamW values and 'prune' flag (torch's load
        takes every saved group value over), and each param's AdamW state
        complete, before anything loads."""
        name = type(self).__name__
        for i, (sg, g) in enumerate(zip(state_dict["param_groups"], self.param_groups)):
            lr = sg.get("lr")
            if isinstance(lr, torch.Tensor):
                # A tensor lr set on the group (the step reads it as a float)
                # is checked as the number it holds.
                if lr.numel() != 1 or not lr.is_floating_point():
                    raise ValueError(f"{name}.load_state_dict: saved param group {i}: a tensor lr must be one "
                                     f"floating-point element, got shape {tuple(lr.shape)} {lr.dtype}")
                lr = as_float(lr)
            try:
                check_adamw(lr, sg.get("betas"), sg.get("eps"), sg.get("weight_decay"))
            except ValueError as e:
                raise ValueError(f"{name}.load_state_dict: saved param group {i}: {e}") from None
            if sg.get("prune") != g.get("prune"):
                raise ValueError(
                    f"{name}.load_state_dict: saved param group {i} has prune={sg.get('prune')!r}, "
                    f"this optimizer's has prune={g.get('prune')!r} (it would change the prunable set)")
        moments = ("step", "exp_avg", "exp_avg_sq")
        for pid, st in state_dict["state"].items():
            have = [k for k in moments if k in st]
            if have and len(have) != len(moments):
                raise ValueError(
                    f"{name}.load_state_dict: saved state of param {pid} has {have} but not "
                    f"{[k for k in moments if k not in st]} (corrupt checkpoint)")

    def _saved_ids_with_params(self, state_dict):
        """(saved param id, param) pairs, matched by order as torch does."""
        ids = [i for sg in state_dict["param_groups"] for i in sg["params"]]
        return list(zip(ids, [p for g in self.param_groups for p in g["params"]]))

    def _check_state_shapes(self, state_dict):
        """torch zips saved state to params by order; refuse a silent misalignment."""
        name = type(self).__name__
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(sg["params"]) != len(g["params"]) for sg, g in zip(saved_groups, self.param_groups)):
            raise ValueError(f"{name}.load_state_dict: the saved param groups do not match this "
                             "optimizer's groups (number of groups or of params per group)")
        packed = tuple(getattr(self.regulariser, "packed_state_keys", ()))
        for i, p in self._saved_ids_with_params(state_dict):
            st = state_dict["state"].get(i)
            if st is None:
                continue
            for key, v in st.items():
                if not isinstance(v, torch.Tensor) or v.dim() == 0:
                    continue
                if is_dtensor(v) != is_dtensor(p) or (is_dtensor(v) and (
                        v.device_mesh != p.device_mesh or tuple(v.placements) != tuple(p.placements))):
                    how = lambda t: (f"sharded as {tuple(t.placements)} on {t.device_mesh}"  # noqa: E731
                                     if is_dtensor(t) else "not sharded")
                    raise ValueError(
                        f"{name}.load_state_dict: saved '{key}' of param {i} is {how(v)}, the param is "
                        f"{how(p)} (a checkpoint of another sharding or world size: load it with "
                        "torch.distributed.checkpoint into the same sharding)")
                # Plain state of a sharded param (a regulariser's) is this
                # rank's own piece; a packed bit mask holds ceil(numel / 8) bytes.
                ref = p if is_dtensor(v) else local(p)
                want = (-(-ref.numel() // 8),) if key in packed else tuple(ref.shape)
                if tuple(v.shape) != want:
                    raise ValueError(
                        f"{name}.load_state_dict: saved '{key}' of param {i} has shape "
                        f"{tuple(v.shape)} but the param has shape {tuple(p.shape)}"
                        f"{' (packed: ' + str(want) + ')' if key in packed else ''} "
                        "(different model or parameter order)")
