"""`csv:FILE`: images listed in a CSV file with the columns path,label[,split].

Paths are relative to the CSV file's folder (absolute paths are taken as they are); labels are
class names, numbered in sorted order as ImageFolder numbers its folders; split is `train` or
`val`. Without a split column, or without any `val` row, the validation split is split off
the training rows (`val_fraction` of each class, chosen by the seed). Decoding, transforms,
unreadable files (skipped and named, refused above 1%) and the worker processes are the
image folder's (folder.file_splits, decoded.py).

A CSV that cannot be used as it stands (no such file, a missing column, an empty label, a
split other than train/val, a listed file that does not exist, a class without training
images) is refused with one line naming the file and the row.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .folder import file_splits
from .splits import IMAGENET_MEAN, IMAGENET_STD, Data, DatasetInfo

COLUMNS = ("path", "label")
SPLITS = ("train", "val")
SHOWN = 3  # missing files named in the message (and how many more)


def load_csv(path, *, subset=None, val_subset=None, seed=0, val_fraction=0.1) -> Data:
    file = Path(path).expanduser()
    source = f"csv {path}"
    if not file.is_file():
        raise FileNotFoundError(f"no such CSV file: {path} (csv:FILE needs a file with the "
                                f"columns path,label[,split])")
    rows = _read_rows(file, source)
    classes = sorted({label for _, label, _ in rows})
    index = {name: i for i, name in enumerate(classes)}
    split = {"train": [], "val": []}
    for file_path, label, part in rows:
        split[part].append((file_path, index[label]))
    if not split["train"]:
        raise ValueError(f"{source}: no train rows (the split column must say train for the "
                         f"training images)")
    trained = {label for _, label in split["train"]}
    empty = [c for c in classes if index[c] not in trained]
    if empty:
        raise ValueError(f"{source}: class {empty[0]!r} has no train rows"
                         f"{f' ({len(empty)} classes have none)' if len(empty) > 1 else ''}; "
                         f"every class needs training images")
    info = DatasetInfo(f"csv:{path}", len(classes), tuple(classes), 3, None, IMAGENET_MEAN,
                       IMAGENET_STD)
    return file_splits(source, file.parent, info, split["train"], split["val"] or None,
                       subset=subset, val_subset=val_subset, seed=seed,
                       val_fraction=val_fraction)


def _read_rows(file: Path, source: str) -> list[tuple[str, str, str]]:
    """(absolute path, label, split) of every row, checked; ValueError naming the first
    problem."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [name.strip().lower() for name in next(reader, [])]
            body = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{source}: not a readable CSV file ({str(exc).splitlines()[0]})") \
            from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{source}: no {' or '.join(missing)} column (the first row must name "
                         f"the columns path,label[,split]; it has {','.join(header) or 'none'})")
    at = {name: header.index(name) for name in (*COLUMNS, "split") if name in header}
    rows, absent = [], []
    for line, row in enumerate(body, start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        cells = {name: row[i].strip() if i < len(row) else "" for name, i in at.items()}
        if not cells["path"] or not cells["label"]:
            raise ValueError(f"{source}, line {line}: empty {'path' if not cells['path'] else 'label'}")
        part = cells.get("split", "train") or "train"
        if part not in SPLITS:
            raise ValueError(f"{source}, line {line}: split {part!r}; use train or val")
        full = file.parent / cells["path"]
        if not full.is_file():
            absent.append(cells["path"])
        rows.append((str(full), cells["label"], part))
    if absent:
        more = f" and {len(absent) - SHOWN} more" if len(absent) > SHOWN else ""
        raise ValueError(f"{source}: {len(absent)} listed file{'s' if len(absent) > 1 else ''} "
                         f"not found: {', '.join(absent[:SHOWN])}{more} (paths are relative to "
                         f"{file.parent})")
    if not rows:
        raise ValueError(f"{source}: no rows below the header")
    return rows
