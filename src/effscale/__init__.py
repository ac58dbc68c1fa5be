"""effscale: build, measure, train and compare scaled EfficientNets.

Import is lazy so that `effscale.model_spec` and `effscale.profile` work without importing
torch-heavy parts (training, CAMs) that a caller may not need.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (module names differ from function names so that
# importing a submodule never shadows a function of the same name)
_EXPORTS = {
    "model_spec": "names", "parse_name": "names", "Variant": "names",
    "ModelSpec": "spec", "StageSpec": "spec", "BlockSpec": "spec", "round_filters": "spec",
    "round_repeats": "spec",
    "create_model": "model", "EfficientNet": "model",
    "profile": "measure", "match_flops": "measure", "Profile": "measure", "Match": "measure",
    "load_weights": "weights",
    "export_onnx": "onnx_export",
    "train": "training", "evaluate": "training",
    "study": "studies", "search": "coefsearch", "report": "reporting",
    "cam": "cams",
}


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'effscale' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
