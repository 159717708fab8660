"""One-shot pruning of a pretrained causal LM from a little calibration text.

``prune(model, calibration, *, method, sparsity, pattern=None, **options)``
prunes the linear sublayers of every decoder layer in place, layer by
layer, and returns a per-layer report; ``perplexity(model, token_ids, *,
seq_len)`` evaluates the result. Methods (each in a file of its own):

- ``"magnitude"``: the smallest |W| of each linear sublayer;
- ``"wanda"`` (Sun et al. 2023): |W_ij| * ||X_j||_2 over the calibration
  tokens, compared within each output row (n:m: within each group);
- ``"sparsegpt"`` (Frantar and Alistarh 2023): masks by w^2 / [H^-1]_jj^2
  and OBS updates of the remaining weights, in blocks of 128 columns.

``sds(model, calibration, *, method, sparsity, pattern=None, **options)``
is sparse-dense-sparse (``sds.py``): a one-shot pruning, a layer-wise dense
reconstruction of the dense model's outputs under a sparsity-friendly
regulariser, and a second one-shot pruning.

All are sequential (``sequential.py``): the inputs of decoder layer 0 are
recorded, then each layer's statistics are collected with hooks in one
pass, its sublayers pruned, and the layer re-run so that the next one is
calibrated on the pruned outputs. One layer's activations are held at a
time. Llama-style (``model.model.layers``) and GPT-2-style
(``model.transformer.h``) decoders are found automatically.
"""
from __future__ import annotations

from .perplexity import perplexity
from .sds import sds
from .sequential import METHODS, prune

__all__ = ["METHODS", "perplexity", "prune", "sds"]
