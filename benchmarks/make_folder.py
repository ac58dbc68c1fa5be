"""Write a 64-px ImageNet-style image folder made from real images, for `imagefolder:` benchmarks.

    .venv/bin/python benchmarks/make_folder.py OUT_DIR [--train-per-class 400]
        [--val-per-class 100] [--seed 0] [--classes 10 | --classes trouser,pullover,...]

Builds OUT_DIR/train/<class>/NNNNN.png and OUT_DIR/val/<class>/NNNNN.png (by default all 10
Fashion-MNIST classes; `--classes N` keeps the first N, `--classes trouser,pullover,sneaker,bag`
the named ones, as the README's Grad-CAM example does) and OUT_DIR/boxes.json. Why: benchmarks of the `imagefolder:PATH` path
(PIL decode in DataLoader workers, RandomResizedCrop, ...) need a folder of real image
content at a size where training is quick, and none ships with the machine. Fashion-MNIST
does (Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist): each item (28x28,
grey) is scaled to 40-48 px, tinted a random colour and pasted at a random position on a
64x64 RGB canvas with a random-coloured, lightly textured background, so the class is in
the object and neither in the colour nor in the place. Train images come from Fashion-MNIST's
train split, val images from its test split.

boxes.json maps each image path relative to OUT_DIR (e.g. "val/trouser/00003.png") to
[x0, y0, x1, y1], the tight box in pixels of the item's visible pixels (x1, y1 exclusive),
for localisation benchmarks of class activation maps.

Everything is a function of --seed and the item's (split, class, index): a rerun with the
same seed writes the same files, more images per class only adds files, and a subset of
the classes writes exactly those classes' files of the full folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64  # canvas side
ITEM_SIZES = (40, 48)  # the item's side after scaling, inclusive range
VISIBLE = 0.1  # alpha above which an item pixel counts for its box


def class_folder(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")  # "T-shirt/top" -> "t-shirt-top"


def render(item: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """A 28x28 uint8 item -> (64x64x3 uint8 image, its box [x0, y0, x1, y1])."""
    # background: a random colour, a smooth low-frequency texture and a little pixel noise
    base = rng.uniform(0, 255, 3)
    coarse = rng.normal(0, 18, (4, 4, 3))
    smooth = np.stack([np.asarray(Image.fromarray(c.astype(np.float32)).resize(
        (SIZE, SIZE), Image.BICUBIC)) for c in coarse.transpose(2, 0, 1)], axis=-1)
    background = base + smooth + rng.normal(0, 4, (SIZE, SIZE, 3))
    # the item: scaled, its grey level used as both shading and alpha, tinted a colour that
    # stands out from the background (the complement's direction when they are too close)
    side = int(rng.integers(ITEM_SIZES[0], ITEM_SIZES[1] + 1))
    grey = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR), np.float32) / 255
    tint = rng.uniform(0, 255, 3)
    if np.abs(tint - base).mean() < 60:
        tint = 255 - base
    alpha = np.clip(grey * 2, 0, 1)[..., None]
    colour = tint * (0.5 + 0.5 * grey[..., None])
    x0, y0 = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
    patch = background[y0:y0 + side, x0:x0 + side]
    background[y0:y0 + side, x0:x0 + side] = patch * (1 - alpha) + colour * alpha
    ys, xs = np.nonzero(alpha[..., 0] > VISIBLE)
    box = [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
    return np.clip(background, 0, 255).round().astype(np.uint8), box


def pick_classes(text: str | None, names) -> list[int]:
    """--classes: None (all), a count N (the first N) or comma-separated class folder names
    ("trouser,bag") -> class indices, in Fashion-MNIST's order."""
    folders = [class_folder(n) for n in names]
    if text is None:
        return list(range(len(names)))
    if text.strip().isdigit():
        count = int(text)
        if not 1 <= count <= len(names):
            raise ValueError(f"--classes {count}: need 1 to {len(names)}")
        return list(range(count))
    wanted = [class_folder(w) for w in text.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in folders]
    if unknown or not wanted:
        raise ValueError(f"--classes: unknown class(es) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(folders)}")
    return sorted({folders.index(w) for w in wanted})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to create (must not hold train/ or val/)")
    p.add_argument("--train-per-class", type=int, default=400, help="at most 6000")
    p.add_argument("--val-per-class", type=int, default=100, help="at most 1000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", help="N (the first N Fashion-MNIST classes) or class names, "
                                     "e.g. trouser,pullover,sneaker,bag (default: all 10)")
    args = p.parse_args(argv)
    if not (1 <= args.train_per_class <= 6000 and 1 <= args.val_per_class <= 1000):
        p.error("need 1 <= --train-per-class <= 6000 and 1 <= --val-per-class <= 1000")
    if (args.out / "train").exists() or (args.out / "val").exists():
        p.error(f"{args.out} already holds train/ or val/; remove them or pick another folder")

    from effscale.data import load_data  # reads the Debian idx files
    from effscale.data.sources import FASHION_CLASSES
    try:
        keep = pick_classes(args.classes, FASHION_CLASSES)
    except ValueError as exc:
        p.error(str(exc))
    start = time.perf_counter()
    data = load_data("fashion-mnist", download=False)
    boxes = {}
    for split_id, (split, per_class) in enumerate(
            (("train", args.train_per_class), ("val", args.val_per_class))):
        tensors = getattr(data, split)
        images, labels = tensors.images[:, 0].numpy(), tensors.labels.numpy()
        order = np.random.default_rng([args.seed, split_id]).permutation(len(labels))
        for cls, name in enumerate(FASHION_CLASSES):
            if cls not in keep:
                continue
            folder = args.out / split / class_folder(name)
            folder.mkdir(parents=True, exist_ok=True)
            chosen = order[labels[order] == cls][:per_class]  # a seeded choice within the class
            for i, index in enumerate(chosen):
                rng = np.random.default_rng([args.seed, split_id, cls, i])
                image, box = render(images[index], rng)
                relative = f"{split}/{class_folder(name)}/{i:05d}.png"
                Image.fromarray(image).save(args.out / relative)
                boxes[relative] = box
    lines = (f"  {json.dumps(path)}: {json.dumps(box)}" for path, box in boxes.items())
    (args.out / "boxes.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one per line
    print(f"wrote {len(boxes)} images ({args.train_per_class} train + {args.val_per_class} val "
          f"per class, {len(keep)} classes) to {args.out} in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
