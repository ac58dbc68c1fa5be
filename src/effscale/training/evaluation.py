"""Accuracy of a model on a loader (`evaluate_model`) and of a model file or run directory
on a dataset's validation split (`evaluate`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..io import checkpoint as ckpt
from .devices import Dist, all_reduce_sum, autocast, resolve_precision


BN_IMAGES = 1024  # training images that recompute the evaluated model's BatchNorm statistics


@torch.no_grad()
def recompute_bn(model, batches, *, channels_last: bool, dist: Dist = Dist()) -> None:
    """Replace BatchNorm's running statistics by the exact mean and variance of `batches`
    (torch.optim.swa_utils.update_bn), averaged over ranks. Running statistics lag the
    weights by ~1 / momentum steps, and an EMA averages them out of step with its own
    weights: early in a short run, at a high lr, the stored variance of deep layers can be
    off by orders of magnitude, and eval-mode accuracy sits at chance while the weights
    are already good. Fresh statistics measure the weights, not the lag."""
    from torch.optim.swa_utils import update_bn
    layout = torch.channels_last if channels_last else torch.contiguous_format
    update_bn((images.contiguous(memory_format=layout) for images, _ in batches), model)
    if dist.world_size > 1:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                for buffer in (module.running_mean, module.running_var):
                    torch.distributed.all_reduce(buffer)
                    buffer /= dist.world_size


@torch.no_grad()
def evaluate_model(model, loader, *, device, amp, channels_last=False, tta_flip=False,
                   dist: Dist = Dist()) -> dict:
    """top-1 / top-5 (percent), mean loss and image count, summed over ranks."""
    was_training = model.training
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with amp:
            logits = model(images).float()
            if tta_flip:  # average probabilities of the image and its mirror
                probs = (logits.softmax(1) + model(images.flip(3)).float().softmax(1)) / 2
                logits = probs.log()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(1).sum().item()
        count += labels.numel()
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count],
                                                         dist, device)
    model.train(was_training)
    count = max(count, 1)
    return dict(top1=100 * correct1 / count, top5=100 * correct5 / count,
                loss=loss_sum / count, n=int(count))


def data_device(data_name: str, device: torch.device) -> torch.device | str:
    """Where a dataset is loaded: in-memory datasets live on the training device as uint8 (and
    are augmented there); image folders, CSV files and Python datasets are decoded on the CPU."""
    from ..data.splits import decoded_source
    return "cpu" if decoded_source(data_name) else device


def evaluate(checkpoint, data=None, *, data_dir=None, tta_flip: bool = False, use_ema: bool = True,
             batch_size: int = 256, device: str = "auto", subset=None) -> dict:
    """top-1 / top-5 (percent), loss and image count of a model file or run directory on a
    dataset's validation split (default: the dataset it was trained on; a validation split
    that training split off is split off the same way again). `data` may be a Python
    dataset (all of it is scored) or a (train, val) pair of them."""
    from ..data import load_data, make_loader
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                          else "cpu" if device == "auto" else device)
    model, meta = ckpt.load_model_file(checkpoint, use_ema=use_ema, map_location=device)
    data = meta.get("dataset") if data is None else data
    if not data:
        raise ValueError(f"{checkpoint} does not say which dataset it was trained on; pass --data")
    objects = not isinstance(data, str)
    if objects and not isinstance(data, (tuple, list)):
        data = (data, data)  # one dataset: all of it is the validation split
    dataset = load_data(data, data_dir=data_dir or meta.get("data_dir"),
                        device=data_device(data, device), val_subset=subset,
                        seed=meta.get("split_seed", 0), val_fraction=meta.get("val_fraction", 0.1))
    classes = dataset.info.num_classes  # a Python dataset's may stop below the model's top class
    if classes != model.num_classes and not (objects and classes < model.num_classes):
        raise ValueError(f"{dataset.info.name} has {classes} classes but the model "
                         f"predicts {model.num_classes}")
    data = dataset.info.name if objects else data
    channels = model.in_chans if model.in_chans != dataset.info.in_chans else None
    loader = make_loader(dataset.val, batch_size=batch_size, resolution=model.spec.resolution,
                         train=False, seed=0, epoch=0, channels=channels, device=device)
    amp = autocast(device, resolve_precision("auto", device))
    result = evaluate_model(model, loader, device=device, amp=amp, tta_flip=tta_flip)
    if hasattr(dataset.val, "pool"):
        dataset.val.pool.close()  # its decoding workers, now
    return dict(result, weights=meta["weights"], model=meta["model"], data=data)
