"""Where MGPP_EXT_LIBRARY names another build of the kernels
(scripts/test_alt_build.sh), the tests run against that build, not the
installed one."""
import os

import pytest
import torch

from mgpp_ext import ops


@pytest.mark.skipif(not os.environ.get("MGPP_EXT_LIBRARY"), reason="MGPP_EXT_LIBRARY is not set")
def test_the_named_build_is_the_one_loaded():
    ops.require_extension()
    lib = os.path.realpath(os.environ["MGPP_EXT_LIBRARY"])
    assert lib in {os.path.realpath(p) for p in torch.ops.loaded_libraries}
    import sys
    assert "mgpp_ext._C" not in sys.modules  # the installed build stayed out
