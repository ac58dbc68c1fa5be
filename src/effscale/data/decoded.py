"""Images decoded one by one in DataLoader worker processes: image folders, CSV files and
Python datasets all go through here, so they share one decode / resize / normalise path.

Train: RandomResizedCrop, optional flip and RandAugment / AutoAugment per image (the Inception
preprocessing the EfficientNet paper used); eval: resize the short side to resolution / 0.875,
centre crop. Workers return uint8; normalisation (and cutout) happen on the device, as for the
in-memory datasets. Each image's augmentation is seeded from (seed, epoch, image index), so
the result does not depend on which worker decoded it or where an epoch was resumed.

The workers live as long as the dataset (`WorkerPool`, shared by its splits): one persistent
DataLoader whose batch sampler is handed each epoch's batches before it is iterated, so the
order stays the seeded one of batching.py (and a resumed epoch starts at its batch) while
the worker processes are started once, not once per epoch.
"""

from __future__ import annotations

import os

import torch

from .augment import NO_AUGMENT, Augment, cutout
from .batching import (AUGMENT_STREAM, Normalisation, check_channels, derive_seed, generator,
                       shard_batches, to_device, to_model_input)

EVAL_CROP_FRACTION = 0.875  # eval resizes to resolution / 0.875, then centre-crops


def default_workers() -> int:
    """Worker processes when none are asked for: the cores this process may run on (a study
    worker's share: EFFSCALE_THREADS, which experiments/local.py sets for each of them)."""
    share = os.environ.get("EFFSCALE_THREADS")
    if share and share.isdigit() and int(share) > 0:
        return int(share)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode(path: str):
    """A file -> RGB PIL image (as ImageFolder's loader, PIL; torchvision.io's decoders are
    deprecated since 0.29). The transforms crop before they resize, so PIL is cheap here."""
    with open(path, "rb") as f:
        return decode_file(f)


def decode_file(f):
    """An open image file (or io.BytesIO of its bytes: a tar shard's member) -> RGB PIL image."""
    from PIL import Image
    image = Image.open(f)
    image.load()
    return to_rgb(image)


def to_rgb(image):
    """An image of any PIL mode -> 8-bit RGB. 16-bit greys ("I;16*", and "I", which is how
    PIL opens some 16-bit files) are scaled (value >> 8; PIL's own convert clips them to 255,
    turning mid-grey white); 32-bit floats ("F") are taken as 0-255 and clipped."""
    import numpy as np
    from PIL import Image
    if image.mode.startswith("I"):
        pixels = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def folder_transform(resolution: int, train: bool, augment: Augment):
    from torchvision.transforms import v2

    if not train:
        return v2.Compose([v2.Resize(round(resolution / EVAL_CROP_FRACTION), antialias=True),
                           v2.CenterCrop(resolution), v2.PILToTensor()])
    steps = [v2.RandomResizedCrop(resolution, antialias=True)]
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.autoaugment == "randaugment":
        steps.append(v2.RandAugment())
    elif augment.autoaugment == "autoaugment":
        steps.append(v2.AutoAugment())
    return v2.Compose(steps + [v2.PILToTensor()])  # uint8 (3, R, R)


class FileReader:
    """A file split's item reference, (path, label) -> (RGB PIL image, label)."""

    def __call__(self, ref):
        path, label = ref
        return decode(path), label


class Transforms:
    """`folder_transform`s by spec (resolution, train, flip, autoaugment), each applied to an
    RGB PIL image with the item's own seed: one object serves training, BatchNorm
    re-estimation and evaluation at any resolution. Returns uint8 (3, R, R)."""

    def __init__(self):
        self.cache = {}

    def __call__(self, image, seed: int, spec):
        if spec not in self.cache:
            resolution, train, flip, policy = spec
            self.cache[spec] = folder_transform(resolution, train,
                                                Augment(flip=flip, autoaugment=policy))
        # the CPU generator only, and its state put back (num_workers=0 decodes in the
        # training process, whose RNG must not move): torch.manual_seed and fork_rng also
        # reach every accelerator's generators, ~1 ms an image, as long as a 64-px decode
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        try:
            return self.cache[spec](image)
        finally:
            torch.set_rng_state(state)


class _Decode(torch.utils.data.Dataset):
    """Keys are (item reference, seed, transform spec): the reference says what to read (the
    pool's reader reads it), the seed makes the item's random transform reproducible, the spec
    says which transform (`Transforms`)."""

    def __init__(self, reader):
        self.reader, self.transforms = reader, Transforms()

    def __getitem__(self, key):
        ref, seed, spec = key
        image, label = self.reader(ref)
        return self.transforms(image, seed, spec), label


class _Batches:
    """A batch sampler whose batches are set before each pass (each epoch's, from its start
    batch): what lets a persistent DataLoader follow batching.py's seeded order."""

    def __init__(self):
        self.keys: list = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class WorkerPool:
    """The worker processes of one dataset (all its splits): a persistent DataLoader per
    (workers, pin_memory). A pass that starts while another is still being read (two loaders
    zipped) gets a DataLoader of its own for that pass, so passes never mix."""

    def __init__(self, reader):
        self.reader, self.loaders, self.busy = reader, {}, False

    def __getstate__(self):  # worker processes and DataLoaders do not travel
        return {"reader": self.reader, "loaders": {}, "busy": False}

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the pool is garbage)."""
        loaders, self.loaders = self.loaders, {}
        for loader, _ in loaders.values():
            shutdown(loader)

    def batches(self, keys: list, workers: int, pin_memory: bool):
        """(uint8 images, labels) of each batch of keys, in order."""
        if workers == 0 or self.busy:
            yield from torch.utils.data.DataLoader(_Decode(self.reader), batch_sampler=keys,
                                                   num_workers=workers, pin_memory=pin_memory)
            return
        if (workers, pin_memory) not in self.loaders:
            sampler = _Batches()
            self.loaders[workers, pin_memory] = (torch.utils.data.DataLoader(
                _Decode(self.reader), batch_sampler=sampler, num_workers=workers,
                pin_memory=pin_memory, persistent_workers=True), sampler)
        loader, sampler = self.loaders[workers, pin_memory]
        sampler.keys = keys
        self.busy = True
        try:
            yield from loader
        finally:  # also when the pass is left early (islice): the next one resets the workers
            self.busy = False


def shutdown(loader) -> None:
    """Stop a persistent DataLoader's worker processes now."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


class DecodedLoader:
    """Same interface as loader.TensorLoader: (images float32 (B, 3, R, R), labels int64), for
    any split with `info`, `pool`, `ref(i)` and a length (folder, CSV and Python splits)."""

    def __init__(self, split, *, batch_size, resolution, train, seed, epoch, augment, channels,
                 rank, world_size, start_batch, device, drop_last=None, num_workers=None):
        self.split, self.train = split, train
        self.augment = augment if train else NO_AUGMENT
        self.seed, self.epoch, self.rank, self.start_batch = seed, epoch, rank, start_batch
        self.device = torch.device(device or "cpu")
        self.channels = check_channels(channels, 3)
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.batches = shard_batches(len(split), batch_size=batch_size, train=train, seed=seed,
                                     epoch=epoch, rank=rank, world_size=world_size,
                                     drop_last=drop_last, order=self.train_order(len(split)))
        self.num_batches = len(self.batches)
        self.resolution = resolution
        self.spec = (resolution, train, self.augment.flip, self.augment.autoaugment)
        self.norm = Normalisation.of(split.info.mean, split.info.std, self.device)

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)

    def train_order(self, n: int):
        """The epoch's order of the n items that shard_batches deals out when training; None:
        its seeded permutation (random access: any order is as cheap as any other)."""
        return None

    def _keys(self):
        ref = self.split.ref
        return [[(ref(i), derive_seed(self.seed, self.epoch, AUGMENT_STREAM, i), self.spec)
                 for i in b.tolist()] for b in self.batches[self.start_batch:]]

    def __iter__(self):
        keys = self._keys()
        if not keys:
            return
        passes = self.split.pool.batches(keys, self.num_workers, self.device.type == "cuda")
        for b, (images, labels) in enumerate(passes, start=self.start_batch):
            yield self.finish_batch(b, images, labels)

    def finish_batch(self, b: int, images: torch.Tensor, labels: torch.Tensor):
        """Batch b's uint8 images and labels as the model's input on the device: cutout
        (seeded by (seed, epoch, rank, b)), resize, normalise."""
        images, labels = to_device(images, self.device), to_device(labels, self.device)
        if self.augment.cutout:
            gen = generator(self.seed, self.epoch, AUGMENT_STREAM, self.rank, b)
            images = cutout(images, self.augment.cutout, self.norm.fill, gen)
        return to_model_input(images, self.resolution, self.norm, self.channels), labels
