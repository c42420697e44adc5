"""Importing OpenMMLab packages (mmseg, mmdet, mmpose) as test oracles on a CPU-only machine.

They are installed with --no-deps over mmcv-lite (requirements-oracles.txt), which lacks mmcv's
compiled ops, and mmpose's package imports reach xtcocotools (compiled against another numpy).
The oracles use neither: their package `__init__`s import them for detectors, losses and
metrics we never build. A stand-in module for each, whose attributes raise when called, lets
the imports finish without touching what the tests compare.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import pytest

# Module trees replaced by stand-ins: mmcv's compiled ops, and COCO evaluation tools.
STAND_IN_ROOTS = ("mmcv.ops", "xtcocotools")


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name} is a stand-in: the compiled package is not installed")
        return unavailable


def _in_tree(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: list[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if any(_in_tree(fullname, root) for root in self.roots):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _install_stand_ins() -> None:
    if any(isinstance(finder, _StandInFinder) for finder in sys.meta_path):
        return
    missing = []
    for root in STAND_IN_ROOTS:
        try:
            __import__(root)  # the real package, where it imports, is used
        except ImportError:
            missing.append(root)
            for name in [name for name in sys.modules if _in_tree(name, root)]:
                del sys.modules[name]  # a half-imported package left behind
    sys.meta_path.insert(0, _StandInFinder(missing))


def import_openmmlab(module: str) -> types.ModuleType:
    """Import an OpenMMLab module for a test, or skip the test when the package is absent."""
    pytest.importorskip("mmcv")
    _install_stand_ins()
    return pytest.importorskip(module)
