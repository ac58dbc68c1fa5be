"""Experiments on Python datasets: `effscale.study(data=(train_ds, val_ds))` and the same for
`search`. The record keeps their name (`python:<class>`, as a run's config.json does) and
what re-planning reads (classes, channels, split sizes). The datasets reach the runs as
objects: pickled once for the local executor's worker processes (`travelling`), or, when
they do not pickle (a class defined in a script's or notebook's __main__, a lambda inside),
kept in this process, whose runs then train one at a time."""

from __future__ import annotations


def travelling(datasets, echo=print) -> bytes | None:
    """The datasets pickled for worker processes, or None (and a note) when they cannot go:
    a class defined in __main__ (a worker's __main__ is another) or one pickle refuses."""
    import pickle
    items = datasets if isinstance(datasets, (tuple, list)) else (datasets,)
    why = next((f"{type(d).__name__} is defined in __main__" for d in items
                if type(d).__module__ == "__main__"), None)
    if why is None:
        try:
            return pickle.dumps(datasets)
        except Exception as exc:  # PicklingError, TypeError, AttributeError: all say "no"
            why = f"they do not pickle ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    echo(f"note: Python datasets: {why}, so the runs train in this process, one at a time; "
         f"define the dataset class in a module for parallel runs")
    return None


def check_datasets_executor(config, datasets) -> None:
    """Python datasets reach the local executor's workers, not a Ray cluster's: refused
    before anything is planned or written."""
    if datasets is not None and config.executor == "ray":
        raise ValueError("Python datasets train on this machine: use --executor local, or "
                         "write them to csv:FILE, imagefolder:PATH or webdataset:DIR for Ray")


def datasets_facts(config, datasets) -> dict:
    """What an experiment on Python datasets records of them (it cannot re-read them by
    name): classes, channels and the sizes of the splits its runs train and score on."""
    from ..data import load_data
    data = load_data(datasets, subset=config.subset, val_subset=config.val_subset,
                     val_fraction=config.train.get("val_fraction", 0.1))
    return {"num_classes": data.info.num_classes, "in_chans": data.info.in_chans,
            "train_size": len(data.train), "val_size": len(data.val)}


def check_same_datasets(old: dict, facts: dict | None, data: str) -> None:
    """Refuse Python datasets of other sizes than those a record was planned on: the runs
    already there trained on other data."""
    if facts and old and old.get("train_size") is not None:
        then = {k: old.get(k) for k in ("train_size", "val_size")}
        now = {k: facts[k] for k in then}
        if then != now:
            raise ValueError(f"{data}: the datasets given have {now['train_size']} train and "
                             f"{now['val_size']} val images, the ones this directory was "
                             f"planned on {then['train_size']} and {then['val_size']}: other "
                             f"data; use another --out")
