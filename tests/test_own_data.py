"""Bring your own data: `csv:FILE`, an image folder without val/, Python datasets; the
validation split split off them (stratified, seeded, recorded); the decoding workers kept
across epochs without changing the seeded order; bad CSVs refused in one line."""

import csv
import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

import effscale
from effscale.data import load_data, make_loader
from effscale.experiments.study import plan_differences

TINY = dict(model="b0@phi=-10,res=16", stem_stride=1, epochs=2, quiet=True, workers=1,
            device="cpu")
COLOURS = {"blue": (0, 0, 200), "green": (0, 180, 0), "red": (200, 0, 0)}


def _image(rng, colour, size=16):
    """A noisy square of one colour: a class a tiny model tells apart in an epoch or two."""
    return np.clip(rng.normal(0, 40, (size, size, 3)) + colour, 0, 255).astype(np.uint8)


def _write_images(root, per_class, classes=("blue", "red"), sub="img", seed=0):
    """root/sub/<class>/NNN.png; returns [(path relative to root, class)]."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    rows = []
    for cls, n in zip(classes, per_class if isinstance(per_class, (list, tuple))
                      else [per_class] * len(classes)):
        (root / sub / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(_image(rng, COLOURS[cls])).save(root / sub / cls / f"{i:03d}.png")
            rows.append((f"{sub}/{cls}/{i:03d}.png", cls))
    return rows


def _write_csv(path, rows, header=("path", "label")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """A CSV of 60 blue and 30 red 16-px PNGs (no split column), and its folder."""
    root = tmp_path_factory.mktemp("colours")
    return _write_csv(root / "list.csv", _write_images(root, [60, 30]))


def test_csv_with_a_split_column_loads_like_a_folder(tmp_path):
    rows = _write_images(tmp_path, [6, 6], classes=("red", "blue"))
    table = [(p, c, "val" if p.endswith(("004.png", "005.png")) else "train") for p, c in rows]
    data = load_data(f"csv:{_write_csv(tmp_path / 'list.csv', table, ('path', 'label', 'split'))}")
    assert data.info.class_names == ("blue", "red")  # sorted, as ImageFolder numbers folders
    assert len(data.train) == 8 and len(data.val) == 4 and data.info.in_chans == 3
    assert sorted(data.val.labels.tolist()) == [0, 0, 1, 1]
    images, labels = next(iter(make_loader(data.val, batch_size=4, resolution=12, train=False,
                                           num_workers=0)))
    assert images.shape == (4, 3, 12, 12) and images.dtype == torch.float32
    # the same files as an image folder give the same pixels: one decode / resize / normalise
    for split in ("train", "val"):
        for p, c, s in table:
            if s == split:
                (tmp_path / "f" / split / c).mkdir(parents=True, exist_ok=True)
                os.link(tmp_path / p, tmp_path / "f" / split / c / os.path.basename(p))
    folder = load_data(f"imagefolder:{tmp_path / 'f'}")
    same = next(iter(make_loader(folder.val, batch_size=4, resolution=12, train=False,
                                 num_workers=0)))
    order = labels.argsort(stable=True)  # the CSV lists red first; the folder sorts classes
    assert torch.equal(same[0], images[order]) and torch.equal(same[1], labels[order])


def test_split_off_is_stratified_and_reproducible(colours):
    first = load_data(f"csv:{colours}", seed=0, val_fraction=0.2)
    again = load_data(f"csv:{colours}", seed=0, val_fraction=0.2)
    other = load_data(f"csv:{colours}", seed=1, val_fraction=0.2)
    assert first.val.samples == again.val.samples and first.train.samples == again.train.samples
    assert first.val.samples != other.val.samples
    for data in (first, other):
        assert torch.bincount(data.val.labels).tolist() == [12, 6]  # 20% of 60 and of 30
        paths = [p for p, _ in data.train.samples + data.val.samples]
        assert len(paths) == len(set(paths)) == 90  # disjoint, nothing lost
    half = load_data(f"csv:{colours}", seed=0, val_fraction=0.5)
    assert torch.bincount(half.val.labels).tolist() == [30, 15]


def test_csv_skips_unreadable_files_and_refuses_over_1_percent(tmp_path):
    rows = _write_images(tmp_path, [60, 60])
    (tmp_path / "img" / "red" / "bad.png").write_bytes(b"not an image")
    listed = _write_csv(tmp_path / "one.csv", rows + [("img/red/bad.png", "red")])
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file") as record:
        data = load_data(f"csv:{listed}")
    assert str(record[0].message).endswith("(train 1, val 0): img/red/bad.png")
    assert data.train.skipped == ("img/red/bad.png",) and len(data.train) + len(data.val) == 120
    (tmp_path / "img" / "blue" / "bad.png").write_bytes(b"")
    two = _write_csv(tmp_path / "two.csv", rows + [("img/red/bad.png", "red"),
                                                   ("img/blue/bad.png", "blue")])
    with pytest.raises(ValueError, match=r"2 of 122 train files are unreadable \(1.6%"):
        load_data(f"csv:{two}")


def test_training_through_csv_records_the_split_and_evaluate_reproduces_it(colours, tmp_path):
    out = tmp_path / "run"
    summary = effscale.train(data=f"csv:{colours}", out=str(out), val_fraction=0.2, seed=3,
                             **TINY)
    assert summary["status"] == "finished" and summary["best_top1"] > 80  # chance: 67 at most
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == f"csv:{colours}" and config["val_fraction"] == 0.2
    assert config["seed"] == 3
    scored = effscale.evaluate(str(out / "last.safetensors"), device="cpu")
    assert scored["n"] == 18  # the run's own validation split, split off the same way again
    assert scored["top1"] == pytest.approx(summary["final_top1"], abs=1e-6)
    # CAMs explain the same held-out images (the run's seed 3 and fraction, not seed 0's)
    from effscale.explain.cam import load_data_for
    held_out = load_data(f"csv:{colours}", seed=3, val_fraction=0.2).val.samples
    assert load_data_for(out / "last.safetensors").val.samples == held_out
    assert load_data(f"csv:{colours}", seed=0, val_fraction=0.2).val.samples != held_out


def test_training_through_a_folder_without_val(tmp_path):
    _write_images(tmp_path, [40, 40], sub="train")  # PATH/train/<class>/, no val/
    summary = effscale.train(data=f"imagefolder:{tmp_path}", out=str(tmp_path / "run"), **TINY)
    assert summary["best_top1"] > 70
    flat = tmp_path / "flat"  # PATH/<class>/ directly, as torchvision's ImageFolder reads it
    _write_images(flat, [10, 10], sub=".")
    data = load_data(f"imagefolder:{flat}", val_fraction=0.2)
    assert len(data.train) == 16 and torch.bincount(data.val.labels).tolist() == [2, 2]


class Colours(torch.utils.data.Dataset):
    """A Python dataset: float tensors (C, H, W) in [0, 1], or PIL images, and int labels."""

    classes = ["blue", "green", "red"]

    def __init__(self, n, seed, pil=False):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 3, n).tolist()
        self.images = [_image(rng, COLOURS[self.classes[k]]) for k in self.labels]
        self.pil = pil

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        if self.pil:
            return Image.fromarray(self.images[i]), self.labels[i]
        return torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255, self.labels[i]


def test_training_through_python_datasets(tmp_path):
    train_ds, val_ds = Colours(96, 0), Colours(30, 1, pil=True)
    summary = effscale.train(data=(train_ds, val_ds), out=str(tmp_path / "run"), **TINY)
    assert summary["best_top1"] > 60  # chance: about 33
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == "python:Colours"
    scored = effscale.evaluate(str(tmp_path / "run"), data=val_ds, device="cpu")
    assert scored["n"] == 30 and scored["data"] == "python:Colours"
    # a tensor and a PIL image of the same pixels are the same input
    same = load_data((Colours(8, 5), Colours(8, 5, pil=True)))
    kw = dict(batch_size=8, resolution=16, train=False, num_workers=0)
    assert torch.allclose(next(iter(make_loader(same.train, **kw)))[0],
                          next(iter(make_loader(same.val, **kw)))[0])
    # one dataset: its validation split is split off by the seed
    single = load_data(Colours(40, 2), val_fraction=0.25, seed=0)
    assert len(single.train) == 30 and len(single.val) == 10


def test_decoding_workers_live_across_epochs_in_the_seeded_order(colours):
    data = load_data(f"csv:{colours}")
    kw = dict(batch_size=16, resolution=16, train=True, seed=4,
              augment=effscale.data.Augment(flip=True, cutout=4))
    pids = []
    for epoch in range(2):
        kept = [b for b in make_loader(data.train, epoch=epoch, num_workers=1, **kw)]
        loader, _ = data.train.pool.loaders[1, False]
        pids.append([w.pid for w in loader._iterator._workers])
        plain = list(make_loader(data.train, epoch=epoch, num_workers=0, **kw))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(kept, plain))
    assert pids[0] == pids[1] and len(pids[0]) == 1  # the same worker process both epochs
    # a resumed epoch starts at its batch; a pass begun while another is read gets its own
    tail = list(make_loader(data.train, epoch=1, start_batch=2, num_workers=1, **kw))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, plain[2:]))
    zipped = zip(make_loader(data.train, epoch=1, num_workers=1, **kw),
                 make_loader(data.train, epoch=1, num_workers=1, **kw))
    assert all(torch.equal(a[0], b[0]) for a, b in zipped)
    data.train.pool.close()


STUDY = dict(base="b0@phi=-6,r=0.1652", levels="2.5", strategies="baseline,width,compound",
             seeds=1, epochs=2, jobs=2, measure=False, stem_stride=1)


def test_a_study_on_python_datasets_trains_records_and_refuses_other_data(tmp_path, run_cli):
    train_ds, val_ds = Colours(120, 0), Colours(30, 1)
    out = tmp_path / "s"
    printed = []
    summary = effscale.study(dict(STUDY, out=str(out)), data=(train_ds, val_ds),
                             echo=printed.append)
    # pickled for 2 worker processes, which import Colours from this test module
    assert "training 3 runs (0 to resume) with 2 workers, 1 thread each" in printed
    record = json.loads((out / "study.json").read_text())
    assert record["config"]["data"] == "python:Colours"
    assert (record["train_size"], record["val_size"], record["num_classes"]) == (120, 30, 3)
    tops = [json.loads((out / "runs" / k / "summary.json").read_text())["best_top1"]
            for k in record["runs"]]
    assert len(tops) == 3 and min(tops) > 60  # chance: about 33
    assert not summary["failed"] and (out / "plots" / "cams.png").is_file()  # CAMs drawn
    assert plan_differences(out) == []  # re-planned from the record: no datasets needed
    # the same datasets again: nothing trains; other datasets, or none: one line each
    printed.clear()
    effscale.study(dict(STUDY, out=str(out)), data=(train_ds, val_ds), echo=printed.append,
                   report=False)
    assert "3 of 3 runs already finished: skipped" in printed
    with pytest.raises(ValueError, match="120 and 30: other data"):
        effscale.study(dict(STUDY, out=str(out)), data=(Colours(90, 0), val_ds),
                       echo=lambda *a: None)
    code, _, err = run_cli("study", "--data", "python:Colours", "--out", out, "--levels",
                           "2.5", "--dry-run", "--no-estimate")
    assert code == 2 and "pass the datasets again" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="--executor local"):
        effscale.study(dict(STUDY, out=str(tmp_path / "r"), executor="ray"),
                       data=(train_ds, val_ds), echo=lambda *a: None)
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_datasets_that_cannot_travel_train_in_this_process(tmp_path):
    from effscale.experiments.given_data import travelling
    notes = []
    assert pickle.loads(travelling((Colours(4, 0), Colours(4, 1)), notes.append))[0].labels \
        == Colours(4, 0).labels and notes == []

    class Local(Colours):  # a class pickle cannot find by name
        pass
    assert travelling(Local(4, 0), notes.append) is None
    assert "they do not pickle" in notes[-1] and "one at a time" in notes[-1]
    Main = type("Main", (Colours,), {"__module__": "__main__"})  # a script's or notebook's
    assert travelling(Main(4, 0), notes.append) is None
    assert "Main is defined in __main__" in notes[-1]
    printed = []  # and such a study still trains: in this process
    effscale.study(dict(STUDY, strategies="baseline,width", epochs=1, out=str(tmp_path / "s")),
                   data=(Main(60, 0), Main(20, 1)), echo=printed.append, report=False)
    assert "training 2 runs (0 to resume) with 1 worker" in printed


def test_a_search_on_python_datasets(tmp_path):
    result = effscale.search(dict(base="b0@phi=-6,r=0.1652", alphas="1.2", betas="1.1",
                                  seeds=1, epochs=1, stem_stride=1, out=str(tmp_path / "g")),
                             data=Colours(100, 0), echo=lambda *a: None)
    record = json.loads((tmp_path / "g" / "search.json").read_text())
    assert record["config"]["data"] == "python:Colours" and not result["failed"]
    assert (record["train_size"], record["val_size"]) == (90, 10)  # 10% split off
    assert len(result["rows"]) == 2 and all(r["top1_mean"] > 50 for r in result["rows"])


@pytest.mark.parametrize("case", ["no file", "no label column", "missing path outside",
                                  "class without train rows", "bad split", "empty"])
def test_bad_csvs_are_one_line_and_exit_2(case, tmp_path, run_cli):
    rows = _write_images(tmp_path, [2, 2])
    file = tmp_path / "list.csv"
    if case == "no label column":
        _write_csv(file, [(p,) for p, _ in rows], header=("path",))
    elif case == "missing path outside":
        _write_csv(file, rows + [("../elsewhere/x.png", "red")])
    elif case == "class without train rows":
        _write_csv(file, [(p, c, "train" if c == "blue" else "val") for p, c in rows],
                   header=("path", "label", "split"))
    elif case == "bad split":
        _write_csv(file, [(p, c, "test") for p, c in rows], header=("path", "label", "split"))
    elif case == "empty":
        _write_csv(file, [])
    expected = {"no file": "no such CSV file", "no label column": "no label column",
                "missing path outside": "1 listed file not found: ../elsewhere/x.png",
                "class without train rows": "class 'red' has no train rows",
                "bad split": "line 2: split 'test'; use train or val",
                "empty": "no rows below the header"}[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = run_cli("train", "--data", f"csv:{file}", "--out", tmp_path / "run",
                                 "--model", TINY["model"], "--stem-stride", 1, "--epochs", 1,
                                 "--device", "cpu",
                                 "--quiet")
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("effscale: error: ")
    assert expected in err
    assert not (tmp_path / "run").exists()  # refused before anything was written
