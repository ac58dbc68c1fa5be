"""effscale: build, measure, train and compare scaled EfficientNets.

Import is lazy so that `effscale.model_spec` and `effscale.profile` work without importing
torch-heavy parts (training, CAMs) that a caller may not need.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> module that defines it. Module names differ from function names so that
# importing a submodule never shadows a function of the same name, except `train`: the
# function effscale.train lives in the subpackage effscale.train (see _Package).
_EXPORTS = {
    "model_spec": "model.names", "parse_name": "model.names", "Variant": "model.names",
    "ModelSpec": "model.spec", "StageSpec": "model.spec", "BlockSpec": "model.spec",
    "round_filters": "model.spec", "round_repeats": "model.spec",
    "create_model": "model.net", "EfficientNet": "model.net",
    "profile": "model.profile", "match_flops": "model.profile", "Profile": "model.profile",
    "Match": "model.profile",
    "load_weights": "io.weights",
    "export_onnx": "io.export",
    "train": "train", "evaluate": "train",
    "study": "experiments.study", "search": "experiments.search", "report": "report.pages",
    "cam": "explain.cam",
}
# Functions that share their name with a subpackage (effscale.train, effscale.report): the
# function wins at the top level, the subpackage stays importable by its full name.
_SHADOWED = ("train", "report")


class _Package(types.ModuleType):
    """Keeps `effscale.train` and `effscale.report` the functions: importing the subpackage of
    the same name (by any route, e.g. `from effscale.train import Config`) makes the import
    system set it as an attribute here, and that would replace the function with the package."""

    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'effscale' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
