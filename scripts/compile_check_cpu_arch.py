"""Compile-checks the CPU kernels for the x86 vector builds this machine
does not run.

setup.py builds the CPU kernels once, for the build machine's widest
vectors: an AVX2-only machine never compiles the AVX-512 branches of
csrc/cpu (and an AVX-512 machine never compiles the AVX2 ones), so a typo
there would only show on the next machine of the other kind. This runs the
compiler's front end (-fsyntax-only: parsing, overload resolution and
template instantiation, no code generation) over csrc/cpu/*.cpp with each
other build's flags, read from setup.py (BASE_CXX, ARCH_CXX) so they
cannot drift. It catches type and declaration errors, not wrong results:
those need the tests on a machine of that kind.

    python scripts/compile_check_cpu_arch.py          # the builds not run here
    python scripts/compile_check_cpu_arch.py avx512   # named builds

Exit status 0 when every file compiles (or on a machine that is not x86-64,
where the x86 flags do not apply), 1 otherwise.
"""
import ast
import concurrent.futures
import glob
import os
import platform
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SETUP_NAMES = ("BASE_CXX", "ARCH_CXX", "ARCH_FEATURES")


def setup_constants():
    """BASE_CXX, ARCH_CXX and ARCH_FEATURES as setup.py assigns them (literals)."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name in SETUP_NAMES:
                found[name] = ast.literal_eval(node.value)
    missing = set(SETUP_NAMES) - set(found)
    if missing:
        sys.exit(f"compile_check_cpu_arch: setup.py no longer assigns {sorted(missing)} as literals")
    return tuple(found[name] for name in SETUP_NAMES)


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_arch(arch_features):
    """The vector build setup.py picks on this machine (its "native"): the
    first of ARCH_FEATURES, widest first, whose features it has."""
    have = cpu_flags()
    return next((a for a, need in arch_features.items() if set(need) <= have), "generic")


def check(arch, source, flags, cxx):
    cmd = [cxx, *flags, "-fsyntax-only", source]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return arch, source, proc.returncode, proc.stderr


def main(argv):
    if platform.machine() not in ("x86_64", "AMD64"):
        print(f"cpu arch compile check: skipped ({platform.machine()} is not x86-64)")
        return 0
    base, arch_cxx, arch_features = setup_constants()
    unknown = [a for a in argv if a not in arch_cxx]
    if unknown:
        sys.exit(f"compile_check_cpu_arch: unknown build(s) {unknown}; setup.py has {sorted(arch_cxx)}")
    native = native_arch(arch_features)
    archs = argv or [a for a in arch_cxx if a != native]
    if not archs:
        print(f"cpu arch compile check: nothing to do (this machine builds {native})")
        return 0

    import torch
    from torch.utils.cpp_extension import include_paths

    includes = [os.path.join(ROOT, "csrc"), *include_paths(), sysconfig.get_paths()["include"]]
    common = [f"-I{p}" for p in includes]
    if torch.backends.openmp.is_available():
        common.append("-fopenmp")  # the OpenMP pragmas are parsed as in the build
    sources = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc/cpu/*.cpp")))
    cxx = os.environ.get("CXX", "c++")
    jobs = [(a, s, [*base, *arch_cxx[a], *common]) for a in archs for s in sources]
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for arch, source, rc, err in pool.map(lambda j: check(*j, cxx), jobs):
            if rc != 0:
                failed += 1
                print(f"cpu arch compile check: FAILED for {source} ({arch} build)", file=sys.stderr)
                print("\n".join(l for l in err.splitlines() if "error" in l) or err, file=sys.stderr)
    print(f"cpu arch compile check ({', '.join(archs)}; this machine builds {native}): "
          f"{len(jobs) - failed} of {len(jobs)} compiles passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
