"""mgpp-ext: prune pretrained transformers while they are fine-tuned.

``MGPP`` is a drop-in replacement for ``torch.optim.AdamW`` that adds the
gradient of a mixture Gaussian (spike-and-slab) prior, follows a cubic
sparsity schedule and prunes with one exact global magnitude threshold
(Zhang, Sun, Liang, arXiv 2411.00969). The step runs in fused C++/CUDA
kernels; ``mgpp_ext.reference`` holds the plain-PyTorch specification.
"""
from . import export, importance, ops
from .export import sparsity_report
from .nm import nm_mask, nm_prune_
from .patterns import GlobalPattern, NMPattern, RowPattern, TensorPattern
from .rows import row_keep_mask
from .engine import PruningOptimizer
from .methods import ADMM, AdaptByPruning, GMP, METHODS, MGPP, PLATON, SRSTE, FixedMask, MGPPPlaton, Movement
from .schedule import Schedule
from .selection import prunable_param_groups

__all__ = ["ADMM", "AdaptByPruning", "FixedMask", "GMP", "GlobalPattern", "METHODS", "MGPP", "MGPPPlaton", "Movement", "NMPattern", "PLATON", "PruningOptimizer", "SRSTE",
           "RowPattern", "TensorPattern", "nm_mask", "nm_prune_", "row_keep_mask", "Schedule", "export", "ops", "prunable_param_groups", "sparsity_report"]
__version__ = "0.1.0"
