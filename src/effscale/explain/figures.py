"""CAM figures: a grid for one model, and the same images side by side for several models.

Drawn on matplotlib `Figure` objects with the Agg canvas (no pyplot, no global backend state),
written atomically. Change the look here: colour map, overlay strength, correct/wrong colours.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..io.files import atomic_write

CAM_COLORMAP = "jet"  # the colour map of every heat map effscale draws
CAM_ALPHA = 0.45  # heat-map opacity over the image
CORRECT_COLOR = "#1a9850"  # green: prediction == true class
WRONG_COLOR = "#d73027"  # red
CELL_INCHES = 1.9  # side of one image in the figure
DPI = 100
MAX_DISPLAY = 224  # common display side in comparisons (maps are upsampled to it)
TITLE_CHARS = 30  # column titles wrap at this width
SUPTITLE_CHARS = 100  # figure titles wrap at this width
MAX_SHOWN = 32  # a grid shows at most this many images (the rates count all of them)
MAX_ROWS = 12  # a comparison shows at most this many images
BOX_COLOR = "white"  # the annotated box, when there is one


def _draw(ax, image: np.ndarray, heat: np.ndarray | None, frame: str | None = None,
          box=None) -> None:
    """image (H, W, C) in [0, 1], heat (H, W) in [0, 1] or None, and the annotated box
    (x0, y0, x1, y1 in pixels) or None, on one axis."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat, cmap=CAM_COLORMAP, vmin=0, vmax=1, alpha=CAM_ALPHA,
                  interpolation="bilinear")
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        # imshow puts pixel centres on integers: pixel x spans [x - 0.5, x + 0.5)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor=BOX_COLOR, linewidth=1.2, linestyle="--"))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(3)


def _caption(result, i: int) -> tuple[str, str]:
    ok = bool(result.correct[i])
    mark = "\u2713" if ok else "\u2717"
    text = (f"{mark} pred {result.class_name(result.predictions[i])} "
            f"{100 * result.confidences[i]:.0f}%\ntrue {result.class_name(result.labels[i])}")
    if result.targets[i] != result.predictions[i]:  # --target true / CLASS: say what is shown
        text += f"; map of {result.class_name(result.targets[i])}"
    if result.localisation is not None:
        text += "\npeak in box" if result.localisation.peak_in_box[i] else "\npeak outside box"
    return text, CORRECT_COLOR if ok else WRONG_COLOR


def _box(result, i: int):
    return None if result.localisation is None else result.localisation.boxes[i]


def _save(fig: Figure, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    FigureCanvasAgg(fig)
    fmt = out_path.suffix.lstrip(".").lower() or "png"
    atomic_write(out_path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI,
                                                   bbox_inches="tight"))
    return out_path


def grid_figure(result, out_path: str | Path, *, cols: int | None = None,
                title: str | None = None) -> Path:
    """N images (at most MAX_SHOWN) with their heat maps; predicted and true class and confidence
    under each, correct in green, wrong in red (caption and frame), the annotated box dashed
    when there is one. The title says which layer and why."""
    n = min(len(result.maps), MAX_SHOWN)
    cols = cols or min(n, 4)
    rows = -(-n // cols)
    caption = 0.55 if result.localisation is None else 0.7  # a third caption line
    fig = Figure(figsize=(CELL_INCHES * cols, (CELL_INCHES + caption) * rows + 0.6),
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        text, color = _caption(result, i)
        _draw(ax, result.images[i], result.maps[i], frame=color, box=_box(result, i))
        ax.set_xlabel(text, color=color, fontsize=8)
    fig.suptitle(title or result_title(result), fontsize=9)
    return _save(fig, out_path)


def result_title(result) -> str:
    """A grid figure's title: model, method, resolution, which layer and why, then accuracy,
    localisation and deletion scores when there are some."""
    n = len(result.labels)
    lines = [f"{result.model_name}: {result.method} at {result.images.shape[1]} px on "
             + f"{result.layer}, {result.layer.reason}"]
    stats = f"{int(result.correct.sum())}/{n} correct"
    if n > MAX_SHOWN:
        stats += f" (first {MAX_SHOWN} of {n} shown)"
    loc = result.localisation
    if loc is not None:
        stats += (f"; peak in box {100 * loc.rate:.0f}% (random peak {100 * loc.chance:.0f}%), "
                  f"map energy in box {100 * loc.energy_rate:.0f}%")
    if result.deletion is not None:
        stats += (f"; deletion AUC {result.deletion.cam_auc:.3f} "
                  f"(random {result.deletion.random_auc:.3f})")
    lines.append(stats)
    return "\n".join(part for line in lines for part in textwrap.wrap(line, SUPTITLE_CHARS))


def _resize(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(N, H, W[, C]) -> (N, size, size[, C]) with torch interpolation."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    channels_last = t.ndim == 4
    t = t.permute(0, 3, 1, 2) if channels_last else t[:, None]
    if t.shape[-1] != size:
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        t = F.interpolate(t.float(), size=(size, size), mode=mode, **kwargs).clamp(0, 1)
    t = t.permute(0, 2, 3, 1) if channels_last else t[:, 0]
    return t.numpy()


def comparison_figure(results: list, out_path: str | Path, *, titles: list[str],
                      display_size: int | None = None) -> Path:
    """Rows = images, first column the image and its true class, then one column per model
    (its heat map and prediction). Maps are upsampled to one display size, so models of
    different resolutions line up."""
    if not results:
        raise ValueError("nothing to compare")
    total = min(len(r.maps) for r in results)
    n = min(total, MAX_ROWS)
    first = results[0]
    for r in results[1:]:
        if not np.array_equal(r.labels[:n], first.labels[:n]):
            raise ValueError("the models were shown different images (labels differ)")
    size = display_size or min(MAX_DISPLAY, max(r.images.shape[1] for r in results))
    cols = len(results) + 1
    fig = Figure(figsize=(CELL_INCHES * cols, (CELL_INCHES + 0.45) * n + 0.8),
                 layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    # the image column at the finest resolution any model saw
    finest = max(results, key=lambda r: r.images.shape[1])
    shown = _resize(finest.images[:n], size, "bilinear")
    for c, r in enumerate(results, start=1):
        maps = _resize(r.maps[:n], size, "bilinear")
        images = _resize(r.images[:n], size, "bilinear")
        header = [*textwrap.wrap(str(titles[c - 1]), TITLE_CHARS), r.model_name,
                  f"{r.images.shape[1]} px, {r.layer.label}", short_reason(r.layer)]
        axes[0, c].set_title("\n".join(header), fontsize=7)
        scale = size / r.images.shape[1]  # boxes are in this model's input pixels
        for i in range(n):
            text, color = _caption(r, i)
            box = _box(r, i)
            _draw(axes[i, c], images[i], maps[i], frame=color,
                  box=None if box is None else np.asarray(box) * scale)
            axes[i, c].set_xlabel(text.split("\n")[0], color=color, fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    for i in range(n):
        _draw(axes[i, 0], shown[i], None)
        axes[i, 0].set_xlabel(f"true {first.class_name(first.labels[i])}", fontsize=8)
    note = f"; first {n} of {total} images" if total > n else ""
    fig.suptitle(f"{first.method}: what each model looks at (green = correct, red = wrong)"
                 f"{note}", fontsize=9)
    return _save(fig, out_path)


def short_reason(layer) -> str:
    """A column-width reason: "auto: 2 best of 5 by peak test" / "asked for"."""
    if not layer.auto:
        return layer.reason
    if len(layer.scores) <= 1:
        return "auto: the only candidate"
    return f"auto: {len(layer.layers)} best of {len(layer.scores)} by peak test"
