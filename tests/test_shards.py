"""`webdataset:DIR`: tar shards written here with webdataset's own writer; their scan (length,
labels, classes, broken samples), the same decode as an image folder, the seeded and
worker-count-free order, exact resume, ranks, subsets, the workers kept across epochs, a
short training run, and one-line refusals."""

import io
import tarfile

import numpy as np
import pytest
import torch

import effscale
from effscale.data import Augment, load_data, make_loader
from effscale.data.shards import LaneReader, ShardSplit, epoch_lanes
from effscale.data.shardscan import BrokenSamplesWarning, WebdatasetMissing

wds = pytest.importorskip("webdataset")

TINY = dict(model="b0@phi=-10,res=16", stem_stride=1, quiet=True, workers=1, device="cpu")
AUGMENT = Augment(flip=True, cutout=4, autoaugment="randaugment")


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _write_shards(folder, samples, per_shard):
    """samples: dicts for webdataset's ShardWriter ({"__key__", "png", "cls"}, or fewer)."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "shard-%03d.tar"), maxcount=per_shard, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """sklearn's digits as 16-px PNGs: train/ in 5 shards, val/ in 2, and val/ again as an
    image folder (folder/val/<class>/<key>.png, the same bytes); classes.txt names the
    classes."""
    from sklearn.datasets import load_digits
    root = tmp_path_factory.mktemp("digits")
    found = load_digits()
    pixels = np.kron(np.rint(found.images * 255 / 16).astype(np.uint8), np.ones((2, 2), np.uint8))
    order = np.random.default_rng(0).permutation(len(pixels))
    samples = [{"__key__": f"d{i:04d}", "png": _png(pixels[i]), "cls": int(found.target[i])}
               for i in order]
    _write_shards(root / "train", samples[:1400], 300)
    _write_shards(root / "val", samples[1400:], 200)
    for sample in samples[1400:]:
        for part in ("train", "val"):  # (an image folder with val/ has a train/ too)
            folder = root / "folder" / part / str(sample["cls"])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{sample['__key__']}.png").write_bytes(sample["png"])
    (root / "classes.txt").write_text("".join(f"digit {d}\n" for d in range(10)))
    return root, {s["__key__"]: s["cls"] for s in samples}


def _unique(root, n=60, per_shard=15, val=12):
    """n noise images whose label is their number (each its own class): a label names its
    sample, so batches say which samples they hold."""
    rng = np.random.default_rng(1)
    samples = [{"__key__": f"u{i:03d}", "png": _png(rng.integers(0, 256, (12, 12, 3), np.uint8)),
                "cls": i} for i in range(n)]
    _write_shards(root / "train", samples, per_shard)
    _write_shards(root / "val", samples[:val], per_shard)
    return root


@pytest.fixture(scope="module")
def unique(tmp_path_factory):
    return _unique(tmp_path_factory.mktemp("unique"))


def _labels(batches):
    return [b[1].tolist() for b in batches]


def test_length_labels_and_classes_come_from_the_scan(digits, tmp_path):
    root, truth = digits
    data = load_data(f"webdataset:{root}")
    assert (len(data.train), len(data.val)) == (1400, 397)
    assert len(data.train.shards) == 5 and len(data.val.shards) == 2
    assert data.info.num_classes == 10 and data.info.class_names[3] == "digit 3"
    for split in (data.train, data.val):  # labels in index order, as the cls members say
        keys = [split.name(i).rpartition(":")[2] for i in range(len(split))]
        assert split.labels.tolist() == [truth[k] for k in keys]
        assert split.skipped == ()
    # without classes.txt: 0 ... the largest label
    _unique(tmp_path, n=20, val=5)
    other = load_data(f"webdataset:{tmp_path}")
    assert other.info.class_names == tuple(str(i) for i in range(20))
    assert sorted(other.train.labels.tolist()) == list(range(20))


def test_eval_batches_equal_an_imagefolder_of_the_same_pngs(digits):
    root, _ = digits
    shards, folder = load_data(f"webdataset:{root}"), load_data(f"imagefolder:{root / 'folder'}")
    kw = dict(batch_size=64, resolution=24, train=False, num_workers=0)
    got = list(make_loader(shards.val, **kw))
    images, labels = torch.cat([b[0] for b in got]), torch.cat([b[1] for b in got])
    assert torch.equal(labels, shards.val.labels)  # every sample once, in index order
    plain = list(make_loader(folder.val, **kw))
    by_key = {p.rpartition("/")[2][:-4]: i for i, (p, _) in enumerate(folder.val.samples)}
    at = torch.tensor([by_key[shards.val.name(i).rpartition(":")[2]]
                       for i in range(len(shards.val))])
    assert torch.equal(images, torch.cat([b[0] for b in plain])[at])  # the same decode path
    assert torch.equal(labels, torch.cat([b[1] for b in plain])[at])


def test_eval_order_reads_the_shards_in_name_order():
    split = ShardSplit(None, tuple(range(3)), ((("a", "png", 0),) * 3, (("b", "png", 0),) * 1,
                                               (("c", "png", 0),) * 2), None)
    lanes = epoch_lanes(split, seed=0, epoch=0, train=False)
    assert [own for own, _ in lanes] == [[0], [1], [2]]  # one lane per shard
    # the lanes merged: each spread over the epoch, indices in that (evaluation) order
    assert sorted(i for _, samples in lanes for i in samples) == list(range(6))
    # lane 0 at 1/6, 3/6, 5/6; lane 1 at 3/6 (after lane 0's: ties in lane order); lane 2
    # at 1/4, 3/4
    assert [split.places([i])[0] for i in range(6)] == [(0, 0), (2, 0), (0, 1), (1, 0),
                                                        (2, 1), (0, 2)]


def test_train_order_is_seeded_by_epoch_and_free_of_the_worker_count(unique):
    data = load_data(f"webdataset:{unique}")
    kw = dict(batch_size=8, resolution=12, train=True, augment=AUGMENT)
    first = list(make_loader(data.train, seed=1, epoch=0, num_workers=0, **kw))
    for workers in (1, 3):  # the same batches, pixel for pixel, whoever decodes them
        again = list(make_loader(data.train, seed=1, epoch=0, num_workers=workers, **kw))
        assert len(again) == len(first) == 7  # 60 samples: 7 full batches, 4 dropped
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                   for a, b in zip(first, again))
    seen = [x for b in _labels(first) for x in b]
    assert len(set(seen)) == 56  # no sample twice
    assert _labels(make_loader(data.train, seed=1, epoch=1, num_workers=0, **kw)) != \
        _labels(first)  # another epoch, another order
    assert _labels(make_loader(data.train, seed=2, epoch=0, num_workers=0, **kw)) != \
        _labels(first)
    shard_of = {int(data.train.labels[i]): data.train.places([i])[0][0]
                for i in range(len(data.train))}
    assert len({shard_of[x] for x in _labels(first)[0]}) > 1  # the lanes mixed in each batch
    starts = {shard_of[_labels(make_loader(data.train, seed=1, epoch=e, num_workers=0,
                                           **kw))[0][0]] for e in range(6)}
    assert len(starts) > 1  # the shard order is shuffled each epoch
    data.train.pool.close()


def test_resume_at_start_batch_yields_the_rest_of_the_epoch(unique):
    data = load_data(f"webdataset:{unique}")
    kw = dict(batch_size=8, resolution=12, train=True, seed=5, epoch=3, augment=AUGMENT)
    whole = list(make_loader(data.train, num_workers=2, **kw))
    for workers in (0, 2):
        tail = make_loader(data.train, start_batch=4, num_workers=workers, **kw)
        assert len(tail) == 3 and tail.num_batches == 7
        rest = list(tail)
        assert len(rest) == 3 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                      for a, b in zip(rest, whole[4:]))
    data.train.pool.close()


def test_ranks_get_disjoint_batches_of_equal_count(unique):
    data = load_data(f"webdataset:{unique}")
    for train, batch in ((True, 4), (False, 5)):
        split = data.train if train else data.val
        shares = [_labels(make_loader(split, batch_size=batch, resolution=12, train=train,
                                      seed=0, epoch=2, rank=r, world_size=3, num_workers=r))
                  for r in range(3)]
        assert len({len(s) for s in shares}) == 1  # every rank the same number of batches
        flat = [x for s in shares for b in s for x in b]
        assert len(flat) == len(set(flat))  # no sample on two ranks
        assert len(flat) == (60 if train else 12)  # 60 % 3 == 0: nothing dropped
    data.train.pool.close()


def test_workers_live_across_epochs(unique):
    data = load_data(f"webdataset:{unique}")
    kw = dict(batch_size=8, resolution=12, train=True, seed=0, num_workers=2)
    pids = []
    for epoch in range(2):
        list(make_loader(data.train, epoch=epoch, **kw))
        list(make_loader(data.val, train=False, batch_size=8, resolution=12, num_workers=2))
        loader = data.train.pool.loaders[2]
        pids.append(sorted(w.pid for w in loader._iterator._workers))
    assert pids[0] == pids[1] and len(pids[0]) == 2 and len(data.train.pool.loaders) == 1
    # a pass begun while another is read gets its own workers; an abandoned one is reset
    zipped = zip(make_loader(data.train, epoch=1, **kw), make_loader(data.train, epoch=1, **kw))
    assert all(torch.equal(a[0], b[0]) for a, b in zipped)
    next(iter(make_loader(data.train, epoch=0, **kw)))
    again = list(make_loader(data.train, epoch=1, **kw))
    assert _labels(again) == _labels(make_loader(data.train, epoch=1, **dict(kw, num_workers=0)))
    data.train.pool.close()


def test_a_subset_is_stratified_and_streams_past_the_rest(digits):
    root, _ = digits
    data = load_data(f"webdataset:{root}", subset=200, val_subset=50, seed=3)
    assert (len(data.train), len(data.val)) == (200, 50)
    assert torch.bincount(data.train.labels, minlength=10).min() >= 18  # about 20 a class
    got = torch.cat([b[1] for b in make_loader(data.val, batch_size=16, resolution=16,
                                               train=False, num_workers=1)])
    assert torch.equal(got, data.val.labels)
    assert data.train.labels.tolist() != load_data(f"webdataset:{root}", subset=200,
                                                   seed=4).train.labels.tolist()
    data.train.pool.close()


def _tar(path, members):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_broken_samples_are_skipped_and_named_and_over_1_percent_refused(tmp_path):
    image = _png(np.full((8, 8), 90, np.uint8))
    good = [m for i in range(150) for m in ((f"k{i:03d}.png", image), (f"k{i:03d}.cls", b"1"))]
    _tar(tmp_path / "ok" / "train" / "a.tar", good + [("nocls.png", image)])
    _tar(tmp_path / "ok" / "val" / "a.tar", good[:20])
    with pytest.warns(BrokenSamplesWarning, match=r"skipped 1 broken sample \(train 1, val 0\): "
                                                  r"train/a.tar:nocls \(no cls\)"):
        data = load_data(f"webdataset:{tmp_path / 'ok'}")
    assert data.train.skipped == ("train/a.tar:nocls",) and len(data.train) == 150
    batches = list(make_loader(data.train, batch_size=50, resolution=8, train=True,
                               num_workers=0))
    assert sum(len(b[1]) for b in batches) == 150  # the broken one is not read
    bad = good[:200] + [("x.png", image), ("y.cls", b"3"), ("z.png", image),
                        ("z.cls", b"three")]
    _tar(tmp_path / "bad" / "train" / "a.tar", bad)
    _tar(tmp_path / "bad" / "val" / "a.tar", good[:20])
    with pytest.raises(ValueError, match=r"3 of 103 train/ samples are broken \(2.9%.*"
                                         r"train/a.tar:x \(no cls\); train/a.tar:y \(no image"):
        load_data(f"webdataset:{tmp_path / 'bad'}")


def test_an_image_that_does_not_decode_stops_the_pass_with_its_name(tmp_path):
    members = [("a.png", b"not a png"), ("a.cls", b"0"),
               ("b.png", _png(np.zeros((4, 4), np.uint8))), ("b.cls", b"1")]
    _tar(tmp_path / "train" / "s.tar", members)
    _tar(tmp_path / "val" / "s.tar", members[2:])
    data = load_data(f"webdataset:{tmp_path}")
    with pytest.raises(ValueError, match="train/s.tar:a: the image does not decode"):
        list(make_loader(data.train, batch_size=2, resolution=4, train=False, num_workers=0))
    # a shard rewritten after loading: its missing sample is named
    reader = LaneReader(data.val, [0], {0})
    _tar(tmp_path / "val" / "s.tar", [])
    with pytest.raises(ValueError, match="val/s.tar:b is not in its shard any more"):
        reader.take(0)


def test_training_on_shards_learns(digits, tmp_path):
    root, _ = digits
    summary = effscale.train(data=f"webdataset:{root}", out=str(tmp_path / "run"), epochs=2,
                             **TINY)
    assert summary["best_top1"] > 25  # chance: 10
    scored = effscale.evaluate(str(tmp_path / "run"), device="cpu")  # the recorded dataset
    assert scored["n"] == 397 and scored["top1"] > 25


def test_cam_takes_its_images_from_one_pass_over_the_shards(digits):
    from effscale.explain.cam import eval_images
    root, _ = digits
    data = load_data(f"webdataset:{root}")
    model = effscale.create_model(TINY["model"], num_classes=10, stem_stride=1).eval()
    chosen = [250, 3, 396, 120]  # across both val shards, not in order
    images, labels = eval_images(data, model, chosen)
    whole = list(make_loader(data.val, batch_size=64, resolution=model.spec.resolution,
                             train=False, channels=model.in_chans, info=data.info,
                             num_workers=0))
    all_images, all_labels = torch.cat([b[0] for b in whole]), torch.cat([b[1] for b in whole])
    assert torch.equal(images, all_images[chosen]) and torch.equal(labels, all_labels[chosen])
    assert torch.equal(labels, data.val.labels[chosen])  # the stream's order is the index order
    data.val.pool.close()


@pytest.mark.parametrize("case", ["no val", "no folder", "no path"])
def test_bad_folders_are_one_line_and_exit_2(case, tmp_path, run_cli):
    if case == "no val":
        _write_shards(tmp_path / "train", [{"__key__": "a", "png": _png(np.zeros((4, 4),
                                                                       np.uint8)), "cls": 0}], 5)
    data = {"no val": f"webdataset:{tmp_path}", "no folder": f"webdataset:{tmp_path / 'none'}",
            "no path": "webdataset:"}[case]
    expected = {"no val": "a stream cannot be split into a stratified validation set",
                "no folder": "does not exist or is not a folder",
                "no path": "webdataset needs a folder: webdataset:DIR"}[case]
    code, out, err = run_cli("train", "--data", data, "--out", tmp_path / "run", "--model",
                             TINY["model"], "--stem-stride", 1, "--epochs", 1, "--device", "cpu",
                             "--quiet")
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("effscale: error: ")
    assert expected in err
    assert not (tmp_path / "run").exists()


def test_without_the_package_one_line_says_how_to_install_it(unique, monkeypatch):
    import sys
    for name in ("webdataset", "webdataset.tariterators", "webdataset.filters"):
        monkeypatch.setitem(sys.modules, name, None)  # `import webdataset` fails
    with pytest.raises(WebdatasetMissing, match=r"pip install 'effscale\[webdataset\]'"):
        load_data(f"webdataset:{unique}")
    assert isinstance(WebdatasetMissing("x"), ValueError)  # the CLI's one-line errors
