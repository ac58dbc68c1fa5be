"""Boxes: annotated object positions (a boxes file or dict), mapped to the model's input
through the eval transform (`map_box`, `boxes_for_split`), and the localisation rates of maps
against them (`localise`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.folder import EVAL_CROP_FRACTION
from ..io.readback import read_json


@dataclass(frozen=True)
class Localisation:
    """Where each map's peak and mass fall relative to the image's annotated box.

    boxes are in the model's input pixels (after the eval transform's resize and crop), as
    continuous coordinates: a pixel (x, y) covers [x, x + 1) x [y, y + 1).
    """

    boxes: np.ndarray  # (N, 4) float x0, y0, x1, y1
    peak_in_box: np.ndarray  # (N,) bool: the centre of the map's highest pixel is in the box
    energy: np.ndarray  # (N,) fraction of the map's total inside the box
    area: np.ndarray  # (N,) box area / image area: the chance a random peak lands in the box

    @property
    def rate(self) -> float:
        """Fraction of images whose map peak is inside the box (the pointing game)."""
        return float(self.peak_in_box.mean())

    @property
    def energy_rate(self) -> float:
        """Mean fraction of the map's mass inside the box."""
        return float(self.energy.mean())

    @property
    def chance(self) -> float:
        """The rate a map with a uniformly random peak would get."""
        return float(self.area.mean())


def _coverage(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W): how much of each pixel each box covers, in [0, 1]."""
    xs, ys = np.arange(width), np.arange(height)
    cover_x = np.clip(np.minimum(xs + 1, boxes[:, 2:3]) - np.maximum(xs, boxes[:, 0:1]), 0, 1)
    cover_y = np.clip(np.minimum(ys + 1, boxes[:, 3:4]) - np.maximum(ys, boxes[:, 1:2]), 0, 1)
    return cover_y[:, :, None] * cover_x[:, None, :]


def localise(maps: np.ndarray, boxes) -> Localisation:
    """Peak-in-box and energy-in-box of (N, H, W) maps against (N, 4) boxes in map pixels.
    A flat map (every pixel equal: no peak) counts as a miss."""
    maps = np.asarray(maps, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n, h, w = maps.shape
    if len(boxes) != n:
        raise ValueError(f"{len(boxes)} boxes for {n} maps")
    flat = maps.reshape(n, -1)
    y, x = np.divmod(flat.argmax(1), w)
    cx, cy = x + 0.5, y + 0.5
    inside = (boxes[:, 0] <= cx) & (cx < boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy < boxes[:, 3])
    inside &= flat.max(1) > flat.min(1)
    cover = _coverage(boxes, h, w)
    total = flat.sum(1)
    energy = np.where(total > 0, (maps * cover).sum((1, 2)) / np.where(total > 0, total, 1), 0.0)
    return Localisation(boxes.astype(np.float32), inside, energy.astype(np.float32),
                        (cover.sum((1, 2)) / (h * w)).astype(np.float32))


def map_box(box, source_size: tuple[int, int], resolution: int, *,
            crop_fraction: float | None = None) -> tuple[float, float, float, float] | None:
    """A box [x0, y0, x1, y1] in source-image pixels -> the same box in the model's input
    pixels, under the eval transform.

    source_size: the source image's (width, height). crop_fraction: for image folders, the
    eval transform's (EVAL_CROP_FRACTION, `data.folder.folder_transform`): resize the short
    side to round(resolution / crop_fraction) and the long side in proportion (truncated, as
    torchvision does), then crop resolution x resolution from the centre (offsets rounded half
    to even, as torchvision does). None (in-memory datasets, `data.batching.to_model_input`): a
    plain resize of the whole image to resolution x resolution. The result is clipped to the
    input; None when the crop leaves nothing of the box.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = source_size
    new_w = new_h = resolution
    left = top = 0
    if crop_fraction is not None:
        short = round(resolution / crop_fraction)
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        top, left = int(round((new_h - resolution) / 2.0)), int(round((new_w - resolution) / 2.0))
    sx, sy = new_w / width, new_h / height
    clip = lambda v: min(max(v, 0.0), float(resolution))  # noqa: E731
    out = (clip(x0 * sx - left), clip(y0 * sy - top), clip(x1 * sx - left), clip(y1 * sy - top))
    if out[2] <= out[0] or out[3] <= out[1]:
        return None
    return out


def _read_boxes_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no such boxes file: {path}")
    return read_json(path, "boxes file")  # one line for text that is not usable JSON


def _finite(value) -> bool:
    """A finite number that fits a float (JSON integers may not: 10**400 overflows)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def load_boxes(boxes) -> dict[str, tuple[float, float, float, float]]:
    """A boxes file (JSON: image path -> [x0, y0, x1, y1] in source pixels, x1 and y1 exclusive)
    or such a dict -> {key: box}. Checks the form of each box (four numbers, x0 < x1, y0 < y1,
    x0, y0 >= 0); whether a box fits its image is checked against the image
    (`boxes_for_split`)."""
    source = "boxes"
    if isinstance(boxes, (str, Path)):
        source = f"boxes file {boxes}"
        boxes = _read_boxes_file(Path(boxes))
    if not isinstance(boxes, dict) or not boxes:
        raise ValueError(f"{source} must be a non-empty JSON object mapping image paths to "
                         f"[x0, y0, x1, y1]")
    out = {}
    for key, box in boxes.items():
        numbers = (isinstance(box, (list, tuple)) and len(box) == 4 and
                   all(_finite(v) for v in box))
        if not numbers:
            raise ValueError(f"{source}: the box of {key!r} must be [x0, y0, x1, y1] (four "
                             f"numbers), got {json.dumps(box)}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ValueError(f"{source}: the box of {key!r} must have 0 <= x0 < x1 and "
                             f"0 <= y0 < y1, got {json.dumps(box)}")
        out[str(key)] = (x0, y0, x1, y1)
    return out


def _split_keys(split) -> list[tuple[str, ...]]:
    """For each image of a split, the keys a boxes file may name it by: for image folders its
    path relative to the folder (`val/cat/1.jpg`, as benchmarks/make_folder.py writes), to the
    split (`cat/1.jpg`) and in full; for in-memory splits and Python datasets its index in
    the split ("17")."""
    samples = getattr(split, "samples", None)
    if samples is None:
        return [(str(i),) for i in range(len(split))]
    root = Path(split.root)
    return [(Path(os.path.relpath(path, root.parent)).as_posix(),
             Path(os.path.relpath(path, root)).as_posix(), Path(path).as_posix(),
             Path(path).resolve().as_posix()) for path, _ in samples]


def _source_size(split, index: int) -> tuple[int, int]:
    """(width, height) of one source image, from the file's header for image folders."""
    samples = getattr(split, "samples", None)
    if hasattr(split, "pool") and samples is None:  # a Python dataset's item, as decoded
        return split.pool.reader(split.ref(index))[0].size
    if samples is None:
        return int(split.images.shape[-1]), int(split.images.shape[-2])
    from PIL import Image
    with Image.open(samples[index][0]) as image:
        return image.size


def _match_boxes(boxes: dict, split, split_name: str) -> dict[int, tuple[str, tuple]]:
    """{image index in the split: (key, box)} for the keys that name an image of the split."""
    keys = _split_keys(split)
    lookup = {}
    for i, names in enumerate(keys):
        for name in names:
            lookup.setdefault(name, i)
    matched = {}
    for key, box in boxes.items():
        name = key if key in lookup else Path(key).as_posix()
        if name in lookup:
            matched[lookup[name]] = (key, box)
    if not matched:
        example = keys[0][0] if keys else "?"
        raise ValueError(f"none of the {len(boxes)} boxes names an image of the {split_name} "
                         f"split: keys are paths like {example!r}")
    return matched


def boxes_for_split(boxes: dict, split, split_name: str, resolution: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Match a boxes dict to the images of a split: (indices of the boxed images, their boxes
    (N, 4) in the model's input pixels, how many boxes the eval transform's crop removed).
    Raises ValueError when no key names an image of the split, or a box does not fit its
    image."""
    crop = EVAL_CROP_FRACTION if hasattr(split, "pool") else None  # decoded one by one
    indices, mapped, lost = [], [], 0
    for i, (key, box) in sorted(_match_boxes(boxes, split, split_name).items()):
        width, height = _source_size(split, i)
        if box[2] > width or box[3] > height:
            raise ValueError(f"the box of {key!r} {list(box)} lies outside its "
                             f"{width}x{height} image")
        out = map_box(box, (width, height), resolution, crop_fraction=crop)
        if out is None:
            lost += 1
            continue
        indices.append(i)
        mapped.append(out)
    if not indices:
        raise ValueError(f"every box lies outside the centre crop the model sees "
                         f"({resolution}x{resolution})")
    return np.asarray(indices), np.asarray(mapped, dtype=np.float64), lost
