"""`make_loader`: deterministic, shardable batches of normalised images at the model resolution.

Batch order is a pure function of (seed, epoch); augmentation of batch b a pure function of
(seed, epoch, rank, b). Nothing reads the global RNG, so resuming at `start_batch` yields
exactly the batches the uninterrupted epoch would have yielded from there on.
"""

from __future__ import annotations


import torch

from .augment import NO_AUGMENT, Augment, augment_batch
from .batching import (AUGMENT_STREAM, Normalisation, check_channels, generator, shard_batches,
                       to_device, to_model_input)
from .splits import DatasetInfo, TensorSplit

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
        self.channels = check_channels(channels, in_chans)
        mean = mean if mean is not None else (info.mean if info else (0.5,) * in_chans)
        std = std if std is not None else (info.std if info else (0.5,) * in_chans)
        self.norm = Normalisation.of(mean, std, self.device)
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
                images = to_device(images, self.device)
                labels = to_device(labels, self.device)
            if self.augment.active:
                gen = generator(self.seed, self.epoch, AUGMENT_STREAM, self.rank, b)
                images = augment_batch(images, self.augment, gen, self.norm.fill)
            yield self._finish(images), labels

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images, self.resolution, self.norm, self.channels)


def make_loader(split, *, batch_size: int, resolution: int, train: bool, seed: int = 0,
                epoch: int = 0, augment: Augment | None = None, channels: int | None = None,
                rank: int = 0, world_size: int = 1, start_batch: int = 0, device=None,
                info: DatasetInfo | None = None, drop_last: bool | None = None,
                num_workers: int | None = None):
    """Batches of (images float32 (B, C, R, R) normalised, labels int64) for one epoch.

    split: `data.train` / `data.val` from `load_data` (a TensorSplit, or a split decoded in
    worker processes: image folder, CSV, Python dataset, webdataset shards). num_workers:
    those processes (default: the cores, decoded.default_workers); they live as long as the
    dataset.
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
    from .shards import ShardLoader, ShardSplit
    if isinstance(split, ShardSplit):  # webdataset shards: streamed, not read item by item
        return ShardLoader(split, batch_size=batch_size, resolution=resolution, train=train,
                           seed=seed, epoch=epoch, augment=augment, channels=channels,
                           rank=rank, world_size=world_size, start_batch=start_batch,
                           device=device, drop_last=drop_last, num_workers=num_workers)
    if hasattr(split, "pool") and hasattr(split, "ref"):  # folder, CSV and Python splits
        from .decoded import DecodedLoader
        return DecodedLoader(split, batch_size=batch_size, resolution=resolution, train=train,
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
