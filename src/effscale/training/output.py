"""What a run shows and reports: progress bar or lines, TensorBoard scalars, summary.json."""

from __future__ import annotations

import sys
from pathlib import Path

from ..io.files import write_json
from .config import Config
from .state import METRIC_FIELDS

# every metrics.csv column but the step itself: TensorBoard shows what metrics.csv records
BOARD_SCALARS = tuple(k for k in METRIC_FIELDS if k != "epoch")


class Progress:
    """A tqdm bar per epoch on a terminal; plain lines otherwise (or with quiet)."""

    def __init__(self, enabled: bool, quiet: bool):
        self.enabled = enabled
        self.bar_ok = enabled and not quiet and sys.stderr.isatty()
        self.bar = None

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def start(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if self.bar_ok:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}",
                            unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, loss: float, images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  top1 {row['top1']:.2f}  top5 {row['top5']:.2f}  "
            f"lr {row['lr']:.3g}  {row['images_per_s']:.0f} img/s  {row['wall_time']:.0f}s")


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.csv is the record
        return None
    return SummaryWriter(str(out / "tensorboard"))


def board_row(board, row: dict) -> None:
    if board is not None:
        for key in BOARD_SCALARS:
            board.add_scalar(key, row[key], row["epoch"])
        board.flush()


def write_summary(out: Path, cfg: Config, model, history: list[dict], best_top1: float,
                  best_epoch: int, wall_time: float, status: str, **extra) -> dict:
    from ..model.profile import profile
    prof = profile(model)
    final = history[-1] if history else {}
    rates = [r["images_per_s"] for r in history]
    summary = dict(model=cfg.model, data=cfg.data, seed=cfg.seed, recipe=cfg.recipe,
                   epochs=len(history), final_top1=final.get("top1"),
                   best_top1=best_top1 if history else None, best_epoch=best_epoch,
                   final_top5=final.get("top5"), final_val_loss=final.get("val_loss"),
                   params=prof.params, macs=prof.macs, resolution=prof.resolution,
                   wall_time_s=wall_time,
                   images_per_s=sum(rates) / len(rates) if rates else None, status=status,
                   out=str(out), **extra)
    write_json(out / "summary.json", summary)
    return summary
