"""effscale: build, measure, train and compare scaled EfficientNets.

Import is lazy so that `effscale.model_spec` and `effscale.profile` work without importing
torch-heavy parts (training, CAMs) that a caller may not need.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it. No module or subpackage shares a public function's
# name (`effscale.train` is the function, `effscale.training` the engine's package), so
# importing any submodule never replaces a function here (tests/test_layout.py checks it).
_EXPORTS = {
    "model_spec": "model.names", "parse_name": "model.names", "Variant": "model.names",
    "ModelSpec": "model.spec", "StageSpec": "model.spec", "BlockSpec": "model.spec",
    "round_filters": "model.spec", "round_repeats": "model.spec",
    "create_model": "model.net", "EfficientNet": "model.net",
    "profile": "model.profile", "match_flops": "model.profile", "Profile": "model.profile",
    "Match": "model.profile",
    "load_weights": "io.weights",
    "export_onnx": "io.export",
    "train": "training.engine", "evaluate": "training.evaluation",
    "study": "experiments.study", "search": "experiments.search", "report": "reporting.pages",
    "cam": "explain.cam",
}


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'effscale' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
