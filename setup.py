"""Build gnut._fastpath and gnut._tiger from their .pyx, unless GNUT_NO_EXTENSIONS=1 asks for pure Python."""

import os
import sys

from setuptools import Extension, setup

NO_EXTENSIONS = bool(os.environ.get("GNUT_NO_EXTENSIONS"))
# GNUT_CYTHON_ANNOTATE=1 writes the HTML annotation; GNUT_CYTHON_TRACE=1 a linetrace build.
ANNOTATE = bool(os.environ.get("GNUT_CYTHON_ANNOTATE"))
TRACE = bool(os.environ.get("GNUT_CYTHON_TRACE"))

ext_modules = []
if NO_EXTENSIONS:
    print("*** gnut: GNUT_NO_EXTENSIONS set: building PURE PYTHON (no _fastpath, no _tiger) ***", file=sys.stderr)
else:
    from Cython.Build import cythonize

    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    ext_modules = cythonize(
        [
            Extension(
                "gnut._fastpath",
                ["src/gnut/_fastpath.pyx"],
                depends=["src/gnut/_guidcache.pxi", "src/gnut/_relay.pxi", "src/gnut/_routemap.pxi"],
                extra_compile_args=["-O3"],
                define_macros=macros,
            ),
            Extension(
                "gnut._tiger",
                ["src/gnut/_tiger.pyx"],
                extra_compile_args=["-O3"],
                define_macros=macros,
            ),
        ],
        annotate=ANNOTATE,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "linetrace": TRACE,
        },
    )
    print("*** gnut: building ACCELERATED Cython fast path (gnut._fastpath, gnut._tiger) ***", file=sys.stderr)

setup(ext_modules=ext_modules)
