"""Argument checks shared by every method: each refuses a bad value by name,
before anything is built."""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Smallest variance whose reciprocal (and half-reciprocal) is finite in fp32.
MIN_VARIANCE = 1e-38


#: Largest finite float32: the fused ops take their hyper-parameters in float32.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_number(name, value, lo=None, hi=None, lo_open=False, hi_open=False):
    """A finite real hyper-parameter within [lo, hi] (bounds open if asked).

    Finite in float32 too: the fused ops compute in float32, where a
    larger value is inf (lr=1e39 would turn every weight into inf/NaN)."""
    if not isinstance(value, bool) and isinstance(value, numbers.Real) \
            and not isinstance(value, (int, float)):
        # A numpy or other library scalar: refused, because hyper-parameters
        # are kept in checkpoints, whose records are JSON and whose
        # torch.load(weights_only=True) takes Python numbers only.
        raise ValueError(f"{name} must be a Python int or float, got {type(value).__name__} {value!r}: "
                         f"pass float({name})")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not abs(value) <= FLOAT32_MAX:
        raise ValueError(f"{name} must be finite in float32 (|{name}| <= {FLOAT32_MAX:.4g}), got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value}")


def python_numbers(group):
    """A saved param group's library scalars (numpy's float64 is a float,
    and an LR scheduler computing from it keeps it so) as Python numbers,
    in place: ``torch.load(weights_only=True)``, torch's default, refuses
    any other type. Plain tuples and lists (``betas``) are converted
    elementwise; tensors, bools and everything else are left alone."""
    def plain(v):  # (a tensor is no numbers.Real)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or type(v) in (int, float):
            return v
        return int(v) if isinstance(v, numbers.Integral) else float(v)

    for key, v in group.items():
        if key == "params":
            continue
        if type(v) in (tuple, list):  # not a namedtuple or other subclass: left as given
            group[key] = type(v)(plain(x) for x in v)
        else:
            group[key] = plain(v)
    return group


def record_field(owner, record, key, kind, default=None):
    """``record[key]`` of a checkpoint record, checked by kind before
    anything loads: "count" (an int >= 0), "number" (an int or float),
    "number or None", "bool". ``default`` stands in for a missing key;
    owner names the loader in the error (e.g. ``"MGPP.load_state_dict"``)."""
    v = record.get(key, default)
    number = not isinstance(v, bool) and isinstance(v, (int, float))
    if kind == "count":
        ok, what = number and isinstance(v, int) and v >= 0, "an int >= 0"
    elif kind == "number":
        ok, what = number, "a number"
    elif kind == "number or None":
        ok, what = v is None or number, "a number or None"
    elif kind == "bool":
        ok, what = isinstance(v, bool), "a bool"
    else:
        raise ValueError(f"record_field: kind must be 'count', 'number', 'number or None' or 'bool', "
                         f"got {kind!r}")
    if not ok:
        raise ValueError(f"{owner}: the record's '{key}' must be {what}, got {v!r} (corrupt checkpoint)")
    return v


def check_adamw(lr, betas, eps, weight_decay):
    """AdamW's own arguments."""
    check_number("lr", lr, lo=0.0)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        check_number(f"betas[{i}]", b, lo=0.0, hi=1.0, hi_open=True)
    check_number("eps", eps, lo=0.0, lo_open=True)
    check_number("weight_decay", weight_decay, lo=0.0)


def check_on_nonfinite(on_nonfinite, propagate=True):
    """``propagate``: whether the caller offers ``"propagate"`` (the engine's
    methods do; a mask learner over frozen weights does not)."""
    allowed = ("raise", "skip", "propagate") if propagate else ("raise", "skip")
    if on_nonfinite not in allowed:
        names = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"on_nonfinite must be {names}, got {on_nonfinite!r}")


def check_param_group(owner, param_group):
    """Normalise and check one param group; returns the group to add.

    Accepts ``named_parameters()`` pairs, as ``torch.optim`` does, keeping
    the names under ``"param_names"``."""
    params = param_group["params"]
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    # The list, not what was given: a generator (model.parameters()) is
    # used up by the read above, and torch would then add an empty group.
    param_group = dict(param_group)
    param_group["params"] = params
    if params and all(isinstance(p, tuple) and len(p) == 2 for p in params):
        param_group.setdefault("param_names", [n for n, _ in params])
        params = [p for _, p in params]
        param_group["params"] = params
    seen = {}
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{owner}: params[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if id(p) in seen:
            # torch.optim only warns; here the tensor would take two AdamW
            # steps per step and count twice among the weights ranked.
            raise ValueError(f"{owner}: params[{i}] is params[{seen[id(p)]}] again; "
                             "a param group must list each tensor once")
        seen[id(p)] = i
        if p.layout != torch.strided:
            raise ValueError(f"{owner}: params[{i}] is a {p.layout} tensor; only dense tensors are supported")
        if p.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{owner}: params[{i}] has dtype {p.dtype}; supported are float32, bfloat16, float16")
    prune = param_group.get("prune", None)
    if prune is not None and not isinstance(prune, bool):
        raise TypeError(f"{owner}: a param group's 'prune' must be a bool, got {prune!r}")
    names = param_group.get("param_names")
    if names is not None and len(names) != len(params):
        raise ValueError(f"{owner}: 'param_names' has {len(names)} names for {len(params)} params")
    return param_group
