"""End-to-end training throughput (data + step) and peak memory: effscale's engine vs a plain
timm training loop, same model family member, data, resolution, batch and optimizer.

Pairing: effscale "b0@res=R" vs timm "efficientnet_b0" (same architecture, 5.29M params at
1000 classes; both built with in_chans=1, 10 classes). Data: the real Fashion-MNIST training
images (first N), resized on the fly to R. Both use SGD+Nesterov, channels_last, the device's
default precision. Each side runs in its own process so peak RSS (CPU) / peak CUDA memory
is its own.

    .venv/bin/python benchmarks/train_throughput.py --res 64 --batch 32 --images 960
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def peak_memory_mb(device: str) -> float:
    import torch
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_effscale(args) -> dict:
    import effscale
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = effscale.train(model=f"b0@res={args.res}", data="fashion-mnist", epochs=1,
                                 batch_size=args.batch, subset=args.images, val_subset=64,
                                 out=out, quiet=True, device=args.device, recipe="fast",
                                 ema_decay=0.0, checkpoint_minutes=1e6)
        wall = time.perf_counter() - start
    return dict(images_per_s=summary["images_per_s"], wall_s=wall,
                peak_mb=peak_memory_mb(args.device))


def run_timm(args) -> dict:
    import timm
    import torch
    import torch.nn.functional as F
    from effscale.data import load_data

    device = torch.device(args.device)
    data = load_data("fashion-mnist", subset=args.images, val_subset=64, device=device)
    model = timm.create_model("efficientnet_b0", num_classes=10, in_chans=1).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    images, labels = data.train.images, data.train.labels
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).to(device)
    n = len(labels) // args.batch * args.batch
    start = time.perf_counter()
    for i in range(0, n, args.batch):
        index = order[i:i + args.batch]
        x = F.interpolate(images[index].float(), size=(args.res, args.res), mode="bilinear")
        x = ((x / 255 - 0.286) / 0.353).contiguous(memory_format=torch.channels_last)
        with amp:
            loss = F.cross_entropy(model(x), labels[index], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # the same per-step sync as the engine's loss logging
    seconds = time.perf_counter() - start
    return dict(images_per_s=n / seconds, wall_s=seconds, peak_mb=peak_memory_mb(args.device))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=960)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=("effscale", "timm"))
    args = p.parse_args()
    if args.only:
        import torch
        torch.set_num_threads(args.threads)
        result = (run_effscale if args.only == "effscale" else run_timm)(args)
        print(json.dumps(result))
        return
    rows = []
    for side in ("effscale", "timm"):
        argv = [sys.executable, __file__, "--only", side] + [
            f"--{k}={v}" for k, v in vars(args).items() if k != "only"]
        line = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
        rows.append(dict(engine=side, **json.loads(line.splitlines()[-1])))
    print(f"b0 at {args.res}px, batch {args.batch}, {args.images} Fashion-MNIST images, "
          f"{args.device}, {args.threads} threads")
    print("| engine | images/s (data + step) | peak memory MB | wall s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['images_per_s']:.1f} | {r['peak_mb']:.0f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
