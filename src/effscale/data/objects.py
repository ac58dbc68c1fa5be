"""Python datasets: any map-style `torch.utils.data.Dataset` whose items are (image, label),
the image a PIL image, a tensor (C, H, W) or (H, W) (floats on the 0-1 scale, or uint8) or a
NumPy array (H, W[, C]), the label an integer.

`load_data((train_ds, val_ds))` (or one dataset: its validation split is split off, as for an
image folder without val/) gives splits that the image folders' workers decode
(decoded.py): the same RGB conversion, transforms, resize and normalisation. The items are
read in the worker processes (forked: the datasets need not pickle), each split's labels once
up front, from a `targets` attribute when the dataset has one (torchvision's datasets do),
else by reading every item. The classes are the train dataset's `classes` attribute when it
has one, else 0 ... the largest label.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .decoded import WorkerPool, to_rgb
from .splits import IMAGENET_MEAN, IMAGENET_STD, Data, DatasetInfo, split_off, stratified_subset


def is_datasets(data) -> bool:
    """Whether `data` is a dataset object or a (train, val) pair of them, not a name."""
    items = data if isinstance(data, (tuple, list)) else (data,)
    return bool(items) and all(hasattr(d, "__getitem__") and hasattr(d, "__len__")
                               and not isinstance(d, (str, bytes)) for d in items)


def datasets_name(data) -> str:
    """The name a run records for Python datasets: `python:` and the train dataset's class."""
    first = data[0] if isinstance(data, (tuple, list)) else data
    return f"python:{type(first).__name__}"


def name_datasets(values: dict) -> tuple[dict, object]:
    """(values with `data` the name runs record, the Python datasets) when values["data"] is
    Python datasets; (values, None) otherwise."""
    data = values.get("data")
    if data is None or isinstance(data, str):
        return values, None
    if not is_datasets(data):
        raise ValueError(f"data must be a dataset name, a map-style Dataset or a (train, val) "
                         f"pair of them, got {type(data).__name__}")
    return dict(values, data=datasets_name(data)), data


class DatasetReader:
    """(dataset number, index) -> (RGB PIL image, label), read from the user's datasets."""

    def __init__(self, datasets):
        self.datasets = datasets

    def __call__(self, ref):
        which, index = ref
        item = self.datasets[which][index]
        return to_pil(item[0]), int(item[1])


def to_pil(image):
    """A PIL image, tensor or array -> 8-bit RGB PIL image (floats are taken as 0-1)."""
    import numpy as np
    from PIL import Image
    if isinstance(image, Image.Image):
        return to_rgb(image)
    array = image.detach().cpu() if isinstance(image, torch.Tensor) else torch.as_tensor(
        np.asarray(image))
    if isinstance(image, torch.Tensor) and array.ndim == 3:
        array = array.permute(1, 2, 0)  # (C, H, W) -> (H, W, C), as PIL wants
    if array.is_floating_point():
        array = (array * 255).round()
    array = array.clamp(0, 255).to(torch.uint8).numpy()
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return to_rgb(Image.fromarray(array))


@dataclass(frozen=True)
class DatasetSplit:
    """Items `indices` of dataset number `which` of the pool's reader; `skipped` is always ()
    (a Python dataset's items are not checked up front: that would read every image)."""

    which: int
    indices: tuple[int, ...]
    labels: torch.Tensor = field(compare=False)
    info: DatasetInfo
    pool: WorkerPool = field(compare=False, repr=False)
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.indices)

    def ref(self, index: int) -> tuple[int, int]:
        return self.which, self.indices[index]

    def subset(self, keep) -> "DatasetSplit":
        keep = list(keep)
        return replace(self, indices=tuple(self.indices[k] for k in keep),
                       labels=self.labels[keep])


def load_datasets(data, *, subset=None, val_subset=None, seed=0, val_fraction=0.1) -> Data:
    """Data of a (train, val) pair of map-style datasets, or of one (val split off)."""
    pair = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    if len(pair) not in (1, 2) or not is_datasets(pair):
        raise ValueError("data must be a dataset name, a map-style Dataset, or a (train, val) "
                         "pair of them")
    name = datasets_name(pair)
    labels = [_labels(d, name) for d in pair]
    if len(pair) == 2 and pair[1] is pair[0]:
        labels[1] = labels[0]
    classes = getattr(pair[0], "classes", None)
    count = len(classes) if classes else 1 + max(int(t.max()) for t in labels)
    for t in labels:
        if int(t.min()) < 0 or int(t.max()) >= count:
            raise ValueError(f"{name}: labels must lie in 0..{count - 1} (one per class of "
                             f"its `classes`), got {int(t.min())}..{int(t.max())}")
    names = tuple(str(c) for c in classes) if classes else tuple(str(i) for i in range(count))
    info = DatasetInfo(name, count, names, 3, None, IMAGENET_MEAN, IMAGENET_STD)
    pool = WorkerPool(DatasetReader(pair))
    if len(pair) == 2:
        splits = [DatasetSplit(i, tuple(range(len(t))), t, info, pool)
                  for i, t in enumerate(labels)]
    else:
        kept, held = split_off(labels[0], val_fraction, seed, name)
        splits = [DatasetSplit(0, tuple(part), labels[0][part], info, pool)
                  for part in (kept, held)]
    for i, n in enumerate((subset, val_subset)):
        if n is not None:
            if n < 1:
                raise ValueError(f"subset size must be >= 1, got {n}")
            splits[i] = splits[i].subset(stratified_subset(splits[i].labels, n, seed).tolist())
    return Data(info, splits[0], splits[1])


def _labels(dataset, name: str) -> torch.Tensor:
    if isinstance(dataset, torch.utils.data.IterableDataset):
        raise ValueError(f"{name}: an IterableDataset has no random access; give a map-style "
                         f"Dataset, or write the images to csv:FILE or imagefolder:PATH")
    if len(dataset) == 0:
        raise ValueError(f"{name}: a dataset is empty")
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(list(targets) if not isinstance(targets, torch.Tensor)
                               else targets).to(torch.int64).reshape(-1)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)
