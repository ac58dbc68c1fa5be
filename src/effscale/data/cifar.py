"""CIFAR-10 / CIFAR-100 from the official python-pickle release, read without trusting pickle.

The release is a tar.gz of pickled dicts (b'data': uint8 (N, 3072) in CHW order, b'labels' or
b'fine_labels', and a meta file with the class names). An archive is checked against its MD5
before anything in it is unpickled, and every unpickle goes through `SafeUnpickler`, which can
build only dicts, lists, strings, bytes, numbers and numpy arrays, so a tampered file cannot
run code. Names, URLs and checksums are torchvision's (CIFAR10 / CIFAR100 class attributes).
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .splits import DatasetInfo, TensorSplit

CIFAR_STATS = {  # per-channel mean / std of each training split, [0, 1] scale
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
OFFICIAL = "official"  # md5 argument: the checksum of the official archive


@dataclass(frozen=True)
class CifarFormat:
    name: str
    folder: str  # the folder inside the archive
    archive: str
    url: str
    md5: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    meta_key: str
    label_key: str


def cifar_format(name: str) -> CifarFormat:
    from torchvision.datasets import CIFAR10, CIFAR100

    tv = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    return CifarFormat(name, tv.base_folder, tv.filename, tv.url, tv.tgz_md5,
                       tuple(f for f, _ in tv.train_list), tuple(f for f, _ in tv.test_list),
                       tv.meta["filename"], tv.meta["key"],
                       "labels" if name == "cifar10" else "fine_labels")


# ---- safe unpickling --------------------------------------------------------------------

@functools.cache  # built once, on first use: importing numpy's internals is slow
def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # the official files (Python 2, numpy 1) name numpy.core; numpy 2 pickles name numpy._core
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # protocol 5 arrays
            allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    import codecs
    allowed[("_codecs", "encode")] = codecs.encode  # how protocol 2 spells bytes in Python 3
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the few globals numpy arrays need; anything else (os.system,
    builtins.eval, subprocess...) raises pickle.UnpicklingError before it can be called."""

    def find_class(self, module, name):
        try:
            return _numpy_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: not allowed in a "
                                         f"data file") from None


def safe_loads(raw: bytes, source: str = "data"):
    """Unpickle `raw` with SafeUnpickler (latin1 for Python 2 strings, as the release needs)."""
    try:
        return SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{source}: {exc}") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise ValueError(f"{source}: not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None


def _text(key) -> str:
    return key.decode("latin1") if isinstance(key, bytes) else str(key)


def _batch(raw: bytes, source: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_loads(raw, source)
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: not a CIFAR batch (a {type(obj).__name__}, not a dict)")
    batch = {_text(k): v for k, v in obj.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{source}: CIFAR batch without 'data' and '{label_key}' "
                         f"(keys: {', '.join(sorted(batch))})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{source}: data {data.shape} / labels {labels.shape} are not "
                         f"CIFAR's (N, 3072) / (N,)")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(raw: bytes, source: str, key: str) -> tuple[str, ...]:
    obj = safe_loads(raw, source)
    meta = {_text(k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    if key not in meta:
        raise ValueError(f"{source}: CIFAR meta file without '{key}'")
    return tuple(_text(n) for n in meta[key])


# ---- reading a release ------------------------------------------------------------------

def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_archive(path: Path, fmt: CifarFormat, md5: str | None = OFFICIAL) -> None:
    """Refuse an archive whose MD5 is not `md5` (default: the official one); None skips."""
    want = fmt.md5 if md5 == OFFICIAL else md5
    if want is None:
        return
    got = file_md5(path)
    if got != want.lower():
        raise ValueError(
            f"{path} fails its checksum (md5 {got}, expected {want}): it is corrupted or not "
            f"the official {fmt.name} archive; delete it and run again to re-download, or pass "
            f"--data-dir with a good copy")


def _read_members(path: Path, fmt: CifarFormat, wanted: tuple[str, ...]) -> dict[str, bytes]:
    try:
        with tarfile.open(path, "r:*") as tar:
            found = {}
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable {fmt.name} archive ({exc})") from None
    missing = [w for w in wanted if w not in found]
    if missing:
        raise ValueError(f"{path}: {fmt.name} archive lacks {', '.join(missing)}")
    return found


def _read_folder(folder: Path, fmt: CifarFormat, wanted: tuple[str, ...]) -> dict[str, bytes]:
    missing = [w for w in wanted if not (folder / w).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {fmt.name} folder lacks {', '.join(missing)}")
    return {w: (folder / w).read_bytes() for w in wanted}


def read_cifar(path: str | Path, name: str = "cifar10", *, md5: str | None = OFFICIAL):
    """(DatasetInfo, train TensorSplit, test TensorSplit) from a release archive (checked against
    `md5` before anything is unpickled; OFFICIAL = torchvision's checksum, None = unchecked) or
    from its extracted folder (e.g. cifar-10-batches-py)."""
    fmt = cifar_format(name)
    path = Path(path)
    wanted = fmt.train + fmt.test + (fmt.meta,)
    if path.is_dir():
        raw = _read_folder(path, fmt, wanted)
    elif path.is_file():
        verify_archive(path, fmt, md5)
        raw = _read_members(path, fmt, wanted)
    else:
        raise FileNotFoundError(f"no such {name} archive or folder: {path}")
    splits = []
    for files in (fmt.train, fmt.test):
        parts = [_batch(raw[f], f"{path}:{f}", fmt.label_key) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        splits.append(TensorSplit(_tensor(images), _tensor(labels)))
    classes = _class_names(raw[fmt.meta], f"{path}:{fmt.meta}", fmt.meta_key)
    if int(max(splits[0].labels.max(), splits[1].labels.max())) >= len(classes):
        raise ValueError(f"{path}: labels exceed the {len(classes)} class names")
    mean, std = CIFAR_STATS[name]
    return DatasetInfo(name, len(classes), classes, 3, 32, mean, std), splits[0], splits[1]


def _tensor(array: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(array))


def find_cifar(fmt: CifarFormat, roots) -> Path | None:
    """The first extracted folder or archive of `fmt` under any of `roots`."""
    for root in roots:
        for candidate in (root / fmt.folder, root, root / fmt.archive):
            if candidate.is_dir() and (candidate / fmt.meta).is_file():
                return candidate
            if candidate.is_file() and candidate.name == fmt.archive:
                return candidate
    return None


def load_cifar(name: str, data_dir: Path | None, download: bool, cache: Path):
    fmt = cifar_format(name)
    roots = ([data_dir] if data_dir else []) + [cache]
    found = find_cifar(fmt, roots)
    if found is None and download:
        found = _download(fmt, data_dir or cache)
    if found is None:
        where = data_dir or cache
        raise FileNotFoundError(
            f"{name} not found in {where} ({fmt.folder}/ or {fmt.archive}) and download is off; "
            f"pass --data-dir with the official python version")
    return read_cifar(found, name)


def _download(fmt: CifarFormat, root: Path) -> Path:
    """Fetch the official archive (torchvision checks its MD5) and extract it next to itself."""
    from torchvision.datasets.utils import download_url

    root.mkdir(parents=True, exist_ok=True)
    try:
        download_url(fmt.url, str(root), fmt.archive, fmt.md5)
    except Exception as exc:  # URLError, socket errors, RuntimeError on a bad checksum, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileNotFoundError(
            f"{fmt.name} is not in {root} and downloading {fmt.url} failed ({reason}); download "
            f"it on a connected machine and pass --data-dir") from None
    archive = root / fmt.archive
    verify_archive(archive, fmt)  # again: download_url skips the check when the file existed
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")  # checked archive; "data" refuses links and ../
    return root / fmt.folder
