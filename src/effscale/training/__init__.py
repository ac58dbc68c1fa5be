"""The training engine, `train(config, **overrides) -> summary`, and `evaluate(checkpoint)`.

Modules, in the order a run uses them: config (the `Config` schema, reading and checking it),
engine (`train`: setup, the epoch loop, the end of each epoch), state (`RunState`: what
state.pt saves and resuming restores; RNG states; metrics.csv), build (the model, maybe from
pretrained weights), steps (lr schedule, micro-batches, OOM retry), devices (precision,
distributed), output (progress, TensorBoard, summary.json), evaluation (accuracy).

`effscale.train` is the function `train`; this package is `effscale.training` (no module here
is named like a function it exports, so the import order below does not matter).
"""

from .config import (PRECISIONS, RUNTIME_FIELDS, Config, fit_to_data, make_config,
                     read_config_file)
from .devices import Dist, autocast, resolve_precision, setup_distributed
from .engine import NonFiniteLossError, Run, train
from .evaluation import evaluate, evaluate_model
from .state import (METRIC_FIELDS, PREVIOUS_STATE_FILE, STATE_FILE, RunState, load_latest,
                    read_state, rng_state, seed_everything, set_rng_state, write_metrics)
from .steps import apply_schedule, forward_backward, step_with_retry

__all__ = ["Config", "Dist", "METRIC_FIELDS", "NonFiniteLossError", "PRECISIONS",
           "PREVIOUS_STATE_FILE", "RUNTIME_FIELDS", "Run", "RunState", "STATE_FILE",
           "apply_schedule", "autocast", "evaluate", "evaluate_model", "forward_backward",
           "fit_to_data", "load_latest", "make_config", "read_config_file", "read_state",
           "resolve_precision", "rng_state", "seed_everything", "set_rng_state",
           "setup_distributed", "step_with_retry", "train", "write_metrics"]
