"""Training recipes as frozen data. Every field can be overridden by a flag or a config key
of the same name; `training.Config` holds the resolved values.

- `seed`: the CIFAR-10 study this project reproduces (REFERENCE.md). Its optimizer is
  PyTorch's RMSprop (eps added *outside* the square root) with momentum 0.9, alpha 0.9,
  eps 0.1; the study gives no lr or schedule constants, so ours are: lr 0.016 x batch/256,
  2 linear warm-up epochs, then x0.94 per epoch (0.13x the peak at epoch 35).
- `paper`: the TF reference (tensorflow/tpu efficientnet): TF RMSprop (eps 1e-3 *inside* the
  square root, lr folded into the momentum), lr 0.016 x batch/256, 5 warm-up epochs, then
  x0.97 every 2.4 epochs (staircase), L2 1e-5 not on BN or bias, label smoothing 0.1,
  weight EMA 0.9999 with TF's num_updates warm-up, stochastic depth 0.2, AutoAugment.
  With `pretrained` it is the paper's transfer recipe: the same, lr / 4.
- `fast`: the most accuracy in the fewest epochs. SGD with Nesterov momentum 0.9 and a
  short linear warm-up into a cosine decay to zero: the cosine tail anneals the weights so a
  10-20 epoch run ends at a sharp minimum instead of at a still-high exponential lr, and
  Nesterov SGD tolerates the high peak lr that short runs need (RMSprop's per-weight scaling
  makes early steps erratic, which is why the paper needs 5 warm-up epochs of 350).
  Label smoothing 0.1 and EMA (with the num_updates warm-up, so it averages over roughly the
  last tenth of a short run) add ~1 point each; weight decay 5e-5 not on BN/bias; stochastic
  depth 0.1 (0.2 under-fits in few epochs). See tests and BENCHMARKS.md for measurements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    optimizer: str          # "rmsprop" (PyTorch semantics), "rmsprop_tf", "sgd", "adamw"
    lr: float | None        # None: lr_per_256 x batch_size / 256
    lr_per_256: float
    momentum: float
    alpha: float            # RMSprop squared-gradient decay (TF "decay", PyTorch "alpha")
    eps: float
    weight_decay: float
    decay_bn_bias: bool     # apply weight decay to BN weights and biases too?
    schedule: str           # "exponential" (per epoch), "step" (x decay_rate every
    #                         decay_epochs, staircase), "cosine" (to 0)
    warmup_epochs: float
    warmup_start: float     # warm-up starts at this fraction of the peak lr
    decay_rate: float
    decay_epochs: float
    label_smoothing: float
    ema_decay: float        # 0: no EMA
    drop_path_rate: float
    autoaugment: str        # "none", "autoaugment", "randaugment"
    # flip, crop padding and cutout: None = the dataset's default (data.default_augment:
    # no flip for digits, padding ~1/8 of the side)
    flip: bool | None
    crop_padding: int | None  # random crop with this padding (in native pixels)
    cutout: int | None        # square cutout side in native pixels, 0: none
    grad_clip: float        # max global grad norm, 0: none
    pretrained_lr_scale: float = 1.0  # lr multiplier when fine-tuning from --pretrained

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    "seed": Recipe(
        name="seed", epochs=35, batch_size=64, optimizer="rmsprop", lr=None, lr_per_256=0.016,
        momentum=0.9, alpha=0.9, eps=0.1, weight_decay=1e-5, decay_bn_bias=True,
        schedule="exponential", warmup_epochs=2, warmup_start=0.1, decay_rate=0.94,
        decay_epochs=1.0, label_smoothing=0.0, ema_decay=0.0, drop_path_rate=0.2,
        autoaugment="none", flip=None, crop_padding=None, cutout=None, grad_clip=0.0),
    "paper": Recipe(
        name="paper", epochs=350, batch_size=256, optimizer="rmsprop_tf", lr=None,
        lr_per_256=0.016, momentum=0.9, alpha=0.9, eps=1e-3, weight_decay=1e-5,
        decay_bn_bias=False, schedule="step", warmup_epochs=5, warmup_start=0.0,
        decay_rate=0.97, decay_epochs=2.4, label_smoothing=0.1, ema_decay=0.9999,
        drop_path_rate=0.2, autoaugment="autoaugment", flip=None, crop_padding=None, cutout=None,
        grad_clip=0.0, pretrained_lr_scale=0.25),
    "fast": Recipe(
        name="fast", epochs=15, batch_size=128, optimizer="sgd", lr=None, lr_per_256=0.4,
        momentum=0.9, alpha=0.9, eps=1e-8, weight_decay=5e-5, decay_bn_bias=False,
        schedule="cosine", warmup_epochs=1, warmup_start=0.1, decay_rate=0.0,
        decay_epochs=0.0, label_smoothing=0.1, ema_decay=0.999, drop_path_rate=0.1,
        autoaugment="none", flip=None, crop_padding=None, cutout=None, grad_clip=0.0,
        pretrained_lr_scale=0.1),
}

OPTIMIZERS = ("rmsprop", "rmsprop_tf", "sgd", "adamw")
SCHEDULES = ("exponential", "step", "cosine")
RECIPE_FIELDS = tuple(f.name for f in fields(Recipe) if f.name != "name")


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
