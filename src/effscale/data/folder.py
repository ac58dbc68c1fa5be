"""`imagefolder:PATH`: an ImageNet-style tree (PATH/train/<class>/*.jpg, PATH/val/<class>/...)
decoded by torchvision (PIL) in DataLoader worker processes.

Train: RandomResizedCrop, optional flip and RandAugment / AutoAugment per image (the Inception
preprocessing the EfficientNet paper used); eval: resize the short side to resolution / 0.875,
centre crop. Workers return uint8; normalisation (and cutout) happen on the device, as for the
in-memory datasets. Each image's augmentation is seeded from (seed, epoch, image index), so
the result does not depend on which worker decoded it or where an epoch was resumed.

Unreadable files (not images, truncated, unreadable on disk) are found when the folder is
loaded, so no worker ever meets one: they are left out of their split, named in one
`UnreadableImagesWarning` and listed in the split's `skipped`; a split with more than 1% of
them is refused (ValueError). The check reads headers and PNG chunks, not pixels (about
20 us a file from the page cache, 0.1-0.2 ms from a local disk); subsets are drawn from the readable
files, so a subset holds as many images as asked for.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .augment import NO_AUGMENT, Augment, cutout
from .batching import (AUGMENT_STREAM, Normalisation, check_channels, derive_seed, generator,
                       shard_batches, to_device, to_model_input)
from .splits import IMAGENET_MEAN, IMAGENET_STD, Data, DatasetInfo, stratified_subset

EVAL_CROP_FRACTION = 0.875  # eval resizes to resolution / 0.875, then centre-crops
MAX_UNREADABLE = 0.01  # refuse a split when more than this fraction of its files is unreadable
NAMED = 10  # unreadable files named in the warning (all of them are in `skipped`)


class UnreadableImagesWarning(UserWarning):
    """Some files of an image folder could not be read and were left out."""


@dataclass(frozen=True)
class FolderSplit:
    """One split of an image folder.

    skipped: the unreadable files left out of `samples`, as paths relative to the folder
    given in `imagefolder:PATH` (e.g. "train/cat/x.jpg"), in file order; () when none. For
    a run's record: `getattr(data.train, "skipped", ()) + getattr(data.val, "skipped", ())`
    (in-memory splits have no such attribute).
    """

    root: Path
    samples: tuple[tuple[str, int], ...]  # (file path, class index)
    info: DatasetInfo
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)


def load_imagefolder(path, *, subset=None, val_subset=None, seed=0) -> Data:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder path {root} does not exist or is not a folder")
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"imagefolder {root} lacks {' and '.join(m + '/' for m in missing)}"
                                f" (expected train/ and val/ with one folder per class)")
    classes = _class_folders(root / "train")
    if not classes:
        raise FileNotFoundError(f"imagefolder {root}: Couldn't find any class folder in "
                                f"{root / 'train'}.")
    unknown = sorted(set(_class_folders(root / "val")) - set(classes))
    if unknown:
        raise ValueError(f"imagefolder {root}: val/ has classes not in train/: "
                         f"{', '.join(unknown[:5])}")
    unfollowed: list[str] = []
    train, val = (list_images(root, d, classes, unfollowed) for d in ("train", "val"))
    _warn_unfollowed(root, unfollowed)
    if not train or not val:
        raise FileNotFoundError(f"imagefolder {root}: no images in "
                                f"{'train/' if not train else 'val/'} "
                                f"(extensions: {' '.join(IMG_EXTENSIONS)})")
    info = DatasetInfo(f"imagefolder:{path}", len(classes), tuple(classes), 3, None,
                       IMAGENET_MEAN, IMAGENET_STD)
    splits = [FolderSplit(root / d, tuple(samples), info)
              for d, samples in (("train", train), ("val", val))]
    for n in (subset, val_subset):
        if n is not None and n < 1:
            raise ValueError(f"subset size must be >= 1, got {n}")
    splits = [_without_unreadable(root, split) for split in splits]  # before the subsets
    skipped = splits[0].skipped + splits[1].skipped
    if skipped:
        warnings.warn(f"imagefolder {root}: skipped {len(skipped)} unreadable image file"
                      f"{'s' if len(skipped) > 1 else ''} (train {len(splits[0].skipped)}, val "
                      f"{len(splits[1].skipped)}): {named(skipped)}",
                      UnreadableImagesWarning, stacklevel=3)
    for i, n in enumerate((subset, val_subset)):
        if n is not None:
            keep = stratified_subset(splits[i].labels, n, seed).tolist()
            splits[i] = replace(splits[i], samples=tuple(splits[i].samples[k] for k in keep))
    return Data(info, splits[0], splits[1])


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def list_images(root: Path, split: str, classes, unfollowed: list[str]) -> list[tuple[str, int]]:
    """(file, class index) of split/<class>/**/*.<image extension>, in torchvision's order
    (classes sorted, then directories, then file names). A symlink is followed only when it
    leads inside `root` but outside every class folder (train/<class>, val/<class>: their
    files are listed anyway) and not above one (a loop), to nothing followed before; the
    others (out of the folder, loops, second names) are left out and appended to
    `unfollowed`, relative to `root`. A class folder may itself be a link inside `root`."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root_real = os.path.realpath(root)
    tops = [os.path.realpath(root / d / c) for d in ("train", "val")
            for c in _class_folders(root / d)]
    tops = [t for t in tops if _inside(t, root_real)]
    followed: list[str] = []

    def refuse(path: str) -> bool:  # True (and noted) for a link that must not be followed
        if not os.path.islink(path):
            return False
        real = os.path.realpath(path)
        ok = _inside(real, root_real) and not any(
            _inside(real, other) or _inside(other, real) for other in tops + followed)
        if ok:
            followed.append(real)
        else:
            unfollowed.append(Path(os.path.relpath(path, root)).as_posix())
        return not ok

    samples = []
    for index, name in enumerate(classes):
        top = str(root / split / name)
        if not os.path.isdir(top):
            continue
        if os.path.islink(top) and not _inside(os.path.realpath(top), root_real):
            unfollowed.append(f"{split}/{name}")
            continue
        walked = []
        for folder, dirs, files in os.walk(top, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not refuse(os.path.join(folder, d)))
            walked.append((folder, sorted(files)))
        for folder, files in sorted(walked):
            samples += [(os.path.join(folder, file), index) for file in files
                        if file.lower().endswith(IMG_EXTENSIONS)
                        and not refuse(os.path.join(folder, file))]
    return samples


class UnfollowedLinksWarning(UserWarning):
    """An image folder holds symlinks out of it, or back into it, that were not followed."""


def _warn_unfollowed(root: Path, unfollowed: list[str]) -> None:
    if unfollowed:
        one = len(unfollowed) == 1
        warnings.warn(f"imagefolder {root}: not following {len(unfollowed)} symlink"
                      f"{'' if one else 's'} that lead{'s' if one else ''} out of the folder or "
                      f"back into it: {named(unfollowed)}", UnfollowedLinksWarning, stacklevel=3)


def named(items: list[str]) -> str:
    """The first NAMED items, and how many more: what a one-line warning can hold."""
    more = f" and {len(items) - NAMED} more" if len(items) > NAMED else ""
    return ", ".join(items[:NAMED]) + more


def readable(path: str) -> bool:
    """Whether the workers' decode (PIL) will succeed, mostly without decoding: PIL fails on
    missing data, not on damaged data, so a JPEG that ends with its end-of-image marker passes,
    and a PNG must pass verify() (each chunk's CRC up to IEND, nothing decompressed). JPEGs
    without the marker (truncated, or bytes after it) are decoded at 1/8 scale to tell, files
    of other formats in full."""
    from PIL import Image
    try:
        with Image.open(path) as image:  # reads the header: not an image -> UnidentifiedImageError
            if image.format in ("JPEG", "MPO"):
                image.fp.seek(-2, os.SEEK_END)
                if image.fp.read(2) == b"\xff\xd9":
                    return True
                image.draft("RGB", (1, 1))
                image.load()
            elif image.format == "PNG":
                image.verify()
            else:
                image.load()
    except Exception:  # UnidentifiedImageError, OSError (truncated, permission), SyntaxError, ...
        return False
    return True


def _check_files(paths: list[str]) -> list[bool]:
    """readable() for each path, in order. Threads overlap the file reads from cold storage
    (from the page cache the check is GIL-bound and threads neither help nor hurt)."""
    chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return [ok for chunk in pool.map(lambda c: [readable(p) for p in c], chunks)
                for ok in chunk]


def _without_unreadable(root: Path, split: FolderSplit) -> FolderSplit:
    ok = _check_files([path for path, _ in split.samples])
    bad = tuple(Path(os.path.relpath(path, root)).as_posix()
                for (path, _), good in zip(split.samples, ok) if not good)
    if len(bad) > MAX_UNREADABLE * len(split):
        more = ", ..." if len(bad) > 3 else ""
        raise ValueError(f"imagefolder {root}: {len(bad)} of {len(split)} {split.root.name}/ "
                         f"files are unreadable ({100 * len(bad) / len(split):.1f}%, more than "
                         f"{100 * MAX_UNREADABLE:g}% skipped would bias the run): "
                         f"{', '.join(bad[:3])}{more}; fix or delete them")
    if not bad:
        return split
    return replace(split, skipped=bad,
                   samples=tuple(s for s, good in zip(split.samples, ok) if good))


def decode(path: str):
    """A file -> RGB PIL image (as ImageFolder's loader, PIL; torchvision.io's decoders are
    deprecated since 0.29). The transforms crop before they resize, so PIL is cheap here."""
    from PIL import Image
    with open(path, "rb") as f:
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


class _Files(torch.utils.data.Dataset):
    """Keys are (index, seed): the seed makes each image's random transform reproducible."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key
        path, label = self.samples[index]
        image = decode(path)
        with torch.random.fork_rng(devices=[]):  # leave the process's RNG as it was
            torch.manual_seed(seed)
            image = self.transform(image)
        return image, label


class FolderLoader:
    """Same interface as loader.TensorLoader: (images float32 (B, 3, R, R), labels int64)."""

    def __init__(self, split: FolderSplit, *, batch_size, resolution, train, seed, epoch,
                 augment, channels, rank, world_size, start_batch, device, drop_last=None,
                 num_workers=None):
        self.split, self.train = split, train
        self.augment = augment if train else NO_AUGMENT
        self.seed, self.epoch, self.rank, self.start_batch = seed, epoch, rank, start_batch
        self.device = torch.device(device or "cpu")
        self.channels = check_channels(channels, 3)
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        index_batches = shard_batches(len(split), batch_size=batch_size, train=train, seed=seed,
                                      epoch=epoch, rank=rank, world_size=world_size,
                                      drop_last=drop_last)
        self.batches = index_batches
        self.num_batches = len(index_batches)
        self.transform = folder_transform(resolution, train, self.augment)
        self.resolution = resolution
        self.norm = Normalisation.of(split.info.mean, split.info.std, self.device)

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)

    def _keys(self):
        return [[(i, derive_seed(self.seed, self.epoch, AUGMENT_STREAM, i)) for i in b.tolist()]
                for b in self.batches[self.start_batch:]]

    def __iter__(self):
        keys = self._keys()
        if not keys:
            return
        loader = torch.utils.data.DataLoader(
            _Files(self.split.samples, self.transform), batch_sampler=keys,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for b, (images, labels) in enumerate(loader, start=self.start_batch):
            images, labels = to_device(images, self.device), to_device(labels, self.device)
            if self.augment.cutout:
                gen = generator(self.seed, self.epoch, AUGMENT_STREAM, self.rank, b)
                images = cutout(images, self.augment.cutout, self.norm.fill, gen)
            yield to_model_input(images, self.resolution, self.norm, self.channels), labels
