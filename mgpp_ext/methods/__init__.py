"""The methods: each a small composition of the engine's parts, in a file
of its own. A new method goes in a new file and is named once, here."""
from .adapt_by_pruning import AdaptByPruning
from .admm import ADMM
from .fixed_mask import FixedMask
from .gmp import GMP
from .mgpp import MGPP
from .mgpp_platon import MGPPPlaton
from .movement import Movement
from .platon import PLATON
from .srste import SRSTE

#: Every method by its checkpoint name.
METHODS = {cls.method: cls for cls in (MGPP, GMP, PLATON, ADMM, SRSTE, Movement, MGPPPlaton, FixedMask,
                                        AdaptByPruning)}

__all__ = ["ADMM", "AdaptByPruning", "FixedMask", "GMP", "METHODS", "MGPP", "MGPPPlaton", "Movement", "PLATON", "SRSTE"]
