"""Data layer: datasets, readers, loaders, augmentation. Fast: small subsets, tiny files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from effscale.data import (Augment, default_augment, denormalize, load_data,
                           make_loader)
from effscale.data.idx import read_idx, write_idx

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


# ---- datasets ---------------------------------------------------------------------------

def test_digits_shapes_classes_and_fixed_stratified_split(digits):
    assert digits.info.num_classes == 10 and digits.info.in_chans == 1
    assert digits.info.image_size == 8 and len(digits.info.class_names) == 10
    assert len(digits.train) + len(digits.val) == 1797 and len(digits.val) == 450
    assert digits.train.images.dtype == torch.uint8 and digits.train.images.shape[1:] == (1, 8, 8)
    assert digits.train.labels.dtype == torch.int64
    assert int(digits.train.images.max()) == 255  # 16 -> 255
    # stratified: every class holds about a quarter of its items in val
    per_class_val = torch.bincount(digits.val.labels, minlength=10).float()
    per_class_all = per_class_val + torch.bincount(digits.train.labels, minlength=10)
    assert torch.allclose(per_class_val / per_class_all, torch.full((10,), 0.25), atol=0.01)
    again = load_data("digits")  # fixed split
    assert torch.equal(again.val.images, digits.val.images)
    # the stored mean/std are the train split's
    x = digits.train.images.float() / 255
    assert abs(x.mean() - digits.info.mean[0]) < 1e-3 and abs(x.std() - digits.info.std[0]) < 1e-3


def test_subset_is_stratified_and_seeded(digits):
    a = load_data("digits", subset=200, val_subset=50, seed=1)
    b = load_data("digits", subset=200, val_subset=50, seed=1)
    c = load_data("digits", subset=200, seed=2)
    assert len(a.train) == 200 and len(a.val) == 50
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
    counts = torch.bincount(a.train.labels, minlength=10)
    assert counts.min() >= 18 and counts.max() <= 22


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason=f"{FASHION_DIR} missing "
                    "(Debian package dataset-fashion-mnist not installed)")
def test_fashion_mnist_from_debian_files():
    data = load_data("fashion-mnist", subset=500, val_subset=100, download=False)
    assert data.info.num_classes == 10 and data.info.image_size == 28
    assert data.info.class_names[9] == "Ankle boot"
    assert data.train.images.shape == (500, 1, 28, 28) and len(data.val) == 100
    assert torch.bincount(data.train.labels).tolist() == [50] * 10


def test_idx_reader_roundtrip_and_magic_check(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte.gz", array)
    write_idx(tmp_path / "y-idx1-ubyte", np.array([7, 3], np.uint8))
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), array)
    assert read_idx(tmp_path / "y-idx1-ubyte").tolist() == [7, 3]
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_from_data_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    data = load_data("fashion-mnist", data_dir=tmp_path, download=False)
    assert len(data.train) == 30 and len(data.val) == 20


# ---- loaders ----------------------------------------------------------------------------

def test_loader_shapes_resize_and_normalisation(digits):
    loader = make_loader(digits.val, batch_size=64, resolution=32, train=False)
    out = batches(loader)
    assert len(loader) == len(out) == 8
    assert sum(len(y) for _, y in out) == len(digits.val)
    x, y = out[0]
    assert x.shape[1:] == (1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    native = make_loader(digits.val, batch_size=450, resolution=8, train=False)
    (x8, _), = list(native)
    assert torch.allclose(denormalize(x8, digits.info) * 255,
                          digits.val.images.float(), atol=1e-3)
    x3, _ = next(iter(make_loader(digits.val, batch_size=4, resolution=16, train=False,
                                  channels=3)))
    assert x3.shape == (4, 3, 16, 16) and torch.equal(x3[:, 0], x3[:, 2])


def test_loader_is_a_function_of_seed_and_epoch_and_resumes(digits):
    kw = dict(batch_size=100, resolution=8, train=True, augment=Augment(crop_padding=2, cutout=3))
    a = batches(make_loader(digits.train, seed=3, epoch=1, **kw))
    torch.manual_seed(123)  # the global RNG plays no part
    b = batches(make_loader(digits.train, seed=3, epoch=1, **kw))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    resumed = make_loader(digits.train, seed=3, epoch=1, start_batch=5, **kw)
    assert len(resumed) == len(a) - 5
    r = batches(resumed)
    assert all(torch.equal(xa, xr) and torch.equal(ya, yr) for (xa, ya), (xr, yr) in zip(a[5:], r))
    other = batches(make_loader(digits.train, seed=3, epoch=2, **kw))
    assert not torch.equal(a[0][1], other[0][1])


def test_shards_are_disjoint_and_even(digits):
    def seen(loader):
        # the labels alone cannot tell items apart; index order is what the shards split
        return torch.cat(loader.batches).tolist()
    for train in (True, False):
        shards = [make_loader(digits.train, batch_size=50, resolution=8, train=train, seed=0,
                              rank=r, world_size=3) for r in range(3)]
        items = [set(seen(s)) for s in shards]
        assert len({len(s) for s in shards}) == 1  # equal batch counts
        assert not (items[0] & items[1] or items[1] & items[2] or items[0] & items[2])
        if not train:  # eval sees every item exactly once
            assert set.union(*items) == set(range(len(digits.train)))


def test_augment_changes_images_keeps_shape_and_no_flip_for_digits(digits):
    assert default_augment("digits").flip is False
    assert default_augment("cifar10").flip is True
    kw = dict(batch_size=64, resolution=8, train=True, seed=0, epoch=0)
    plain = next(iter(make_loader(digits.train, **kw)))[0]
    for aug in (Augment(crop_padding=2), Augment(flip=True), Augment(cutout=4),
                Augment(crop_padding=2, pad_mode="zeros"), Augment(autoaugment="randaugment")):
        x = next(iter(make_loader(digits.train, augment=aug, **kw)))[0]
        assert x.shape == plain.shape and x.dtype == plain.dtype
        assert not torch.equal(x, plain), aug
    # an Augment with flip only flips: every image equals itself or its mirror
    x = next(iter(make_loader(digits.train, augment=Augment(flip=True), **kw)))[0]
    same = (x == plain).flatten(1).all(1)
    mirrored = (x == plain.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and mirrored.any() and same.any()
    # digits' default never mirrors: with padding 0 it would be the identity
    from dataclasses import replace
    x = next(iter(make_loader(digits.train, augment=replace(default_augment("digits"),
                                                             crop_padding=0), **kw)))[0]
    assert torch.equal(x, plain)


def test_eval_loader_ignores_augment(digits):
    kw = dict(batch_size=64, resolution=8, train=False)
    a = next(iter(make_loader(digits.val, **kw)))[0]
    b = next(iter(make_loader(digits.val, augment=Augment(crop_padding=2, flip=True), **kw)))[0]
    assert torch.equal(a, b)


# ---- bad input --------------------------------------------------------------------------

def test_bad_input_is_one_clear_error(digits, tmp_path):
    with pytest.raises(ValueError, match="valid: digits, fashion-mnist, cifar10"):
        load_data("mnist")
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(digits.train, batch_size=0, resolution=8, train=True)
    with pytest.raises(ValueError, match="channels"):
        make_loader(digits.train, batch_size=8, resolution=8, train=True, channels=2)
    with pytest.raises(ValueError, match="rank"):
        make_loader(digits.train, batch_size=8, resolution=8, train=True, rank=2, world_size=2)


def test_missing_fashion_mnist_offline_is_one_clear_error(tmp_path, monkeypatch):
    from effscale.data import sources
    monkeypatch.setattr(sources, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("EFFSCALE_DATA", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST idx files .* not found"):
        load_data("fashion-mnist", data_dir=tmp_path, download=False)


# ---- CIFAR ------------------------------------------------------------------------------

def _cifar_archive(tmp_path, name="cifar10", n=6, protocol=2):
    """A tiny release in the official layout: pickled dicts with bytes keys, in a tar.gz."""
    import pickle
    import tarfile
    from effscale.data.cifar import cifar_format
    fmt = cifar_format(name)
    folder = tmp_path / fmt.folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    classes = 10 if name == "cifar10" else 100
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    for i, file in enumerate(fmt.train + fmt.test):
        batch = {b"batch_label": b"batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: [int(v) for v in (np.arange(n) + i) % classes], b"filenames": [b"x"] * n}
        (folder / file).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta_key = b"label_names" if name == "cifar10" else b"fine_label_names"
    (folder / fmt.meta).write_bytes(pickle.dumps({meta_key: [f"c{i}".encode() for i in range(classes)]},
                                                 protocol=protocol))
    archive = tmp_path / fmt.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=fmt.folder)
    return archive, folder


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_reader_reads_official_layout(tmp_path):
    import hashlib
    from effscale.data.cifar import read_cifar
    archive, folder = _cifar_archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    info, train, test = read_cifar(archive, "cifar10", md5=md5)
    assert info.num_classes == 10 and info.class_names[3] == "c3" and info.in_chans == 3
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (6, 3, 32, 32) and test.labels.tolist() == [5, 6, 7, 8, 9, 0]
    info_dir, train_dir, _ = read_cifar(folder, "cifar10")  # the extracted folder
    assert torch.equal(train_dir.images, train.images)
    data = load_data("cifar10", data_dir=tmp_path, download=False, subset=10)  # finds the folder
    assert len(data.train) == 10 and data.train.info.mean == info.mean


def test_cifar100_layout(tmp_path):
    from effscale.data.cifar import read_cifar
    _, folder = _cifar_archive(tmp_path, "cifar100", protocol=5)
    info, train, test = read_cifar(folder, "cifar100")
    assert info.num_classes == 100 and len(train) == 6 and len(test) == 6


def test_cifar_archive_with_bad_checksum_is_refused_before_unpickling(tmp_path, monkeypatch):
    import pickle
    from effscale.data import cifar
    archive, folder = _cifar_archive(tmp_path)
    (folder / "data_batch_1").write_bytes(pickle.dumps(_Evil()))
    import tarfile
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    monkeypatch.setattr(cifar, "safe_loads", lambda *a: pytest.fail("unpickled before checking"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="fails its checksum .* delete it .* --data-dir"):
        cifar.read_cifar(archive, "cifar10")  # the official md5
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / archive.name).write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(ValueError, match="fails its checksum"):
        load_data("cifar10", data_dir=tmp_path / "elsewhere", download=False)
    assert not (tmp_path / "pwned").exists()


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    import pickle
    from effscale.data.cifar import read_cifar, safe_loads
    monkeypatch.chdir(tmp_path)
    for protocol in (2, 5):
        with pytest.raises(ValueError, match="refused to load (posix|os).system"):
            safe_loads(pickle.dumps(_Evil(), protocol=protocol))
    _, folder = _cifar_archive(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(ValueError, match="test_batch: refused"):
        read_cifar(folder, "cifar10")
    assert not (tmp_path / "pwned").exists()
    assert safe_loads(pickle.dumps({"a": np.arange(3), "b": [b"x", "y", 1.5]}))["b"][1] == "y"


def test_cifar_missing_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFSCALE_DATA", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="cifar100 not found in .* --data-dir"):
        load_data("cifar100", data_dir=tmp_path, download=False)


# ---- imagefolder ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                size = (40 + 8 * i, 30 + 4 * i)  # varied sizes and aspect ratios
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def test_imagefolder_loads_and_batches(folder):
    data = load_data(f"imagefolder:{folder}")
    assert data.info.class_names == ("cat", "dog") and data.info.in_chans == 3
    assert len(data.train) == 8 and len(data.val) == 4
    val = make_loader(data.val, batch_size=3, resolution=24, train=False, num_workers=0)
    out = batches(val)
    assert [len(y) for _, y in out] == [2, 2] and out[0][0].shape == (2, 3, 24, 24)
    assert sorted(torch.cat([y for _, y in out]).tolist()) == [0, 0, 1, 1]
    kw = dict(batch_size=4, resolution=16, train=True, seed=1, epoch=0,
              augment=Augment(flip=True, autoaugment="randaugment", cutout=4))
    a = batches(make_loader(data.train, num_workers=2, **kw))  # decoded in worker processes
    b = batches(make_loader(data.train, num_workers=0, start_batch=1, **kw))
    assert len(a) == 2 and a[0][0].shape == (4, 3, 16, 16) and a[0][0].dtype == torch.float32
    assert torch.equal(a[1][0], b[0][0]) and torch.equal(a[1][1], b[0][1])  # resumes exactly
    small = load_data(f"imagefolder:{folder}", subset=4, val_subset=2)
    assert sorted(small.train.labels.tolist()) == [0, 0, 1, 1] and len(small.val) == 2


def test_imagefolder_missing_paths(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="lacks train/"):
        load_data(f"imagefolder:{tmp_path}")
    (tmp_path / "train" / "a").mkdir(parents=True)  # no val/ is fine (split off), no images not
    with pytest.raises(FileNotFoundError, match="no images in train/"):
        load_data(f"imagefolder:{tmp_path}")
    with pytest.raises(ValueError, match="imagefolder:PATH"):
        load_data("imagefolder:")


def _small_folder(root, train=60, val=5):
    """root/{train,val}/{cat,dog}/NNN.png: 16x16 noise PNGs, `train` / `val` per class."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:03d}.png")
    return root


def test_imagefolder_skips_an_unreadable_file_and_names_it(tmp_path):
    root = _small_folder(tmp_path)  # 120 good train images
    (root / "train" / "cat" / "x.jpg").write_bytes(b"not an image")  # 1 of 121: under 1%
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file") as record:
        data = load_data(f"imagefolder:{root}")
    assert len(record) == 1 and record[0].category.__name__ == "UnreadableImagesWarning"
    message = str(record[0].message)
    assert "\n" not in message and message.endswith("(train 1, val 0): train/cat/x.jpg")
    assert data.train.skipped == ("train/cat/x.jpg",) and data.val.skipped == ()
    assert len(data.train) == 120 and not any(p.endswith("x.jpg") for p, _ in data.train.samples)
    # an epoch decodes in worker processes, in full batches
    loader = make_loader(data.train, batch_size=40, resolution=16, train=True, num_workers=2)
    assert [len(y) for _, y in batches(loader)] == [40, 40, 40]
    # subsets come from the readable files
    with pytest.warns(UserWarning, match="train/cat/x.jpg"):
        assert len(load_data(f"imagefolder:{root}", subset=121).train) == 120


def test_imagefolder_with_over_1_percent_unreadable_is_refused(tmp_path, run_cli):
    root = _small_folder(tmp_path / "folder")
    (root / "train" / "dog" / "y.jpg").write_bytes(b"")
    (root / "train" / "cat" / "z.png").write_bytes((root / "train" / "cat" / "000.png")
                                                  .read_bytes()[:60])  # truncated
    with pytest.raises(ValueError) as refused:  # 2 of 122: 1.6%
        load_data(f"imagefolder:{root}")
    message = str(refused.value)
    assert "\n" not in message
    assert "2 of 122 train/ files are unreadable (1.6%" in message
    assert "train/cat/z.png, train/dog/y.jpg; fix or delete them" in message
    code, out, err = run_cli("train", "--data", f"imagefolder:{root}", "--out", tmp_path / "run",
                             "--epochs", 1, "--device", "cpu", "--quiet")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"effscale: error: {message}"]


def test_readable_tells_truncated_and_non_images_apart(tmp_path):
    import io

    from PIL import Image

    from effscale.data.folder import readable
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    files = {}
    for fmt in ("JPEG", "PNG", "BMP"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt)
        files[fmt] = buffer.getvalue()
    cases = {"good.jpg": files["JPEG"], "good.png": files["PNG"], "good.bmp": files["BMP"],
             "trailing-bytes.jpg": files["JPEG"] + b"\0" * 20,  # still decodes
             "truncated.jpg": files["JPEG"][:-40], "truncated.png": files["PNG"][:-40],
             "truncated.bmp": files["BMP"][:-40], "header-only.jpg": files["JPEG"][:100],
             "empty.jpg": b"", "text.jpg": b"hello"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert readable(str(tmp_path / name)) == name.startswith(("good", "trailing")), name
