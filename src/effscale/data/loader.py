"""`make_loader`: deterministic, shardable batches of normalised images at the model resolution.

Batch order is a pure function of (seed, epoch); augmentation of batch b a pure function of
(seed, epoch, rank, b). Nothing reads the global RNG, so resuming at `start_batch` yields
exactly the batches the uninterrupted epoch would have yielded from there on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .augment import NO_AUGMENT, Augment, augment_batch
from .splits import DatasetInfo, TensorSplit

_M64 = (1 << 64) - 1
_ORDER, _AUGMENT = 1, 2  # stream ids: the permutation and the augmentation draw apart


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers: (seed=1, epoch=0) and (seed=0, epoch=1) differ, unlike a sum."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _M64))
    return h >> 1


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def shard_batches(n: int, *, batch_size: int, train: bool, seed: int, epoch: int, rank: int,
                  world_size: int, drop_last: bool | None = None) -> list[torch.Tensor]:
    """This rank's batches of indices into a split of n items, for one epoch.

    Train: a permutation seeded by (seed, epoch), its tail cut so every rank gets n // world_size
    items (at most world_size - 1 dropped per epoch, different ones each epoch), dealt out
    round-robin, then cut into batch_size batches; a last partial batch is dropped when there is
    a full one (BatchNorm needs more than one item, and full batches keep the step size even).
    Eval: every item exactly once, in order; each rank's share is cut into the same number of
    nearly equal batches (no duplicates, so metrics stay exact, and equal counts, so
    collectives line up).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    if train:
        order = torch.randperm(n, generator=generator(seed, epoch, _ORDER))
        order = order[: n - n % world_size][rank::world_size]
        batches = list(order.split(batch_size))
        drop = drop_last if drop_last is not None else len(batches) > 1
        if drop and batches and len(batches[-1]) < batch_size:
            batches.pop()
        return batches
    order = torch.arange(n)[rank::world_size]
    count = math.ceil(math.ceil(n / world_size) / batch_size)
    return [b for b in order.tensor_split(count) if len(b)] if count else []


class TensorLoader:
    """Iterates (images float32 (B, C, R, R) normalised, labels int64 (B,)) on `device`.

    len() is the number of batches this iterator yields (those from start_batch on);
    `num_batches` is the full epoch's count.
    """

    def __init__(self, split: TensorSplit, info: DatasetInfo | None, *, batch_size: int,
                 resolution: int, train: bool, seed: int, epoch: int, augment: Augment,
                 channels: int | None, rank: int, world_size: int, start_batch: int, device,
                 drop_last: bool | None = None, mean=None, std=None):
        self.split, self.train, self.augment = split, train, augment if train else NO_AUGMENT
        self.resolution, self.seed, self.epoch, self.rank = resolution, seed, epoch, rank
        self.device = torch.device(device) if device is not None else split.images.device
        in_chans = split.images.shape[1]
        self.channels = _check_channels(channels, in_chans)
        mean = mean if mean is not None else (info.mean if info else (0.5,) * in_chans)
        std = std if std is not None else (info.std if info else (0.5,) * in_chans)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self._fill = (mean_t * 255).round().to(torch.uint8)  # cutout paints the mean
        self._shift = (mean_t * 255).view(1, -1, 1, 1).to(self.device)
        self._scale = (1 / (torch.tensor(std, dtype=torch.float32) * 255)).view(1, -1, 1, 1).to(self.device)
        self.batches = shard_batches(len(split), batch_size=batch_size, train=train, seed=seed,
                                     epoch=epoch, rank=rank, world_size=world_size,
                                     drop_last=drop_last)
        self.num_batches = len(self.batches)
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)

    def __iter__(self):
        source = self.split.images.device
        for b in range(self.start_batch, self.num_batches):
            index = self.batches[b].to(source)
            images = self.split.images[index]
            labels = self.split.labels[index]
            if source != self.device:
                images = _to(images, self.device)
                labels = _to(labels, self.device)
            if self.augment.active:
                gen = generator(self.seed, self.epoch, _AUGMENT, self.rank, b)
                images = augment_batch(images, self.augment, gen, self._fill)
            yield self._finish(images), labels

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images, self.resolution, self._shift, self._scale, self.channels)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _check_channels(channels: int | None, in_chans: int) -> int:
    if channels is None or channels == in_chans:
        return in_chans
    if channels == 3 and in_chans == 1:
        return 3
    raise ValueError(f"channels={channels} is not possible for {in_chans}-channel images "
                     f"(only 1 -> 3 is supported)")


def to_model_input(images: torch.Tensor, resolution: int, shift: torch.Tensor,
                   scale: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (B, channels, R, R), resized (bilinear, antialiased when
    shrinking) and normalised with per-channel shift / scale on the 0..255 scale."""
    x = images.float()
    h, w = x.shape[-2:]
    if (h, w) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                          align_corners=False, antialias=resolution < min(h, w))
    x = (x - shift) * scale
    if channels != x.shape[1]:
        x = x.repeat(1, channels, 1, 1)
    return x


def make_loader(split, *, batch_size: int, resolution: int, train: bool, seed: int = 0,
                epoch: int = 0, augment: Augment | None = None, channels: int | None = None,
                rank: int = 0, world_size: int = 1, start_batch: int = 0, device=None,
                info: DatasetInfo | None = None, drop_last: bool | None = None,
                num_workers: int | None = None):
    """Batches of (images float32 (B, C, R, R) normalised, labels int64) for one epoch.

    split: `data.train` / `data.val` from `load_data` (a TensorSplit or an imagefolder split).
    augment: applied only when train (default: none; pass `default_augment(name)`).
    channels=3 repeats a 1-channel dataset. device: where batches are produced (default: the
    split's device). info: the dataset's normalisation (default: the split's own info when it
    has one; a bare TensorSplit without info uses mean = std = 0.5).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    augment = augment or NO_AUGMENT
    if isinstance(split, TensorSplit):
        return TensorLoader(split, info or split.info, batch_size=batch_size,
                            resolution=resolution, train=train, seed=seed, epoch=epoch,
                            augment=augment, channels=channels, rank=rank,
                            world_size=world_size, start_batch=start_batch, device=device,
                            drop_last=drop_last)
    from .folder import FolderSplit, FolderLoader
    if isinstance(split, FolderSplit):
        return FolderLoader(split, batch_size=batch_size, resolution=resolution, train=train,
                            seed=seed, epoch=epoch, augment=augment, channels=channels,
                            rank=rank, world_size=world_size, start_batch=start_batch,
                            device=device, drop_last=drop_last, num_workers=num_workers)
    raise ValueError(f"make_loader needs a split from load_data, got {type(split).__name__}")


def denormalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Normalised images (B, C, H, W) or (C, H, W) back to [0, 1] for figures."""
    shape = (-1, 1, 1)
    mean = torch.tensor(info.mean, dtype=images.dtype, device=images.device).view(shape)
    std = torch.tensor(info.std, dtype=images.dtype, device=images.device).view(shape)
    return (images * std + mean).clamp(0, 1)
