"""Does `effscale cam --layer auto` find the object? The peak-in-box rate of every stage, of
auto, and of the other layer rules, on tasks where the object's box is known.

    .venv/bin/python benchmarks/cam_localisation.py squares [--seeds 0 1 2]
    .venv/bin/python benchmarks/cam_localisation.py fashion [--seeds 0 1 2]
    .venv/bin/python benchmarks/cam_localisation.py run RUN_DIR --data imagefolder:PATH \\
        --boxes PATH/boxes.json

squares: the class is the colour of a 6-px square at a random place on a grey 32-px canvas (its
  box: the square grown by 3 px);
  b0@w=0.25,d=0.25,res=32 with a stride-1 stem, trained 3 epochs on 1,024 images. Synthetic.
fashion: a Fashion-MNIST item (trouser, sandal or bag) scaled to 16-22 px and pasted, as its own
  grey levels, at a random place on a dark, faintly textured 32-px canvas; the same model,
  trained 5 epochs on 1,200 images. Real image content.
Both are tests/test_cam.py's tasks (it imports them from here).
run: any trained run with a boxes file for its validation images, e.g. the issue's
  `effscale train --model b0@phi=-4,res=64 --data imagefolder:PATH --epochs 8` on a folder
  from benchmarks/make_folder.py (which writes PATH/boxes.json).

For each model: the peak-in-box rate of every layer's Grad-CAM over all the boxed validation
images (the box mapped through the eval transform), the chance rate (mean box area), and the
layer each rule picks with its rate, on disjoint class-balanced samples of AUTO_IMAGES (128)
images: `peak` (the single best layer by the peak test, which auto ranks layers by before
averaging the two best), `insertion` (largest insertion AUC),
`deletion` (lowest deletion AUC relative to random order), `size` (the old rule: deepest map
>= 4x4), and `fused` (the mean of the candidate layers' maps, at the input resolution). The verdict
per model: is auto within 5 points of the best single stage, and at least 75%?
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from effscale import create_model
from effscale.explain.cam import cam, load_data_for, localise
from effscale.explain.faithfulness import (curve_auc, deletion_score, insertion_curves,
                                           peak_window_scores)
from effscale.explain.gradcam import layer_maps
from effscale.explain.layers import AUTO_IMAGES, candidate_layers, layer_sizes
from effscale.io.checkpoint import load_model_file
from effscale.data import Data, DatasetInfo, TensorSplit, load_data, make_loader
from effscale.data.splits import IMAGENET_MEAN, IMAGENET_STD

SMALL_MODEL = "b0@w=0.25,d=0.25,res=32"  # maps 32, 16, 8, 4, 4, 2, 2, 2 with a stride-1 stem
SLACK, FLOOR = 0.05, 0.75  # the targets: auto within 5 points of the best stage, and >= 75%

# --- the tasks (tests/test_cam.py imports them: the tests and this benchmark measure the same) ----

CANVAS, SQUARE = 32, 6
# A square's box is the square grown by MARGIN px on each side (clipped to the canvas): a 6-px
# object is about one cell of a stride-4 map, so a peak on its border counts as finding it.
MARGIN = 3
COLOURS = torch.tensor([[220, 40, 40], [40, 200, 40], [50, 70, 230]], dtype=torch.float32)
FASHION_ITEMS = (1, 5, 8)  # trouser, sandal, bag: distinct silhouettes, learnt in seconds
ITEM_SIDES = (16, 22)  # the item's side on the 32-px canvas, inclusive


def squares(n: int, seed: int) -> tuple[TensorSplit, dict]:
    """Grey canvases with faint noise and one coloured square at a random place; the square's
    colour is the class. Returns (TensorSplit uint8, boxes {index: [x0, y0, x1, y1]}, the
    square grown by MARGIN)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(100, 125, (n, 1, CANVAS, CANVAS), generator=g).float().repeat(1, 3, 1, 1)
    labels = torch.randint(0, len(COLOURS), (n,), generator=g)
    corners = torch.randint(0, CANVAS - SQUARE + 1, (n, 2), generator=g)
    boxes = {}
    for i, (y, x) in enumerate(corners.tolist()):
        images[i, :, y:y + SQUARE, x:x + SQUARE] = COLOURS[labels[i]][:, None, None]
        boxes[str(i)] = [max(x - MARGIN, 0), max(y - MARGIN, 0),
                         min(x + SQUARE + MARGIN, CANVAS), min(y + SQUARE + MARGIN, CANVAS)]
    return TensorSplit(images.to(torch.uint8), labels), boxes


def dark_canvas(item: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """A 28x28 Fashion-MNIST item -> (32x32x3 uint8 image, its box [x0, y0, x1, y1]): the item,
    scaled to 16-22 px, as its own grey levels on a dark, faintly textured canvas at a random
    place. (benchmarks/make_folder.py's tinted items on bright random-coloured canvases need
    minutes of training before a model learns them: that is the `run` task.)"""
    base = rng.uniform(20, 90)
    coarse = rng.normal(0, 10, (4, 4)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((CANVAS, CANVAS), Image.BICUBIC))
    canvas = base + texture + rng.normal(0, 4, (CANVAS, CANVAS))
    side = int(rng.integers(ITEM_SIDES[0], ITEM_SIDES[1] + 1))
    grey = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR), np.float32) / 255
    alpha = np.clip(grey * 2, 0, 1)  # the item's own shading doubles as its opacity
    x0, y0 = (int(v) for v in rng.integers(0, CANVAS - side + 1, 2))
    patch = canvas[y0:y0 + side, x0:x0 + side]
    canvas[y0:y0 + side, x0:x0 + side] = patch * (1 - alpha) + 255 * (0.5 + 0.5 * grey) * alpha
    ys, xs = np.nonzero(alpha > 0.1)
    box = [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
    image = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=-1), box


def fashion(source, per_class: int, seed: int) -> tuple[TensorSplit, dict]:
    images, labels = source.images[:, 0].numpy(), source.labels.numpy()
    out, ys, boxes = [], [], {}
    for cls, item in enumerate(FASHION_ITEMS):
        for k, index in enumerate(np.flatnonzero(labels == item)[:per_class]):
            image, box = dark_canvas(images[index], np.random.default_rng([seed, cls, k]))
            boxes[str(len(out))] = box
            out.append(image)
            ys.append(cls)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    return TensorSplit(x, torch.tensor(ys)), boxes


def train_small(train, info, classes: int, *, epochs: int, seed: int, batch: int = 32,
                lr: float = 3e-3, name: str = SMALL_MODEL, stem: int = 1):
    """A small model trained with AdamW and a one-cycle schedule: seconds on one core."""
    torch.manual_seed(seed)
    model = create_model(name, classes, stem_stride=stem, drop_path_rate=0.0, drop_rate=0.0)
    res = model.spec.resolution
    steps = epochs * len(make_loader(train, batch_size=batch, resolution=res, train=True,
                                     info=info))
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.25)
    model.train()
    for epoch in range(epochs):
        for x, y in make_loader(train, batch_size=batch, resolution=res, train=True,
                                seed=seed, epoch=epoch, info=info):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def squares_task(seed: int, val_images: int = 64):
    """The squares task: (model trained 3 epochs on 1,024 images, Data, validation boxes)."""
    train, _ = squares(1024, seed=0)
    val, boxes = squares(val_images, seed=1)
    info = DatasetInfo("squares", 3, ("red", "green", "blue"), 3, CANVAS, IMAGENET_MEAN,
                       IMAGENET_STD)
    return train_small(train, info, 3, epochs=3, seed=seed), Data(info, train, val), boxes


def fashion_task(seed: int, val_images: int = 96):
    """The Fashion-MNIST items task: (model trained 5 epochs on 1,200 images, Data, validation
    boxes)."""
    source = load_data("fashion-mnist", download=False)
    train, _ = fashion(source.train, 400, seed=0)
    val, boxes = fashion(source.val, -(-val_images // len(FASHION_ITEMS)), seed=1)
    info = DatasetInfo("fashion-dark", 3, ("trouser", "sandal", "bag"), 3, CANVAS, (0.5,) * 3,
                       (0.25,) * 3)
    return train_small(train, info, 3, epochs=5, seed=seed), Data(info, train, val), boxes


# --- the measurement ----------------------------------------------------------------------------

RULES = ("peak", "insertion", "deletion", "size")


def rule_picks(model, inputs, maps, targets, candidates) -> dict:
    """The layer each rule picks from measurements on `inputs` (no boxes): peak = the best by
    the peak test (select_layer's ranking); insertion = largest insertion AUC; deletion = lowest
    deletion AUC relative to a random order; size = the old rule, deepest map >= 4x4."""
    peak = [peak_window_scores(model, inputs, maps[:, k], targets).mean() for k in candidates]
    insertion = [curve_auc(insertion_curves(model, inputs, maps[:, k], targets)).mean()
                 for k in candidates]
    deletion = [deletion_score(model, inputs, maps[:, k], targets).ratio for k in candidates]
    return {"peak": candidates[int(np.argmax(peak))],
            "insertion": candidates[int(np.argmax(insertion))],
            "deletion": candidates[int(np.argmin(deletion))], "size": max(candidates)}


def measure(model, data, boxes, *, samples: int = 3, method: str = "gradcam") -> dict:
    """Rates of every layer on all the boxed images, auto's pick through cam(), and each
    rule's picks on `samples` disjoint samples of AUTO_IMAGES of them."""
    start = time.perf_counter()
    auto = cam(model, data, images=None, layer="auto", boxes=boxes, method=method)
    inputs, targets, loc_boxes = auto.inputs, auto.targets, auto.localisation.boxes
    count = len(layer_sizes(model))
    maps, _ = layer_maps(model, inputs, targets, method=method, layers=range(count))
    rates = [localise(maps[:, k], loc_boxes).rate for k in range(count)]
    candidates = candidate_layers(model)
    picks = {rule: [] for rule in RULES}
    for s in range(min(samples, len(inputs) // AUTO_IMAGES)):
        part = slice(s * AUTO_IMAGES, (s + 1) * AUTO_IMAGES)  # class-balanced, disjoint
        for rule, pick in rule_picks(model, inputs[part], maps[part], targets[part],
                                     candidates).items():
            picks[rule].append(pick)
    best = max(rates[k] for k in candidates)
    got = auto.localisation.rate
    return {
        "accuracy": float(auto.correct.mean()), "images": len(inputs),
        "chance": auto.localisation.chance, "rates": rates, "candidates": candidates,
        "auto": auto.layer.label, "auto_rate": got, "auto_reason": auto.layer.reason,
        "picks": picks, "fused_rate": localise(maps[:, candidates].mean(1), loc_boxes).rate,
        "best": best, "ok": got >= best - SLACK and got >= FLOOR,
        "seconds": time.perf_counter() - start}


def report(label: str, m: dict) -> list[str]:
    count = len(m["rates"])
    rate = lambda k: f"{100 * m['rates'][k]:.0f}"  # noqa: E731
    stages = " | ".join(rate(k) + ("" if k in m["candidates"] else "*") for k in range(count))
    rules = " | ".join(" ".join(f"{k + 1 if k < count - 1 else 'h'}:{rate(k)}"
                                for k in m["picks"][rule]) for rule in RULES)
    return [f"| {label} | {100 * m['accuracy']:.0f} | {m['images']} | {100 * m['chance']:.0f} | "
            f"{stages} | **{m['auto']}: {100 * m['auto_rate']:.0f}** | "
            f"{'yes' if m['ok'] else 'NO'} | {rules} | {100 * m['fused_rate']:.0f} |"]


HEADER = ["| task, seed | top-1 % | images | chance % | stage 1 | 2 | 3 | 4 | 5 | 6 | 7 | head | "
          "auto | auto ok | peak test, one layer | insertion | deletion | size rule | "
          "fused % |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=("squares", "fashion", "run"))
    p.add_argument("run_dir", nargs="?", help="for `run`: a run directory or model file")
    p.add_argument("--data", help="for `run`: the dataset (e.g. imagefolder:PATH)")
    p.add_argument("--boxes", help="for `run`: the boxes file of its validation images")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds of the built-in tasks")
    p.add_argument("--val-images", type=int, default=384, help="built-in tasks' boxed images")
    p.add_argument("--samples", type=int, default=3,
                   help="the rules are compared on this many disjoint samples of AUTO_IMAGES images")
    p.add_argument("--method", default="gradcam")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = list(HEADER)
    if args.task == "run":
        if not (args.run_dir and args.boxes):
            p.error("run needs RUN_DIR and --boxes")
        model, _ = load_model_file(args.run_dir, use_ema=True)
        data = load_data_for(args.run_dir, args.data)
        m = measure(model, data, args.boxes, samples=args.samples, method=args.method)
        lines += report(f"{Path(args.run_dir).name}", m)
        print(f"{args.run_dir}: {m['auto_reason']} ({m['seconds']:.0f} s)", file=sys.stderr)
    else:
        build = squares_task if args.task == "squares" else fashion_task
        for seed in args.seeds:
            start = time.perf_counter()
            model, data, boxes = build(seed, args.val_images)
            trained = time.perf_counter() - start
            m = measure(model, data, boxes, samples=args.samples, method=args.method)
            lines += report(f"{args.task}, {seed}", m)
            print(f"{args.task} seed {seed}: trained in {trained:.0f} s, measured in "
                  f"{m['seconds']:.0f} s; {m['auto_reason']}", file=sys.stderr)
    print("\n".join(lines))
    print("\nRates are peak-in-box % over all the boxed validation images; * = not a candidate "
          "(map < 4x4); rule columns: the stage picked on each sample (h = head) and its rate.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
