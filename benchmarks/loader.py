"""Is the data loader ever what limits training? Loader images/s vs train-step images/s.

    .venv/bin/python benchmarks/loader.py [--device cpu] [--threads 2] [--batch-size 128]
    .venv/bin/python benchmarks/loader.py --folder PATH [--workers 1] [--rounds 5]
        [--resolutions 64 224]

For each dataset and resolution: the loader's images/s (training mode, the dataset's default
augmentation, resize and normalisation included) and the images/s of full training steps
(forward, backward, SGD) of a small effscale model at that resolution, both on --device, and
their ratio: a ratio well above 1 means the loader is never the bottleneck.

--folder PATH: the image-folder loader against plain torchvision on the same files
(PATH/train): `ImageFolder` + `DataLoader(persistent_workers=True)` with RandomResizedCrop,
flip, ToDtype and Normalize per image, the usual torchvision training pipeline; and
effscale's loader with its workers restarted every epoch (what it did before they were kept).
Each round reads one epoch with each, interleaved, after one warm-up epoch each that is not
counted (it starts the workers); the table gives the median img/s of the rounds and the
median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
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


def _epoch(loader) -> float:
    """Images/s of one pass, every batch consumed as training would (float, normalised)."""
    images, start = 0, time.perf_counter()
    for x, _ in loader:
        images += len(x)
    return images / (time.perf_counter() - start)


def folder_readers(root, resolution, batch_size, workers):
    """name -> a function of the epoch that reads it: effscale (workers kept), effscale with
    its workers restarted each epoch, torchvision ImageFolder + persistent DataLoader."""
    from torchvision import datasets
    from torchvision.transforms import v2

    from effscale.data.splits import IMAGENET_MEAN, IMAGENET_STD
    data = load_data(f"imagefolder:{root}")
    tv = v2.Compose([v2.RandomResizedCrop(resolution, antialias=True), v2.RandomHorizontalFlip(),
                     v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    plain = torch.utils.data.DataLoader(datasets.ImageFolder(f"{root}/train", tv),
                                        batch_size=batch_size, shuffle=True, drop_last=True,
                                        num_workers=workers, persistent_workers=True)

    def ours(epoch, restart=False):
        if restart:
            data.train.pool.close()
        return make_loader(data.train, batch_size=batch_size, resolution=resolution, train=True,
                           seed=0, epoch=epoch, augment=default_augment("imagefolder"),
                           num_workers=workers)
    return {"effscale": ours, "effscale, restarted": lambda e: ours(e, restart=True),
            "torchvision": lambda e: plain}


def compare_folder(args):
    names = ("effscale", "effscale, restarted", "torchvision")
    print(f"{args.folder}/train, batch {args.batch_size}, {args.workers} worker(s) each, "
          f"{args.rounds} rounds after 1 warm-up, torch {torch.__version__}")
    print(f"{'res':>4} " + " ".join(f"{n + ' img/s':>26}" for n in names)
          + f" {'effscale/torchvision':>21}")
    for r in args.resolutions:
        readers = folder_readers(args.folder, r, args.batch_size, args.workers)
        rates = {n: [] for n in names}
        for epoch in range(args.rounds + 1):
            for n in names:  # interleaved: each round's pair shares the machine's load
                rate = _epoch(readers[n](epoch))
                if epoch:
                    rates[n].append(rate)
        ratio = statistics.median(a / b for a, b in zip(rates["effscale"], rates["torchvision"]))
        cells = " ".join(f"{statistics.median(v):>10,.0f} ({min(v):,.0f}-{max(v):,.0f})".rjust(26)
                         for v in rates.values())
        print(f"{r:>4} {cells} {ratio:>20.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="compare the image-folder loader with torchvision's "
                                         "on PATH/train (see above)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.folder:
        return compare_folder(args)
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
