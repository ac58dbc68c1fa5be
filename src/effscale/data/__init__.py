"""Datasets and loaders: `load_data(name) -> Data`, `make_loader(split, ...)`, `denormalize`.

Modules: sources (catalog, load_data), splits (DatasetInfo, TensorSplit, Data, subsets),
idx (MNIST idx files), cifar (CIFAR archives, safe unpickling), folder (imagefolder:PATH),
csvfile (csv:FILE), objects (Python datasets), decoded (what those three share: PIL decode and
transforms in persistent worker processes), shards and shardscan (webdataset:DIR, tar shards
streamed by workers through decoded.py's transforms), augment (Augment and its batched tensor
ops), batching and loader (batching, sharding, resizing, normalisation).
"""

from .augment import Augment, default_augment
from .loader import denormalize, make_loader
from .sources import DATASETS, default_data_dir, load_data
from .splits import Data, DatasetInfo, TensorSplit

__all__ = ["Augment", "DATASETS", "Data", "DatasetInfo", "TensorSplit", "default_augment",
           "default_data_dir", "denormalize", "load_data", "make_loader"]
