"""Only the optional C accelerator of near-dedup; everything else is in pyproject.toml.

`optional=True`: without a compiler the install still succeeds and curation uses the NumPy path,
which computes the same results (tests compare the two), only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "codeparrot.curate._native",
            sources=["codeparrot/curate/_native.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
