"""The scan of `webdataset:DIR`'s shards (shards.py): each shard's tar headers read once, with
python tarfile, its small `cls` members read and its image data seeked past, so that a
split's samples, labels and broken samples are known before anything is decoded.

A sample is what webdataset's tar iterator makes of consecutive members with one key (the
member name up to the first dot of its last part; metadata members `__...__` and members
that are not files are no sample's): good when it has an image (the first of
IMAGE_EXTENSIONS it has), not empty and inside the file, and a `cls` member holding an
integer; broken otherwise, and when a member name or its key comes twice in a shard.
"""

from __future__ import annotations

import importlib
import re
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .folder import MAX_UNREADABLE

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # a sample's image: the first of these it has
MAX_CLS_BYTES = 64  # a cls member is an integer's text
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members: no sample's
PARTS = ("train", "val")
INSTALL = "pip install 'effscale[webdataset]'"


class WebdatasetMissing(ImportError, ValueError):
    """The `webdataset` package is not installed (a ValueError too: one line from the CLI)."""


class BrokenSamplesWarning(UserWarning):
    """Some samples of a webdataset's shards lack an image or a cls and were left out."""


def wds_module(name: str):
    """webdataset.<name> (tariterators: the tar iterator; filters: the shuffle buffer), or
    WebdatasetMissing saying how to install it."""
    try:
        return importlib.import_module(f"webdataset.{name}")
    except ModuleNotFoundError as exc:
        missing = "" if str(exc.name).startswith("webdataset") else f" ({exc.name} is missing)"
        raise WebdatasetMissing(f"webdataset:DIR needs the webdataset package{missing}: "
                                f"{INSTALL}") from None


def tars(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.tar") if p.is_file()) if folder.is_dir() else []


def scan_split(root: Path, part: str, source: str):
    """(shard paths, the good samples of each, [(name, what is wrong)] of the broken ones);
    ValueError when more than MAX_UNREADABLE of the split's samples are broken."""
    shards = tars(root / part)
    with ThreadPoolExecutor(min(8, len(shards))) as threads:  # overlaps cold reads
        scanned = list(threads.map(scan_shard, shards))
    per_shard = [tuple(good) for good, _ in scanned]
    broken = [(f"{part}/{shard.name}:{key}", why)
              for shard, (_, bad) in zip(shards, scanned) for key, why in bad]
    total = sum(map(len, per_shard)) + len(broken)
    if total == 0:
        raise ValueError(f"{source}: no samples in {part}/*.tar")
    if len(broken) > MAX_UNREADABLE * total:
        shown = "; ".join(f"{name} ({why})" for name, why in broken[:3])
        raise ValueError(f"{source}: {len(broken)} of {total} {part}/ samples are broken "
                         f"({100 * len(broken) / total:.1f}%, more than "
                         f"{100 * MAX_UNREADABLE:g}% skipped would bias the run): {shown}"
                         f"{'; ...' if len(broken) > 3 else ''}; rewrite those shards")
    return shards, per_shard, broken


def scan_shard(path: Path) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
    """A shard's samples, from its tar headers and cls members (image data is seeked past):
    ([(key, image extension, label)], [(key, what is wrong)]), in shard order."""
    good, bad = [], []
    try:
        with tarfile.open(path, "r:") as tar:
            groups = _groups(tar)
            repeated = {k for k, n in Counter(k for k, _ in groups).items() if n > 1}
            size = path.stat().st_size
            for key, members in groups:
                got = _sample(tar, size, key, members, repeated)
                if isinstance(got, str):
                    bad.append((key, got))
                else:
                    good.append((key, *got))
    except (tarfile.TarError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable tar file ({exc})") from None
    return good, bad


def _groups(tar: tarfile.TarFile) -> list[tuple[str, dict | None]]:
    """The tar's members grouped into samples as webdataset groups them (the key: a name up
    to the first dot of its last part; consecutive members with one key: one sample;
    metadata and members that are not files: none); None for a sample with a member name
    twice (webdataset refuses it)."""
    base_plus_ext = wds_module("tariterators").base_plus_ext
    groups: list[tuple[str, dict | None]] = []
    for member in tar:
        if not member.isreg() or _META.match(member.name):
            continue
        key, ext = base_plus_ext(member.name)
        if key is None:
            continue
        ext = ext.lower()
        if groups and groups[-1][0] == key:
            members = groups[-1][1]
            if members is not None and ext in members:
                groups[-1] = (key, None)
            elif members is not None:
                members[ext] = member
        else:
            groups.append((key, {ext: member}))
    return groups


def _sample(tar, size: int, key: str, members: dict | None, repeated: set):
    """(image extension, label) of a good sample, else what is wrong with it."""
    if members is None:
        return "a member name twice"
    if key in repeated:
        return "its key used again in the shard"
    ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if ext is None:
        return f"no image ({', '.join(IMAGE_EXTENSIONS)})"
    image = members[ext]
    if image.size == 0 or image.offset_data + image.size > size:
        return "an empty or truncated image"
    cls = members.get("cls")
    if cls is None:
        return "no cls"
    text = b""
    if cls.size <= MAX_CLS_BYTES:  # read directly: tar.extractfile costs 4x the header
        tar.fileobj.seek(cls.offset_data)
        text = tar.fileobj.read(cls.size)
    try:
        return ext, int(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return "a cls that is not an integer"


def class_names(root: Path, source: str, scans) -> tuple[str, ...]:
    """classes.txt's names, else 0 ... the largest label; ValueError for a label outside."""
    file = root / "classes.txt"
    names = None
    if file.is_file():
        names = tuple(line.strip() for line in file.read_text(encoding="utf-8").splitlines()
                      if line.strip())
        if not names:
            raise ValueError(f"{source}: classes.txt names no class")
    labels = [label for _, per_shard, _ in scans for samples in per_shard
              for _, _, label in samples]
    count = len(names) if names else max(labels, default=0) + 1
    for part, (shards, per_shard, _) in zip(PARTS, scans):
        for shard, samples in zip(shards, per_shard):
            for key, _, label in samples:
                if not 0 <= label < count:
                    raise ValueError(f"{source}: {part}/{shard.name}:{key} has cls {label}; "
                                     f"labels must lie in 0..{count - 1}"
                                     f"{' (one per line of classes.txt)' if names else ''}")
    return names or tuple(str(i) for i in range(count))
