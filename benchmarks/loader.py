"""Is the data loader ever what limits training? Loader images/s vs train-step images/s.

    .venv/bin/python benchmarks/loader.py [--device cpu] [--threads 2] [--batch-size 128]

For each dataset and resolution: the loader's images/s (training mode, the dataset's default
augmentation, resize and normalisation included) and the images/s of full training steps
(forward, backward, SGD) of a small effscale model at that resolution, both on --device, and
their ratio: a ratio well above 1 means the loader is never the bottleneck.
"""

from __future__ import annotations

import argparse
import time

import torch

import effscale
from effscale.data import default_augment, load_data, make_loader


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_rate(split, *, dataset, resolution, batch_size, device, min_images=5000):
    """Images/s over whole epochs (at least min_images), batches consumed as training would."""
    images, epoch = 0, 0
    _sync(device)
    start = time.perf_counter()
    while images < min_images:
        for x, _ in make_loader(split, batch_size=batch_size, resolution=resolution, train=True,
                                seed=0, epoch=epoch, augment=default_augment(dataset),
                                device=device):
            images += len(x)
        epoch += 1
    _sync(device)
    return images / (time.perf_counter() - start)


def train_rate(resolution, *, batch_size, device, steps=8):
    model = effscale.create_model(f"b0@phi=-4,res={resolution}", 10, stem_stride=1,
                                  in_chans=1).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 1, resolution, resolution, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(2):  # warm-up
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"torch {torch.__version__}")
    train = {r: train_rate(r, batch_size=args.batch_size, device=device, steps=3 if
                           device.type == "cpu" else 50) for r in args.resolutions}
    print(f"{'dataset':<14} {'res':>4} {'loader img/s':>13} {'train img/s':>12} {'ratio':>7}")
    for dataset in args.datasets:
        data = load_data(dataset, device=device)
        for r in args.resolutions:
            rate = loader_rate(data.train, dataset=dataset, resolution=r,
                               batch_size=args.batch_size, device=device)
            print(f"{dataset:<14} {r:>4} {rate:>13,.0f} {train[r]:>12,.0f} {rate / train[r]:>7.1f}")
    print("train: b0@phi=-4,res=R, stem_stride=1, in_chans=1, 10 classes, fp32, SGD; loader: "
          "train mode, default augmentation, resize + normalise")


if __name__ == "__main__":
    main()
