"""Training augmentation as batched tensor ops on uint8 images (the airbench way).

All randomness for a batch comes from one CPU `torch.Generator` the caller seeds from
(seed, epoch, rank, batch): results do not depend on the global RNG, on the device, or on
which batches came before, so a resumed epoch replays exactly. The random draws are made on
the CPU (a few numbers per image) and the pixel work happens on the images' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUTOAUGMENT_POLICIES = ("none", "randaugment", "autoaugment")
PAD_MODES = ("reflect", "zeros")


@dataclass(frozen=True)
class Augment:
    """What training augmentation to apply. Sizes are in native pixels.

    crop_padding: random crop after padding by this many pixels (0 = off).
    flip:         random horizontal flip (off for digits: a mirrored digit is another shape).
    cutout:       side of a square set to the dataset mean at a random place (0 = off).
    autoaugment:  "none" | "randaugment" | "autoaugment": torchvision's policies, applied per
                  image on the imagefolder path; on in-memory datasets per group of images
                  (see `policy_batch`).
    pad_mode:     how crop padding fills the border: "reflect" or "zeros".
    """

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0
    autoaugment: str = "none"
    pad_mode: str = "reflect"

    def __post_init__(self):
        if self.crop_padding < 0 or self.cutout < 0:
            raise ValueError(f"crop_padding and cutout must be >= 0, got {self.crop_padding}, "
                             f"{self.cutout}")
        if self.autoaugment not in AUTOAUGMENT_POLICIES:
            raise ValueError(f"unknown autoaugment {self.autoaugment!r}; valid: "
                             f"{', '.join(AUTOAUGMENT_POLICIES)}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"unknown pad_mode {self.pad_mode!r}; valid: {', '.join(PAD_MODES)}")

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.cutout or self.autoaugment != "none")


NO_AUGMENT = Augment()

# Per dataset: padding about 1/8 of the side, as in the usual CIFAR recipe (4 px of 32).
_DEFAULTS = {
    "digits": Augment(crop_padding=0, flip=False),  # 1 px of 8 is a 12.5% shift: costs ~8 points
    "fashion-mnist": Augment(crop_padding=2, flip=True),
    "cifar10": Augment(crop_padding=4, flip=True),
    "cifar100": Augment(crop_padding=4, flip=True),
    "imagefolder": Augment(flip=True),  # RandomResizedCrop is always on for decoded files
}


def default_augment(dataset_name: str) -> Augment:
    """The training augmentation a dataset gets unless the caller says otherwise."""
    from .splits import decoded_source  # folders, CSV files and Python datasets alike
    key = "imagefolder" if decoded_source(dataset_name) else dataset_name
    if key not in _DEFAULTS:
        raise ValueError(f"unknown dataset {dataset_name!r}; valid: {', '.join(_DEFAULTS)}")
    return _DEFAULTS[key]


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices back inside [0, size) without repeating the edge pixel."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop_flip(images: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Random padded crop and horizontal flip in one gather per axis (no padded copy)."""
    n, c, h, w = images.shape
    pad = min(aug.crop_padding, h - 1, w - 1)  # reflection needs pad < side
    shift = torch.randint(-pad, pad + 1, (2, n), generator=gen) if pad else torch.zeros(2, n, dtype=torch.long)
    flip = torch.rand(n, generator=gen) < 0.5 if aug.flip else torch.zeros(n, dtype=torch.bool)
    rows = shift[0, :, None] + torch.arange(h)  # (n, h) source row per output row
    cols = shift[1, :, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    if aug.pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
        valid = None
    else:
        valid = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    dev = images.device
    rows, cols = rows.to(dev, non_blocking=True), cols.to(dev, non_blocking=True)
    out = images.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if valid is not None:
        out = out * valid.to(dev, non_blocking=True)
    return out


def cutout(images: torch.Tensor, size: int, fill: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Set a size x size square (clipped at the border) of each image to `fill` (C,) uint8."""
    n, _, h, w = images.shape
    top = torch.randint(0, h, (n,), generator=gen) - size // 2
    left = torch.randint(0, w, (n,), generator=gen) - size // 2
    ys, xs = torch.arange(h), torch.arange(w)
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None].to(images.device, non_blocking=True)
    return torch.where(mask, fill.to(images.device)[None, :, None, None], images)


# Images per independently drawn policy op: torchvision's v2 policies draw one op per call,
# so a call per image would cost ~0.1 ms each; groups keep the variety at a fraction of it.
POLICY_GROUP = 8


def policy_batch(images: torch.Tensor, policy: str, gen: torch.Generator) -> torch.Tensor:
    """RandAugment / AutoAugment on a uint8 batch, one random op draw per group of images.

    torchvision's transforms take their randomness from the global torch RNG; it is forked and
    seeded from `gen` here so the result is a pure function of `gen` and leaves the caller's
    global RNG untouched.
    """
    from torchvision.transforms import v2

    transform = v2.RandAugment() if policy == "randaugment" else v2.AutoAugment()
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return torch.cat([transform(chunk) for chunk in images.split(POLICY_GROUP)])


def augment_batch(images: torch.Tensor, aug: Augment, gen: torch.Generator,
                  fill: torch.Tensor) -> torch.Tensor:
    """All of `aug` on a uint8 (N, C, H, W) batch; same shape and dtype out."""
    if aug.autoaugment != "none":
        images = policy_batch(images, aug.autoaugment, gen)
    if aug.crop_padding or aug.flip:
        images = crop_flip(images, aug, gen)
    if aug.cutout:
        images = cutout(images, aug.cutout, fill, gen)
    return images
