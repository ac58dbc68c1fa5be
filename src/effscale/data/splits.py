"""What a loaded dataset is: its description, its splits, and seeded stratified subsets."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

# the sources decoded file by file in worker processes (on the CPU), not held as one tensor
DECODED_PREFIXES = ("imagefolder:", "csv:", "python:", "webdataset:")

# torchvision's ImageNet normalisation: what pretrained weights and image folders expect
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def decoded_source(name) -> bool:
    """Whether dataset `name` (or a Python dataset) is decoded in worker processes."""
    return not isinstance(name, str) or name.startswith(DECODED_PREFIXES)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    in_chans: int  # 1 or 3
    image_size: int | None  # native side; None for imagefolder (images vary)
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]


@dataclass(frozen=True)
class TensorSplit:
    """An in-memory split: the whole split as one uint8 tensor on one device."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    info: DatasetInfo | None = None  # so make_loader knows the normalisation

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "TensorSplit":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


@dataclass(frozen=True)
class Data:
    info: DatasetInfo
    train: Any  # TensorSplit or folder.FolderSplit
    val: Any


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of n items whose class proportions match `labels`, chosen by `seed`.

    Each item gets the key (its random rank within its class + 0.5) / class size; taking the
    n smallest keys takes every class in proportion (a class of a tenth of the items gets
    about a tenth of the n) and, within a class, a random choice.
    """
    labels = labels.cpu()
    if n >= len(labels):
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen)
    grouped = perm[torch.sort(labels[perm], stable=True).indices]  # by class, random inside
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    cls = labels[grouped]
    rank = torch.arange(len(labels)) - starts[cls]
    key = (rank + 0.5) / counts[cls]
    chosen = grouped[torch.sort(key, stable=True).indices[:n]]
    return torch.sort(chosen).values


def subset_split(split: TensorSplit, n: int | None, seed: int) -> TensorSplit:
    if n is None:
        return split
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    index = stratified_subset(split.labels, n, seed).to(split.labels.device)
    return replace(split, images=split.images[index], labels=split.labels[index])


VAL_SPLIT_STREAM = 3  # apart from batching.py's order (1) and augmentation (2) streams


def split_off(labels: torch.Tensor, fraction: float, seed: int,
              source: str = "dataset") -> tuple[list[int], list[int]]:
    """(train indices, val indices), both sorted: a validation set of round(fraction x n)
    items (at least 1, and 1 fewer than n at most), each class in proportion (within one
    item), chosen by `seed`. A function of (labels, fraction, seed) only, so a run's
    config.json (seed, val_fraction) reproduces it; other seeds give other splits."""
    from .batching import derive_seed
    n = len(labels)
    if n < 2:
        raise ValueError(f"{source}: {n} image{'s' if n != 1 else ''}: too few to split off a "
                         f"validation set; add images or a val split")
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    count = min(n - 1, max(1, round(fraction * n)))
    held = stratified_subset(labels, count, derive_seed(seed, VAL_SPLIT_STREAM)).tolist()
    chosen = set(held)
    return [i for i in range(n) if i not in chosen], held
