"""Training recipes as frozen data: each a partial set of Config values over the engine's
DEFAULTS. Every value can be overridden by a flag or a config key of the same name;
training/config.py merges the layers once (`make_config`).

- `seed`: the CIFAR-10 study this project reproduces (docs/REFERENCE.md). Its optimizer is
  PyTorch's RMSprop (eps added *outside* the square root) with momentum 0.9, alpha 0.9,
  eps 0.1; the study gives no lr or schedule constants, so ours are: lr 0.016 x batch/256,
  2 linear warm-up epochs, then x0.94 per epoch (0.13x the peak at epoch 35).
- `paper`: the TF reference (tensorflow/tpu efficientnet): TF RMSprop (eps 1e-3 *inside* the
  square root, lr folded into the momentum), lr 0.016 x batch/256, 5 warm-up epochs, then
  x0.97 every 2.4 epochs (staircase), L2 1e-5 not on BN or bias, label smoothing 0.1,
  weight EMA 0.9999 with TF's num_updates warm-up, stochastic depth 0.2, AutoAugment.
  With `pretrained` it is the paper's transfer recipe: the same, lr / 4.
- `fast`: the most accuracy in the fewest epochs, the default. SGD with Nesterov momentum
  and a OneCycle-style schedule: a linear warm-up over the first 10% of the run's *steps*
  from peak / 25, then a cosine decay to zero, with momentum cycled against the lr (0.95 at
  lr 0, 0.85 at the peak). Peak lr 0.4 per 256 images; the batch (128) is halved, not below
  16, until an epoch has >= 20 steps, so a tiny dataset gets enough steps (digits: 64).
  Label smoothing 0.1, EMA 0.999 with the num_updates warm-up (it averages over roughly the
  last tenth of a short run), weight decay 5e-5 not on BN/bias, stochastic depth 0.1;
  residual blocks start as the identity and the classifier at zero (`zero_init`), which is
  what lets depth- and width-scaled models train at this lr (model.zero_init has numbers).
  Why the rest (digits, b0@w=0.5,d=0.5,res=32, 10 epochs, 3 seeds, mean +- sd top-1): the previous
  defaults (one-epoch warm-up from 0.1x, constant momentum 0.9, batch 128, a 1-px crop) gave
  38.7 +- 25.8: the weights outran BatchNorm's running statistics and eval sat near chance;
  no crop, warm-up from peak / 25 and cycled momentum at batch 128: 89.2 +- 5.2 at 0.4/256,
  95.3 +- 1.4 at 0.2/256; at batch 64 (>= 20 steps an epoch): 97.1 +- 0.4 at 0.4/256, 96.5 at
  0.2/256, 94.6 at 0.1/256; with zero_init and the EMA's BatchNorm statistics recomputed
  before each evaluation (training/evaluation.py), the defaults give 98.4 +- 0.3. Tried and not
  taken, against 96.5 +- 0.3 at batch 64, 0.2/256: no stochastic depth 96.5, weight decay
  5e-4 96.2, no label smoothing 96.7, cutout 2 px 95.9; no EMA 95.2 against 95.3 (batch 128).
  BENCHMARKS.md compares the defaults with a plain loop.
"""

from __future__ import annotations

from types import MappingProxyType

# What a recipe leaves unsaid: the engine's own defaults for the values recipes set (the
# lowest layer of the merge in training/config.py: these < recipe < file < flags/keywords).
DEFAULTS = MappingProxyType(dict(
    pretrained_lr_scale=1.0,   # lr multiplier when fine-tuning from --pretrained
    warmup_fraction=0.0,       # the warm-up lasts at least this fraction of the run
    momentum_at_peak=None,     # momentum at the peak lr (None: constant momentum)
    min_steps_per_epoch=0,     # default batch halved (down to 16) until an epoch has at least
    #                            this many steps
    zero_init=False,           # residual blocks start as the identity, the classifier at 0
    # None: the dataset's default (data.default_augment: no flip for digits, padding ~1/8 of
    # the side, no cutout)
    flip=None, crop_padding=None, cutout=None,
    grad_clip=0.0,             # max global grad norm, 0: none
))

# Each recipe: the Config values it sets, over DEFAULTS. batch_size is the recipe's batch
# before it is fitted to the data (config.fit_to_data); the lr is always lr_per_256 x
# batch / 256 unless given. optimizer: "rmsprop" (PyTorch semantics), "rmsprop_tf", "sgd",
# "adamw"; alpha: RMSprop's squared-gradient decay (TF "decay"); schedule: "exponential"
# (per epoch), "step" (x decay_rate every decay_epochs, staircase), "cosine" (to 0);
# warmup_start: the warm-up starts at this fraction of the peak lr; ema_decay 0: no EMA.
RECIPES = {
    "seed": MappingProxyType(dict(
        epochs=35, batch_size=64, optimizer="rmsprop", lr_per_256=0.016, momentum=0.9,
        alpha=0.9, eps=0.1, weight_decay=1e-5, decay_bn_bias=True, schedule="exponential",
        warmup_epochs=2, warmup_start=0.1, decay_rate=0.94, decay_epochs=1.0,
        label_smoothing=0.0, ema_decay=0.0, drop_path_rate=0.2, autoaugment="none")),
    "paper": MappingProxyType(dict(
        epochs=350, batch_size=256, optimizer="rmsprop_tf", lr_per_256=0.016, momentum=0.9,
        alpha=0.9, eps=1e-3, weight_decay=1e-5, decay_bn_bias=False, schedule="step",
        warmup_epochs=5, warmup_start=0.0, decay_rate=0.97, decay_epochs=2.4,
        label_smoothing=0.1, ema_decay=0.9999, drop_path_rate=0.2, autoaugment="autoaugment",
        pretrained_lr_scale=0.25)),
    "fast": MappingProxyType(dict(
        epochs=15, batch_size=128, optimizer="sgd", lr_per_256=0.4, momentum=0.95, alpha=0.9,
        eps=1e-8, weight_decay=5e-5, decay_bn_bias=False, schedule="cosine", warmup_epochs=0,
        warmup_start=0.04, decay_rate=0.0, decay_epochs=0.0, label_smoothing=0.1,
        ema_decay=0.999, drop_path_rate=0.1, autoaugment="none", pretrained_lr_scale=0.1,
        warmup_fraction=0.1, momentum_at_peak=0.85, min_steps_per_epoch=20, zero_init=True)),
}

OPTIMIZERS = ("rmsprop", "rmsprop_tf", "sgd", "adamw")
SCHEDULES = ("exponential", "step", "cosine")
# every Config key a recipe governs: None in a Config means "the recipe's" for these
RECIPE_FIELDS = tuple(dict.fromkeys([*RECIPES["fast"], *DEFAULTS]))


def fit_batch(batch_size: int, train_size: int, min_steps_per_epoch: int) -> int:
    """The recipe's batch size, halved (not below 16) until an epoch of `train_size` images
    has at least `min_steps_per_epoch` steps. A tiny dataset at a large batch gives too few
    steps to train in a few epochs (digits at 128: 10 an epoch, 100 in a 10-epoch run);
    a large one keeps the large batch, which is faster per image."""
    while batch_size > 16 and train_size // batch_size < min_steps_per_epoch:
        batch_size //= 2
    return batch_size


def get_recipe(name: str) -> MappingProxyType:
    """The recipe's values over DEFAULTS: every key of RECIPE_FIELDS."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return MappingProxyType({**DEFAULTS, **RECIPES[name]})
