"""`load_data(name)`: find, read and split each dataset; the catalog of datasets.

In-memory datasets come back as uint8 tensors on the requested device; `imagefolder:PATH`,
`csv:FILE` and Python datasets come back as item lists that DataLoader workers decode
(folder.py, csvfile.py, objects.py; decoded.py decodes them all); `webdataset:DIR` as tar
shards that DataLoader workers stream and decode (shards.py).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .idx import read_idx
from .splits import Data, DatasetInfo, TensorSplit, subset_split

# The built-in datasets and their (classes, channels), so that a plan needs no data loaded;
# DATASETS (what a user may type) adds image folders and CSV files.
BUILTIN = {"digits": (10, 1), "fashion-mnist": (10, 1), "cifar10": (10, 3), "cifar100": (100, 3)}
DATASETS = (*BUILTIN, "imagefolder:PATH", "csv:FILE", "webdataset:DIR")

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")

# Normalisation statistics of each training split, on the [0, 1] scale.
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3758,)  # the 1,347-image train split below
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)

DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED = 0.25, 0  # fixed: every run sees the same split


def default_data_dir() -> Path:
    """Where downloads go when no --data-dir is given."""
    env = os.environ.get("EFFSCALE_DATA")
    if not env:
        return Path.home() / ".cache" / "effscale" / "data"
    path = Path(env).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"EFFSCALE_DATA={env} is a file, not a directory; point it "
                                 f"at a directory (or unset it), or pass --data-dir")
    for parent in path.parents:  # a file where one of its parent directories should be
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"EFFSCALE_DATA={env}: {parent} is a file, not a "
                                         f"directory; point it at a directory, or pass --data-dir")
            break
    return path


def load_data(name, *, data_dir=None, device="cpu", download: bool = True,
              subset: int | None = None, val_subset: int | None = None, seed: int = 0,
              val_fraction: float = 0.1) -> Data:
    """Load dataset `name` (see DATASETS), or Python datasets: a map-style Dataset or a
    (train, val) pair (objects.py). subset / val_subset: a stratified subset of that many
    train / val items, chosen by `seed` (for fast experiments and tests). val_fraction: what
    is split off for validation (by `seed`) where a CSV or image folder has no val split
    (webdataset shards need their val/ shards)."""
    kw = dict(subset=subset, val_subset=val_subset, seed=seed, val_fraction=val_fraction)
    if not isinstance(name, str):
        from .objects import load_datasets
        return load_datasets(name, **kw)
    data_dir = Path(data_dir).expanduser() if data_dir else None
    source, _, path = name.partition(":")
    if source in ("imagefolder", "csv", "webdataset"):
        if not path:
            raise ValueError({
                "imagefolder": "imagefolder needs a path: imagefolder:PATH (with train/ and "
                               "optionally val/)",
                "csv": "csv needs a file: csv:FILE (columns path,label[,split])",
                "webdataset": "webdataset needs a folder: webdataset:DIR (with train/*.tar "
                              "and val/*.tar)"}[source])
        from .csvfile import load_csv
        from .folder import load_imagefolder
        from .shards import load_webdataset
        return {"imagefolder": load_imagefolder, "csv": load_csv,
                "webdataset": load_webdataset}[source](path, **kw)
    if source == "python" and path:
        raise ValueError(f"{name} names Python datasets (effscale.train/study/search(data=...)); "
                         f"pass the datasets again (data=...)")
    if name == "digits":
        info, train, val = _digits()
    elif name == "fashion-mnist":
        info, train, val = _fashion_mnist(data_dir, download)
    elif name in ("cifar10", "cifar100"):
        from .cifar import load_cifar
        info, train, val = load_cifar(name, data_dir, download, default_data_dir())
    else:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    train = subset_split(replace(train, info=info), subset, seed)
    val = subset_split(replace(val, info=info), val_subset, seed)
    return Data(info, train.to(device), val.to(device))


def tensor_split(images: np.ndarray, labels: np.ndarray) -> TensorSplit:
    """numpy uint8 (N, H, W) or (N, H, W, C) and integer labels -> TensorSplit (N, C, H, W)."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8))  # copy: inputs may be read-only
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return TensorSplit(x.contiguous(), torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # bundled with scikit-learn: no download
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    train, val = train_test_split(np.arange(len(digits.target)), test_size=DIGITS_TEST_FRACTION,
                                  stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
    train, val = np.sort(train), np.sort(val)
    info = DatasetInfo("digits", 10, tuple(str(d) for d in range(10)), 1, 8, DIGITS_MEAN,
                       DIGITS_STD)
    return (info, tensor_split(images[train], digits.target[train]),
            tensor_split(images[val], digits.target[val]))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _fashion_dir(candidates) -> Path | None:
    for directory in candidates:
        if all(_find_idx(directory, stem) for pair in FASHION_FILES.values() for stem in pair):
            return directory
    return None


def _fashion_candidates(root: Path) -> list[Path]:
    # our own layout, a plain folder of the four files, and torchvision's download layout
    return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]


def _fashion_mnist(data_dir: Path | None, download: bool):
    candidates = (_fashion_candidates(data_dir) if data_dir else []) + [FASHION_SYSTEM_DIR] \
        + _fashion_candidates(default_data_dir())
    directory = _fashion_dir(candidates)
    if directory is None and download:
        root = data_dir or default_data_dir()
        _download_torchvision("FashionMNIST", root)
        directory = _fashion_dir(_fashion_candidates(root))
    if directory is None:
        where = data_dir or FASHION_SYSTEM_DIR
        raise FileNotFoundError(
            f"Fashion-MNIST idx files ({', '.join(FASHION_FILES['train'] + FASHION_FILES['val'])}"
            f", .gz or not) not found in {where}; put them there, pass --data-dir, or allow "
            f"the download")
    splits = []
    for images_stem, labels_stem in FASHION_FILES.values():
        images = read_idx(_find_idx(directory, images_stem))
        labels = read_idx(_find_idx(directory, labels_stem))
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"{directory}: {images_stem} {images.shape} and {labels_stem} "
                             f"{labels.shape} do not match")
        splits.append(tensor_split(images, labels))
    info = DatasetInfo("fashion-mnist", 10, FASHION_CLASSES, 1, 28, FASHION_MEAN, FASHION_STD)
    return info, splits[0], splits[1]


def _download_torchvision(dataset: str, root: Path) -> None:
    """Download through torchvision (it checks the checksums); one clear error when offline."""
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(tvd, dataset)(str(root), train=True, download=True)
    except Exception as exc:  # URLError, socket errors, RuntimeError from torchvision, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileNotFoundError(
            f"{dataset} is not in {root} and downloading it failed ({reason}); "
            f"download it on a connected machine and pass --data-dir") from None
