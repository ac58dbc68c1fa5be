"""The engine with its defaults against the yardstick (`reference_loop.py`) at equal epochs:
top-1, wall time and end-to-end training images/s for both, on the same model and data.

    .venv/bin/python benchmarks/make_folder.py /tmp/folder64        # the 64-px image folder
    .venv/bin/python benchmarks/time_to_accuracy.py --cases digits,digits-s1 --seeds 0,1,2
    .venv/bin/python benchmarks/time_to_accuracy.py --cases fashion --seeds 0
    .venv/bin/python benchmarks/time_to_accuracy.py --cases folder --folder /tmp/folder64

The reference loop runs at each lr of --ref-lrs (peak lr at batch 128) and the best mean is
the yardstick; where the engine picked another batch (small data) the reference also runs at
that batch, its best lr scaled linearly, for an images/s comparison at equal batch: the engine must match the reference loop *at its best lr*, with no lr given.
Both sides train on the same split (the engine's: digits 1,347 / 450) and are scored on the
same validation images; the engine's number is its final epoch's (EMA weights where it keeps
them), never the best epoch's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import effscale

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_loop  # noqa: E402

# name -> (model, data, stem stride, epochs: None = the recipe's default)
CASES = {
    "digits": ("b0@w=0.5,d=0.5,res=32", "digits", 2, 10),
    "digits-s1": ("b0@w=0.5,d=0.5,res=32", "digits", 1, 10),
    "fashion": ("b0@phi=-10,r=0.5779", "fashion-mnist", 2, None),
    "folder": ("b0@w=0.5,d=0.5,res=64", "imagefolder:{folder}", 2, 10),
}


def run_engine(model, data, stem, epochs, seed) -> dict:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        kwargs = dict(epochs=epochs) if epochs else {}
        summary = effscale.train(model=model, data=data, stem_stride=stem, seed=seed, quiet=True,
                                 out=f"{out}/run", **kwargs)
        wall = time.perf_counter() - started
        batch = json.loads(Path(out, "run", "config.json").read_text())["batch_size"]
    return dict(top1=summary["final_top1"], wall_s=wall, images_per_s=summary["images_per_s"],
                epochs=summary["epochs"], batch=batch)


def mean_sd(values) -> str:
    values = list(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {spread:.2f}"


def compare(case: str, folder: str | None, seeds: list[int], lrs: list[float]) -> None:
    model, data, stem, epochs = CASES[case]
    data = data.format(folder=folder)
    engine = [run_engine(model, data, stem, epochs, s) for s in seeds]
    epochs = engine[0]["epochs"]
    resolution = effscale.model_spec(model, stem_stride=stem).resolution
    tensors = reference_loop.tensors(data, resolution)
    reference = {lr: [reference_loop.train(model, tensors, epochs=epochs, lr=lr, stem_stride=stem,
                                           seed=s) for s in seeds] for lr in lrs}
    best_lr = max(reference, key=lambda lr: statistics.mean(r["top1"] for r in reference[lr]))
    batch = engine[0]["batch"]
    print(f"\n{case}: {model}, stem stride {stem}, {data}, {epochs} epochs, seeds "
          f"{','.join(map(str, seeds))}")
    print(f"  {'':30s} {'top-1 %':>15s} {'wall s':>8s} {'img/s':>7s}")
    rows = [(f"engine, defaults (batch {batch})", engine)] + [
        (f"reference lr {lr:g}" + (" (best)" if lr == best_lr else ""), runs)
        for lr, runs in reference.items()]
    if batch != reference_loop.BATCH:  # the reference at the engine's batch too: images/s depends on the batch
        rows.append((f"reference lr {best_lr * batch / reference_loop.BATCH:g}, batch {batch}", [
            reference_loop.train(model, tensors, epochs=epochs, lr=best_lr * batch / reference_loop.BATCH,
                                 batch_size=batch, stem_stride=stem, seed=s) for s in seeds]))
    for label, runs in rows:
        print(f"  {label:30s} {mean_sd(r['top1'] for r in runs):>15s} "
              f"{statistics.median(r['wall_s'] for r in runs):8.0f} "
              f"{statistics.median(r['images_per_s'] for r in runs):7.0f}")
    gap = statistics.mean(r["top1"] for r in engine) - statistics.mean(
        r["top1"] for r in reference[best_lr])
    speed = statistics.median(r["images_per_s"] for r in engine) / statistics.median(
        r["images_per_s"] for r in reference[best_lr])
    at_batch = rows[-1][1] if batch != reference_loop.BATCH else reference[best_lr]
    same_batch = statistics.median(r["images_per_s"] for r in engine) / statistics.median(
        r["images_per_s"] for r in at_batch)
    print(f"  engine - best reference: {gap:+.2f} points; engine / reference images/s: "
          f"{speed:.2f}x (at the engine's batch: {same_batch:.2f}x)", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="digits,digits-s1", help=f"of {', '.join(CASES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ref-lrs", default="0.05,0.1,0.2")
    parser.add_argument("--folder", help="image folder for the 'folder' case (make_folder.py)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown or ("folder" in cases and not args.folder):
        parser.error(f"unknown case {unknown[0]}" if unknown else "the folder case needs --folder")
    for case in cases:
        compare(case, args.folder, [int(s) for s in args.seeds.split(",")],
                [float(v) for v in args.ref_lrs.split(",")])


if __name__ == "__main__":
    main()
