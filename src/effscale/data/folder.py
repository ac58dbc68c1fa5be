"""`imagefolder:PATH`: an ImageNet-style tree (PATH/train/<class>/*.jpg, PATH/val/<class>/...,
or PATH/train/ alone, or PATH/<class>/ alone) decoded by PIL in DataLoader worker processes
(decoded.py: the transforms, the decode, the persistent workers). Without val/ the
validation split is split off the images, `val_fraction` of each class, chosen by the seed
(`splits.split_off`); csvfile.py builds its splits with `file_splits` too.

Unreadable files (not images, truncated, unreadable on disk) are found when the folder is
loaded, so no worker ever meets one: they are left out of their split, named in one
`UnreadableImagesWarning` and listed in the split's `skipped`; a split with more than 1% of
them is refused (ValueError). The check reads headers and PNG chunks, not pixels (about
20 us a file from the page cache, 0.1-0.2 ms from a local disk); subsets and split-off
validation sets are drawn from the readable files, so a subset holds as many images as
asked for.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

# decoded.py's names stay importable from here, where they lived first
from .decoded import EVAL_CROP_FRACTION, FileReader, WorkerPool, decode, folder_transform, to_rgb
from .splits import (IMAGENET_MEAN, IMAGENET_STD, Data, DatasetInfo, split_off,
                     stratified_subset)

__all__ = ["EVAL_CROP_FRACTION", "FolderSplit", "decode", "folder_transform", "load_imagefolder",
           "to_rgb"]

MAX_UNREADABLE = 0.01  # refuse a split when more than this fraction of its files is unreadable
NAMED = 10  # unreadable files named in the warning (all of them are in `skipped`)


class UnreadableImagesWarning(UserWarning):
    """Some files of an image folder could not be read and were left out."""


@dataclass(frozen=True)
class FolderSplit:
    """One split of an image folder or a CSV file.

    skipped: the unreadable files left out of `samples`, as paths relative to the folder
    given in `imagefolder:PATH` (e.g. "train/cat/x.jpg") or to the CSV file's folder, in
    file order; () when none. For a run's record: `getattr(data.train, "skipped", ()) +
    getattr(data.val, "skipped", ())` (in-memory splits have no such attribute).
    root: the split's folder (PATH/train, PATH/val; PATH/train for a val split split off it;
    the CSV file's folder). pool: the worker processes that decode it, shared with the other
    split of its dataset.
    """

    root: Path
    samples: tuple[tuple[str, int], ...]  # (file path, class index)
    info: DatasetInfo
    skipped: tuple[str, ...] = ()
    pool: WorkerPool = field(default_factory=lambda: WorkerPool(FileReader()), compare=False,
                             repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def ref(self, index: int) -> tuple[str, int]:
        """What a worker needs to produce item `index` (decoded.FileReader reads it)."""
        return self.samples[index]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)


def load_imagefolder(path, *, subset=None, val_subset=None, seed=0, val_fraction=0.1) -> Data:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder path {root} does not exist or is not a folder")
    if (root / "val").is_dir() and not (root / "train").is_dir():
        raise FileNotFoundError(f"imagefolder {root} lacks train/ (expected train/ and "
                                f"optionally val/, with one folder per class)")
    parts = [d for d in ("train", "val") if (root / d).is_dir()] or ["."]  # "." PATH/<class>/
    classes = _class_folders(root / parts[0])
    if not classes:
        raise FileNotFoundError(f"imagefolder {root}: Couldn't find any class folder in "
                                f"{root / parts[0]}.")
    if len(parts) == 2:
        unknown = sorted(set(_class_folders(root / "val")) - set(classes))
        if unknown:
            raise ValueError(f"imagefolder {root}: val/ has classes not in train/: "
                             f"{', '.join(unknown[:5])}")
    unfollowed: list[str] = []
    listed = [list_images(root, d, classes, unfollowed, parts) for d in parts]
    _warn_unfollowed(root, unfollowed)
    for d, samples in zip(parts, listed):
        if not samples:
            raise FileNotFoundError(f"imagefolder {root}: no images in "
                                    f"{'the class folders' if d == '.' else d + '/'} "
                                    f"(extensions: {' '.join(IMG_EXTENSIONS)})")
    info = DatasetInfo(f"imagefolder:{path}", len(classes), tuple(classes), 3, None,
                       IMAGENET_MEAN, IMAGENET_STD)
    val = listed[1] if len(parts) == 2 else None
    return file_splits(f"imagefolder {root}", root, info, listed[0], val, subset=subset,
                       val_subset=val_subset, seed=seed, val_fraction=val_fraction,
                       parts=("train/" if parts[0] == "train" else "image", "val/"),
                       split_roots=(root / parts[0], root / parts[-1]))


def file_splits(source: str, root: Path, info: DatasetInfo, train: list, val: list | None, *,
                subset, val_subset, seed, val_fraction, parts=("train", "val"),
                split_roots=None) -> Data:
    """Data of (path, label) lists: unreadable files left out (refused above 1% of a split),
    the validation split split off `train` when `val` is None, then the subsets. `source`
    and `parts` name the dataset and its splits in messages; paths are named relative to
    `root`. split_roots: each split's `root` (default `root`; explain/boxes.py names images
    relative to it and to its parent)."""
    for n in (subset, val_subset):
        if n is not None and n < 1:
            raise ValueError(f"subset size must be >= 1, got {n}")
    pool = WorkerPool(FileReader())  # one set of workers for both splits
    train, bad_train = _without_unreadable(source, root, train, parts[0])
    val, bad_val = _without_unreadable(source, root, val, parts[1]) if val is not None \
        else (None, ())
    skipped = bad_train + bad_val
    if skipped:
        warnings.warn(f"{source}: skipped {len(skipped)} unreadable image file"
                      f"{'s' if len(skipped) > 1 else ''} (train {len(bad_train)}, val "
                      f"{len(bad_val)}): {named(skipped)}", UnreadableImagesWarning, stacklevel=4)
    if val is None:
        labels = torch.tensor([label for _, label in train], dtype=torch.int64)
        kept, held = split_off(labels, val_fraction, seed, source)
        train, val = [train[k] for k in kept], [train[k] for k in held]
    roots = split_roots or (root, root)
    splits = [FolderSplit(roots[0], tuple(train), info, bad_train, pool),
              FolderSplit(roots[1], tuple(val), info, bad_val, pool)]
    for i, n in enumerate((subset, val_subset)):
        if n is not None:
            keep = stratified_subset(splits[i].labels, n, seed).tolist()
            splits[i] = replace(splits[i], samples=tuple(splits[i].samples[k] for k in keep))
    return Data(info, splits[0], splits[1])


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def list_images(root: Path, split: str, classes, unfollowed: list[str],
                parts=("train", "val")) -> list[tuple[str, int]]:
    """(file, class index) of split/<class>/**/*.<image extension>, in torchvision's order
    (classes sorted, then directories, then file names). A symlink is followed only when it
    leads inside `root` but outside every class folder (train/<class>, val/<class>: their
    files are listed anyway) and not above one (a loop), to nothing followed before; the
    others (out of the folder, loops, second names) are left out and appended to
    `unfollowed`, relative to `root`. A class folder may itself be a link inside `root`."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root_real = os.path.realpath(root)
    tops = [os.path.realpath(root / d / c) for d in parts for c in _class_folders(root / d)]
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


def _without_unreadable(source: str, root: Path, samples: list, part: str):
    """(the readable samples, the unreadable ones' paths relative to root); ValueError when
    more than MAX_UNREADABLE of them are unreadable."""
    ok = _check_files([path for path, _ in samples])
    bad = tuple(Path(os.path.relpath(path, root)).as_posix()
                for (path, _), good in zip(samples, ok) if not good)
    if len(bad) > MAX_UNREADABLE * len(samples):
        more = ", ..." if len(bad) > 3 else ""
        raise ValueError(f"{source}: {len(bad)} of {len(samples)} {part} "
                         f"files are unreadable ({100 * len(bad) / len(samples):.1f}%, more than "
                         f"{100 * MAX_UNREADABLE:g}% skipped would bias the run): "
                         f"{', '.join(bad[:3])}{more}; fix or delete them")
    return [s for s, good in zip(samples, ok) if good], bad
