"""Extension list and per-compiler OpenMP flags; all metadata is in pyproject.toml."""
import os
import shlex
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ["_blas", "_kernels", "_openmp_helpers"]


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0")


def _debug():
    return _flag("CBACKPROP_DEBUG")


def _links_openmp(compiler, compile_args, link_args):
    """True when a program using the OpenMP runtime compiles and links."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp_probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\n"
                    "int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=compile_args)
            # The extensions' link gets LDFLAGS (setuptools adds them), the
            # probe's does not: without them a -fsanitize=address build
            # (CFLAGS and LDFLAGS) failed this probe and came out serial.
            compiler.link_executable(objs, os.path.join(tmp, "omp_probe"),
                                     extra_postargs=link_args
                                     + shlex.split(os.environ.get("LDFLAGS", "")))
        except Exception:
            return False
    return True


def _accepts(compiler, flag):
    """True when the C compiler compiles a trivial file with ``flag``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        try:
            compiler.compile([src], output_dir=tmp, extra_postargs=["-Werror", flag])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    """Adds the OpenMP and optimisation flags that fit the compiler in use."""

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        require_omp = _flag("CBACKPROP_REQUIRE_OPENMP")
        no_omp = _flag("CBACKPROP_NO_OPENMP")
        if require_omp and no_omp:
            raise RuntimeError(
                "CBACKPROP_REQUIRE_OPENMP and CBACKPROP_NO_OPENMP are both set."
            )
        if ctype == "msvc":
            omp_compile, omp_link = ["/openmp"], []
            compile_args = ["/O2"]
        elif sys.platform == "darwin":
            # Apple clang needs the preprocessor route and an explicit libomp.
            omp_compile, omp_link = ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
            compile_args = ["-O3"]
        else:
            omp_compile, omp_link = ["-fopenmp"], ["-fopenmp"]
            compile_args = ["-O3"]
        link_args = []
        if not no_omp:
            if _links_openmp(self.compiler, omp_compile, omp_link):
                compile_args += omp_compile
                link_args += omp_link
            elif require_omp:
                # Wheels must never be silently single-threaded.
                raise RuntimeError(
                    "CBACKPROP_REQUIRE_OPENMP is set but this compiler cannot build "
                    f"and link an OpenMP program with {omp_compile} / {omp_link}. "
                    "Install an OpenMP runtime (libgomp, libomp, vcomp)."
                )
            else:
                print("cbackprop: OpenMP not available, building single-threaded")
        # GCC's unroll-and-jam fuses pairs of sparse-row updates in the
        # first-layer kernels and leaves them scalar (2.5x slower, measured).
        if ctype != "msvc" and _accepts(self.compiler, "-fno-loop-unroll-and-jam"):
            compile_args.append("-fno-loop-unroll-and-jam")
        # sqrt() may set errno, which keeps GCC from vectorising Adam's update;
        # nothing here reads errno, and IEEE results are unchanged.
        if ctype != "msvc" and _accepts(self.compiler, "-fno-math-errno"):
            compile_args.append("-fno-math-errno")
        # `omp simd reduction` on the loop header's dot products and sums of
        # squares, also in builds without OpenMP threads.
        if ctype != "msvc" and _accepts(self.compiler, "-fopenmp-simd"):
            compile_args.append("-fopenmp-simd")
        if _debug() and ctype != "msvc":
            compile_args = [a for a in compile_args if a != "-O3"] + ["-O0", "-g"]
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + ext.extra_compile_args
            ext.extra_link_args = link_args + ext.extra_link_args
        super().build_extensions()


directives = {
    "language_level": 3,
    "boundscheck": _debug(),
    "wraparound": _debug(),
    "initializedcheck": _debug(),
    "cdivision": True,
}

extensions = [
    Extension(
        f"cbackprop.{name}",
        [f"cbackprop/{name}.pyx"],
        include_dirs=["src", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    )
    for name in MODULES
]

setup(
    # Directives are not part of cythonize's staleness check: force a fresh
    # translation when switching to or from the debug build.
    ext_modules=cythonize(extensions, compiler_directives=directives,
                          force=_debug()),
    cmdclass={"build_ext": BuildExt},
)
