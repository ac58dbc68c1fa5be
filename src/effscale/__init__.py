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
    "model_spec": "names", "parse_name": "names", "Variant": "names",
    "ModelSpec": "spec", "StageSpec": "spec", "BlockSpec": "spec", "round_filters": "spec",
    "round_repeats": "spec",
    "create_model": "model", "EfficientNet": "model",
    "profile": "measure", "match_flops": "measure", "Profile": "measure", "Match": "measure",
    "load_weights": "weights",
    "export_onnx": "onnx_export",
    "train": "train", "evaluate": "train",
    "study": "studies", "search": "coefsearch", "report": "reporting",
    "cam": "cams",
}


class _Package(types.ModuleType):
    """Keeps `effscale.train` the function: importing the subpackage effscale.train (by any
    route, e.g. `from effscale.train import Config`) makes the import system set it as an
    attribute here, and that would replace the function with the package."""

    def __setattr__(self, name, value):
        if name == "train" and isinstance(value, types.ModuleType):
            value = value.train
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'effscale' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
