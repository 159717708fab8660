"""The pruning engine shared by every method: the step loop, validation,
the inf/NaN check, events, the exact select, distributed sums and
checkpoints. See ARCHITECTURE.md for how the parts fit together."""
from .pruner import PruningOptimizer

__all__ = ["PruningOptimizer"]
