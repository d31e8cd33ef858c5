"""Shared pytest fixtures: `impl` (the Cython and the pure hot path) and `run` (uvloop and asyncio)."""

from __future__ import annotations

import asyncio
import importlib
import os

import pytest
from nethelpers import LOOPS  # every real-socket test runs on uvloop and on asyncio

from gnut.runtime import loops

# The Cython half is imported directly (never via gnut.fastpath), so a missing build is an error,
# not a silent second run of the pure twin. `--no-cython` or GNUT_NO_EXTENSIONS=1 deselects it.
_IMPLS = {"cython": "gnut._fastpath", "python": "gnut._purepath"}
# The same for the Tiger hash (`tiger_impl`): gnut._tiger is imported directly too.
_TIGER_IMPLS = {"cython": "gnut._tiger", "python": "gnut._puretiger"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-cython", action="store_true", help="skip the Cython half of `impl` tests")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_cython: imports gnut._fastpath directly (deselected like impl=cython)"
    )


def _cython_disabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--no-cython") or os.environ.get("GNUT_NO_EXTENSIONS"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _cython_disabled(config):
        return
    kept, deselected = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if "cython" in (params.get("impl"), params.get("tiger_impl")) or item.get_closest_marker(
            "needs_cython"
        ):
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(params=list(_IMPLS), ids=list(_IMPLS))
def impl(request: pytest.FixtureRequest):
    """The hot-path module under test: gnut._fastpath ("cython") or gnut._purepath ("python")."""
    return importlib.import_module(_IMPLS[request.param])


@pytest.fixture(params=list(_TIGER_IMPLS), ids=list(_TIGER_IMPLS))
def tiger_impl(request: pytest.FixtureRequest):
    """The Tiger module under test: gnut._tiger ("cython") or gnut._puretiger ("python")."""
    return importlib.import_module(_TIGER_IMPLS[request.param])


@pytest.fixture(params=LOOPS)
def run(request):
    """Run a coroutine on the parametrized loop; fail if the loop's exception handler was called."""

    def runner(coro_fn):
        errors = []

        async def main():
            asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
            return await coro_fn()

        result = loops.run(main(), request.param)
        assert not errors, f"event loop exception handler called: {errors}"
        return result

    return runner
