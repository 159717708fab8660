"""Build mgpp_ext._C: the CPU kernels always, the CUDA kernels when torch has
CUDA and nvcc is found.

Environment switches:
  FORCE_CUDA=1       build the CUDA kernels even if no GPU is visible
  MGPP_CPU_ONLY=1    never build the CUDA kernels
  TORCH_CUDA_ARCH_LIST is honoured by torch's cpp_extension.

Build against the installed torch with ``pip install --no-build-isolation .``
(an isolated build environment would download a different torch).
"""
import glob
import os
import platform

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _cpu_has(feature):
    try:
        with open("/proc/cpuinfo") as f:
            return any(feature in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


# The C++ flags of every build, and those of each x86 vector build with the
# CPU features it needs (also read, as literals, by
# scripts/compile_check_cpu_arch.py, which checks the vector builds this
# machine does not run).
# -ffp-contract=off: no silent fused multiply-adds, so the kernel rounds
# like the eager reference it is tested against.
BASE_CXX = ["-O3", "-std=c++17", "-ffp-contract=off", "-fvisibility=hidden",
            "-Wno-unknown-pragmas"]  # torch's vec512 headers carry nvcc-only pragmas
ARCH_CXX = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}
# The /proc/cpuinfo flags a machine needs for setup.py to pick that build.
ARCH_FEATURES = {
    "avx512": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"],
    "avx2": ["avx2", "fma"],
}


def _want_cuda():
    if _flag("MGPP_CPU_ONLY"):
        return False
    if _flag("FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None and torch.cuda.is_available()


def extension():
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = list(BASE_CXX)
    # at::vec picks its implementation from the CPU_CAPABILITY macros; the
    # build machine is the machine that runs the kernels (an editable or
    # local install), so its widest vectors are used. MGPP_CPU_ARCH=avx2 or
    # =generic builds for an older CPU.
    arch = os.environ.get("MGPP_CPU_ARCH", "native")
    x86 = platform.machine() in ("x86_64", "AMD64")
    has = lambda build: all(_cpu_has(f) for f in ARCH_FEATURES[build])  # noqa: E731
    if x86 and arch == "native" and has("avx512"):
        cxx += ARCH_CXX["avx512"]
    elif x86 and arch in ("native", "avx2") and has("avx2"):
        cxx += ARCH_CXX["avx2"]
    elif arch not in ("native", "avx2", "generic"):
        raise SystemExit(f"MGPP_CPU_ARCH must be native, avx2 or generic, got {arch!r}")
    if torch.backends.openmp.is_available():
        cxx += ["-fopenmp"]
    extra = {"cxx": cxx}
    if _want_cuda():
        sources += rel("csrc/cuda/*.cu")
        extra["nvcc"] = ["-O3", "-std=c++20",  # torch 2.11+ headers expect C++20
                         "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension("mgpp_ext._C", sources, extra_compile_args=extra,
                             include_dirs=[os.path.join(HERE, "csrc")],
                             extra_link_args=["-fopenmp"] if "-fopenmp" in cxx else [])
    return CppExtension("mgpp_ext._C", sources, extra_compile_args=extra,
                        include_dirs=[os.path.join(HERE, "csrc")],
                        extra_link_args=["-fopenmp"] if "-fopenmp" in cxx else [])


setup(
    name="mgpp-ext",
    version="0.1.0",
    description="Fused mixture-Gaussian-prior pruning (MGPP) for fine-tuning transformers",
    packages=find_packages(include=["mgpp_ext", "mgpp_ext.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=[],  # torch is a build-time and run-time requirement installed by the user's setup
)
