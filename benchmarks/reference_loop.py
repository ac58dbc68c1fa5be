"""The yardstick: a plain PyTorch training loop, the standard way people train a small
classifier, with nothing from effscale's training code (only `create_model` and the dataset
tensors). SGD with Nesterov momentum, torch's OneCycleLR (10% warm-up from peak / 25, momentum
cycled 0.95 -> 0.85 -> 0.95, cosine anneal), label smoothing 0.1, weight decay on every
parameter, no augmentation, no EMA. The images are resized and normalised once, up front.

    .venv/bin/python benchmarks/reference_loop.py --model b0@w=0.5,d=0.5,res=32 --data digits \
        --epochs 10 --lr 0.05 --seeds 0,1,2

`time_to_accuracy.py` runs it beside the engine's defaults.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import effscale

BATCH = 128  # the reference's batch; its lrs are peak lrs at this batch


def tensors(data: str, resolution: int, *, subset=None):
    """(train_x, train_y, val_x, val_y, classes, channels): float32 normalised at `resolution`.
    In-memory datasets come from effscale.data.load_data; an image folder is decoded once with
    torchvision (resize the short side, centre crop), as a plain script would."""
    if data.startswith("imagefolder:"):
        return _folder_tensors(data.partition(":")[2], resolution)
    from effscale.data import load_data
    loaded = load_data(data, subset=subset)
    mean = torch.tensor(loaded.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.info.std).view(1, -1, 1, 1)

    def prepare(images):
        x = images.float() / 255
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
        return ((x - mean) / std).contiguous()
    return (prepare(loaded.train.images), loaded.train.labels, prepare(loaded.val.images),
            loaded.val.labels, loaded.info.num_classes, loaded.info.in_chans)


def _folder_tensors(root: str, resolution: int):
    from torchvision import datasets, transforms

    def stack(split, size):  # val: effscale's eval transform, so both score the same images
        transform = transforms.Compose([
            transforms.Resize(size), transforms.CenterCrop(resolution), transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        folder = datasets.ImageFolder(f"{root}/{split}", transform=transform)
        xs, ys = zip(*(folder[i] for i in range(len(folder))))
        return torch.stack(xs), torch.tensor(ys), len(folder.classes)
    train_x, train_y, classes = stack("train", resolution)
    val_x, val_y, _ = stack("val", round(resolution / 0.875))
    return train_x, train_y, val_x, val_y, classes, 3


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch].contiguous(memory_format=torch.channels_last))
                   .argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(y), batch))
    return 100.0 * correct / len(y)


def train(model_name: str, data, *, epochs: int, lr: float, batch_size: int = BATCH,
          stem_stride: int = 2, seed: int = 0, weight_decay: float = 5e-5,
          label_smoothing: float = 0.1) -> dict:
    """Train from scratch; `data` is what `tensors` returns. Returns top-1 and timings."""
    train_x, train_y, val_x, val_y, classes, channels = data
    torch.manual_seed(seed)
    model = effscale.create_model(model_name, classes, stem_stride=stem_stride, in_chans=channels)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                weight_decay=weight_decay)
    steps_per_epoch = len(train_y) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, pct_start=0.1,
                                                    total_steps=epochs * steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    shuffle = torch.Generator().manual_seed(seed)
    train_seconds, started = 0.0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(train_y), generator=shuffle)
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            images = train_x[index].contiguous(memory_format=torch.channels_last)
            loss = criterion(model(images), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        train_seconds += time.perf_counter() - t0
    top1 = accuracy(model, val_x, val_y)
    return dict(top1=top1, wall_s=time.perf_counter() - started,
                images_per_s=epochs * steps_per_epoch * batch_size / train_seconds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="b0@w=0.5,d=0.5,res=32")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--lr", default="0.05", help="comma-separated peak lrs to try")
    parser.add_argument("--stem-stride", type=int, default=2)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    resolution = effscale.model_spec(args.model, stem_stride=args.stem_stride).resolution
    data = tensors(args.data, resolution)
    for lr in (float(v) for v in args.lr.split(",")):
        runs = [train(args.model, data, epochs=args.epochs, lr=lr, batch_size=args.batch_size,
                      stem_stride=args.stem_stride, seed=int(s)) for s in args.seeds.split(",")]
        top1 = [r["top1"] for r in runs]
        spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
        print(f"lr {lr:g}: top-1 {statistics.mean(top1):.2f} +- {spread:.2f} "
              f"({', '.join(f'{t:.1f}' for t in top1)}), "
              f"{statistics.median(r['images_per_s'] for r in runs):.0f} img/s, "
              f"{statistics.median(r['wall_s'] for r in runs):.0f} s a run", flush=True)


if __name__ == "__main__":
    main()
