"""`webdataset:DIR`: image classification data as webdataset tar shards, DIR/train/*.tar and
DIR/val/*.tar, read front to back by the `webdataset` package (`pip install
'effscale[webdataset]'`). Each sample is an image member (jpg, jpeg, png or webp) and a `cls`
member (the class index as text) with the same key, webdataset's convention; DIR/classes.txt
(one name a line) names the classes, else they are 0 ... the largest label.

Why shards, and why webdataset rather than Hugging Face datasets: a shard is read
sequentially, start to end, so data too large for a folder of files (millions of them), on
a network file system or an object store's mount, is read at streaming speed instead of a
seek per image; webdataset is a light dependency (braceexpand, numpy, pyyaml), where
`datasets` brings pyarrow and more, and its map-style path is already covered by Python
datasets (objects.py). DIR is a local or mounted folder: the scan seeks in the files.

Loading reads each shard's tar headers once (python tarfile: the small `cls` members are
read, image data is seeked past), so each split's length and labels are known up front and
len(), the class count and the fit of batch size and lr work as for the other sources. A
sample without an image or a cls (or with an empty or truncated image, a cls that is not an
integer, a key or member name used twice) is left out, named in one BrokenSamplesWarning
and listed in the split's `skipped`; more than 1% of a split is refused, as for image
folders. The scan checks members, not pixels: an image that does not decode stops the pass
with its name. There is no val_fraction: a stream cannot be split stratified without
reading it, so DIR/val/ must exist. `subset` / `val_subset` take a stratified selection
(by the seed) whose other samples are streamed past, not decoded.

Order. A split's shards are dealt round-robin over `lanes` (min(shards, LANES)), each lane
a stream of its shards in turn; the lanes are merged so that each is spread evenly over the
epoch (its k-th sample at (k + 1/2) / its length). Training shuffles the shard order by
(seed, epoch) and passes each lane through webdataset's shuffle buffer, seeded by (seed,
epoch, lane); evaluation reads the shards in name order, unshuffled, and that order is the
split's index order (`labels`). So the epoch's order is a function of (seed, epoch) and
the data alone, known before anything is read: batches, their ranks and their
augmentation seeds (seed, epoch, sample index) are batching.py's. Not of the worker count:
any `workers` gives the same batches (`workers` is a runtime setting, config.py).

Workers. One DataLoader worker reads each lane (a worker may hold several; there is no use
for more workers than lanes) and sends its part of every batch; the batch is put together
in the training process. Images go through decoded.py as image folders' do (decode,
folder_transform, seeded per image, uint8 out, normalised on the device). The workers are
persistent across epochs and passes (one set per dataset, both splits), each pass's job
reaching them through a small shared-memory tensor; a pass begun while another is read
gets workers of its own.

Ranks: the epoch's stream is dealt round-robin over the ranks as shard_batches deals a
permutation (the same batch count on every rank); every rank streams every shard, decoding
only its own samples. Resuming at start_batch yields exactly the batches the whole epoch
would have yielded from there: the samples of the first start_batch batches are not
decoded, shards holding only such samples are not opened, and the others are streamed past
up to the first sample still needed (that reading, not a decode, is the cost of a resume:
each lane's current shard up to where it stopped, and a previous one whose samples were
still in the shuffle buffer). docs/data-shards.md has the costs in numbers.
"""

from __future__ import annotations

import io
import random
import warnings
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

import torch

from .augment import AUTOAUGMENT_POLICIES
from .batching import AUGMENT_STREAM, ORDER_STREAM, derive_seed, generator, shard_batches
from .decoded import DecodedLoader, Transforms, decode_file, shutdown
from .folder import named
from .shardscan import PARTS, BrokenSamplesWarning, class_names, scan_split, tars, wds_module
from .splits import IMAGENET_MEAN, IMAGENET_STD, Data, DatasetInfo, stratified_subset

LANES = 32  # shards a rank reads at once; also the most workers a split can use
SHUFFLE_BUFFER = 4096  # samples a rank's shuffle buffers hold, all its lanes together
SHUFFLE_STREAM = 4  # apart from batching.py's order (1) and augmentation (2), splits' val (3)


# -- loading ---------------------------------------------------------------------------------

def load_webdataset(path, *, subset=None, val_subset=None, seed=0, val_fraction=0.1) -> Data:
    """Data of DIR/train/*.tar and DIR/val/*.tar (val_fraction: unused, there is no split-off
    validation set for streams)."""
    root = Path(path).expanduser()
    source = f"webdataset {path}"
    if not root.is_dir():
        raise FileNotFoundError(f"webdataset folder {root} does not exist or is not a folder "
                                f"(webdataset:DIR needs DIR/train/*.tar and DIR/val/*.tar)")
    if not tars(root / "train"):
        raise FileNotFoundError(f"{source}: no train/*.tar shards in {root}")
    if not tars(root / "val"):
        raise ValueError(f"{source}: no val/*.tar shards; a stream cannot be split into a "
                         f"stratified validation set without reading it, so write the "
                         f"validation samples as shards in {root / 'val'}")
    wds_module("tariterators")  # needed from here on: say so before the scan
    scans = [scan_split(root, part, source) for part in PARTS]
    classes = class_names(root, source, scans)
    info = DatasetInfo(f"webdataset:{path}", len(classes), classes, 3, None, IMAGENET_MEAN,
                       IMAGENET_STD)
    broken = [b for _, _, bad in scans for b in bad]
    if broken:
        counts = ", ".join(f"{part} {len(bad)}" for part, (_, _, bad) in zip(PARTS, scans))
        warnings.warn(f"{source}: skipped {len(broken)} broken sample"
                      f"{'s' if len(broken) > 1 else ''} ({counts}): "
                      f"{named([f'{name} ({why})' for name, why in broken])}",
                      BrokenSamplesWarning, stacklevel=3)
    pool = ShardPool()
    splits = [ShardSplit(root / part, tuple(shards), tuple(per_shard), info,
                         tuple(name for name, _ in bad), pool)
              for part, (shards, per_shard, bad) in zip(PARTS, scans)]
    for i, n in enumerate((subset, val_subset)):
        if n is not None:
            if n < 1:
                raise ValueError(f"subset size must be >= 1, got {n}")
            splits[i] = splits[i].select(stratified_subset(splits[i].labels, n, seed))
    pool.splits.extend(splits)  # one set of workers for both
    return Data(info, splits[0], splits[1])


# -- the split and its order -------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ShardSplit:
    """One split of `webdataset:DIR`: its shards (by name) and their good samples, (key,
    image extension, label) in shard order. Index i is the i-th sample of the evaluation
    order (module docstring); `labels` are in that order. skipped: the broken samples left
    out, as "train/NAME.tar:KEY". pool: the worker processes, shared with the other split."""

    root: Path
    shards: tuple[Path, ...]
    per_shard: tuple[tuple[tuple[str, str, int], ...], ...]
    info: DatasetInfo
    skipped: tuple[str, ...] = ()
    pool: "ShardPool" = field(default_factory=lambda: ShardPool(), repr=False)

    def __len__(self) -> int:
        return sum(map(len, self.per_shard))

    @property
    def lanes(self) -> int:
        return min(len(self.shards), LANES)

    @cached_property
    def layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(first flat number of each shard, the shard of each flat number, the flat number
        of each index, the index of each flat number); flat numbers count the samples shard
        after shard, indices follow the evaluation order (epoch_lanes)."""
        counts = torch.tensor([len(s) for s in self.per_shard], dtype=torch.int64)
        starts = torch.cumsum(counts, 0) - counts
        streams = [[int(starts[s]) + j for s in own for j in range(len(self.per_shard[s]))]
                   for own in deal(list(range(len(self.shards))), self.lanes)]
        flat = merged(streams)
        index = torch.empty_like(flat)
        index[flat] = torch.arange(len(flat))
        return starts, torch.repeat_interleave(torch.arange(len(counts)), counts), flat, index

    @cached_property
    def labels(self) -> torch.Tensor:
        flat = torch.tensor([label for samples in self.per_shard for _, _, label in samples],
                            dtype=torch.int64)
        return flat[self.layout[2]]

    def places(self, indices) -> list[tuple[int, int]]:
        """(shard, position in the shard) of each sample of `indices`."""
        starts, shard_of, flat, _ = self.layout
        numbers = flat[torch.as_tensor(indices, dtype=torch.int64)]
        shards = shard_of[numbers]
        return list(zip(shards.tolist(), (numbers - starts[shards]).tolist()))

    def shard_indices(self, shard: int) -> list[int]:
        """The indices of a shard's samples, in shard order."""
        starts, _, _, index = self.layout
        start = int(starts[shard])
        return index[start:start + len(self.per_shard[shard])].tolist()

    def name(self, index: int) -> str:
        (shard, j), = self.places([index])
        return f"{self.root.name}/{self.shards[shard].name}:{self.per_shard[shard][j][0]}"

    def select(self, indices) -> "ShardSplit":
        """The samples at `indices` (in this split's order again), as a split of the same
        shards: the others are streamed past, not decoded."""
        keep = set(self.places(indices))
        per_shard = tuple(tuple(x for j, x in enumerate(samples) if (s, j) in keep)
                          for s, samples in enumerate(self.per_shard))
        return replace(self, per_shard=per_shard)


def deal(shards: list[int], lanes: int) -> list[list[int]]:
    return [shards[lane::lanes] for lane in range(lanes)]


def interleave(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(lane, k) at each position of the lanes merged into one stream: lane l's k-th item at
    (k + 1/2) / lengths[l], ties in lane order, so every lane is spread over the stream."""
    sizes = torch.tensor(lengths, dtype=torch.int64)
    lane = torch.repeat_interleave(torch.arange(len(lengths)), sizes)
    k = torch.arange(len(lane)) - (torch.cumsum(sizes, 0) - sizes)[lane]
    key = (k.double() + 0.5) / sizes.double()[lane]
    order = torch.sort(key, stable=True).indices
    return lane[order], k[order]


def merged(streams: list[list[int]]) -> torch.Tensor:
    lane, k = interleave([len(s) for s in streams])
    flat = torch.tensor([x for s in streams for x in s], dtype=torch.int64)
    sizes = torch.tensor([len(s) for s in streams], dtype=torch.int64)
    return flat[(torch.cumsum(sizes, 0) - sizes)[lane] + k] if len(flat) else flat


def epoch_lanes(split: ShardSplit, seed: int, epoch: int, train: bool):
    """[(shards, samples)] of each lane for one epoch: its shards in reading order and its
    samples (indices) in the order it gives them out. Training: the shards shuffled by
    (seed, epoch), each lane through webdataset's shuffle buffer seeded by (seed, epoch,
    lane); evaluation: the shards in name order, each lane in shard order."""
    count = len(split.shards)
    order = (torch.randperm(count, generator=generator(seed, epoch, ORDER_STREAM)).tolist()
             if train else list(range(count)))
    buffer = max(1, SHUFFLE_BUFFER // split.lanes)
    filters = wds_module("filters") if train else None
    lanes = []
    for lane, own in enumerate(deal(order, split.lanes)):
        samples = [i for s in own for i in split.shard_indices(s)]
        if train:
            rng = random.Random(derive_seed(seed, epoch, SHUFFLE_STREAM, lane))
            samples = list(filters.shuffle(buffer, buffer, rng=rng)(iter(samples)))
        lanes.append((own, samples))
    return lanes


# -- a pass: the workers' side -----------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """What a pass is: as make_loader's arguments, and the transform spec (decoded.py)."""

    seed: int
    epoch: int
    train: bool
    rank: int
    world_size: int
    batch_size: int
    start_batch: int
    drop_last: bool | None
    resolution: int
    flip: bool
    policy: str

    def encode(self) -> list[int]:
        drop = -1 if self.drop_last is None else int(self.drop_last)
        return [self.seed, self.epoch, int(self.train), self.rank, self.world_size,
                self.batch_size, self.start_batch, drop, self.resolution, int(self.flip),
                AUTOAUGMENT_POLICIES.index(self.policy)]

    @classmethod
    def decode(cls, values: list[int]) -> "Job":
        seed, epoch, train, rank, world, batch, start, drop, resolution, flip, policy = values
        return cls(seed, epoch, bool(train), rank, world, batch, start,
                   None if drop < 0 else bool(drop), resolution, bool(flip),
                   AUTOAUGMENT_POLICIES[policy])

    def batches(self, n: int) -> list[torch.Tensor]:
        """This rank's batches of positions in the epoch's stream (shard_batches' dealing)."""
        return shard_batches(n, batch_size=self.batch_size, train=self.train, seed=self.seed,
                             epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                             drop_last=self.drop_last, order=torch.arange(n))


def split_chunks(split: ShardSplit, job: Job, worker: int, workers: int, transforms):
    """Worker `worker`'s part of each batch of the pass (lanes l with l % workers == worker):
    (b, worker, workers, places in the batch, uint8 images (k, 3, R, R), labels (k,))."""
    lanes = epoch_lanes(split, job.seed, job.epoch, job.train)
    lane_of, k_of = (t.tolist() for t in interleave([len(s) for _, s in lanes]))
    batches = job.batches(len(split))[job.start_batch:]
    mine = [[(slot, lane_of[p], lanes[lane_of[p]][1][k_of[p]])
             for slot, p in enumerate(positions.tolist()) if lane_of[p] % workers == worker]
            for positions in batches]
    wanted: dict[int, set] = {}
    for _, lane, index in (x for batch in mine for x in batch):
        wanted.setdefault(lane, set()).add(index)
    readers = {lane: LaneReader(split, lanes[lane][0], indices)
               for lane, indices in wanted.items()}
    spec = (job.resolution, job.train, job.flip, job.policy)
    empty = torch.empty((0, 3, job.resolution, job.resolution), dtype=torch.uint8)
    for b, batch in enumerate(mine, start=job.start_batch):
        images = [transforms(_image(split, index, readers[lane].take(index)),
                             derive_seed(job.seed, job.epoch, AUGMENT_STREAM, index), spec)
                  for _, lane, index in batch]
        slots = torch.tensor([slot for slot, _, _ in batch], dtype=torch.int64)
        labels = split.labels[[index for _, _, index in batch]]
        yield b, worker, workers, slots, torch.stack(images) if images else empty, labels


def _image(split: ShardSplit, index: int, data: bytes):
    try:
        return decode_file(io.BytesIO(data))
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated), SyntaxError, ...
        raise ValueError(f"{split.name(index)}: the image does not decode ({exc}); the scan "
                         f"checks members, not pixels: rewrite that sample") from None


class LaneReader:
    """One lane's shards read front to back by webdataset's tar iterator, only the wanted
    samples' images kept, each held until it is taken (at most about a shuffle buffer's
    worth); a shard with none of them is not opened."""

    def __init__(self, split: ShardSplit, shards: list[int], wanted: set[int]):
        self.split, self.held = split, {}
        self.samples = self._read(shards, wanted)

    def _read(self, shards: list[int], wanted: set[int]):
        module = wds_module("tariterators")
        by_shard: dict[int, dict] = {}
        indices = sorted(wanted)
        for index, (shard, j) in zip(indices, self.split.places(indices)):
            key, ext, _ = self.split.per_shard[shard][j]
            by_shard.setdefault(shard, {})[key] = (index, ext)
        for shard in shards:
            keys = by_shard.get(shard)
            if not keys:
                continue

            def selected(name, keys=keys):  # the wanted images; cls, others: streamed past
                key, ext = module.base_plus_ext(name)
                return key in keys and ext.lower() == keys[key][1]

            path = str(self.split.shards[shard])
            with open(path, "rb") as f:
                files = module.tar_file_expander([{"url": path, "stream": f}],
                                                 select_files=selected)
                for sample in module.group_by_keys(files):
                    index, ext = keys[sample["__key__"]]
                    yield index, sample[ext]

    def take(self, index: int) -> bytes:
        while index not in self.held:
            got = next(self.samples, None)
            if got is None:
                raise ValueError(f"{self.split.name(index)} is not in its shard any more: the "
                                 f"shards changed since they were loaded; load the data again")
            self.held[got[0]] = got[1]
        return self.held.pop(index)


# -- the workers and the loader ----------------------------------------------------------------

class _Stream(torch.utils.data.IterableDataset):
    """The DataLoader's dataset: each worker yields its part of each batch of the job that
    `set` wrote into shared memory before the pass (read when the worker's pass begins)."""

    def __init__(self, splits):
        self.splits = tuple(splits)
        self.job = torch.zeros(1 + len(fields(Job)), dtype=torch.int64).share_memory_()
        self.transforms = Transforms()

    def set(self, split: int, job: Job) -> None:
        self.job.copy_(torch.tensor([split, *job.encode()], dtype=torch.int64))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        split, *job = self.job.tolist()
        yield from split_chunks(self.splits[split], Job.decode(job), worker, workers,
                                self.transforms)


class ShardPool:
    """The worker processes of one webdataset (both its splits): a persistent DataLoader per
    worker count. A pass that starts while another is still being read gets a DataLoader of
    its own, so passes never mix."""

    def __init__(self):
        self.splits, self.loaders, self.busy = [], {}, False
        self.transforms = Transforms()  # for passes in this process (workers=0)

    def __getstate__(self):  # worker processes and DataLoaders do not travel
        return {"splits": [], "loaders": {}, "busy": False, "transforms": Transforms()}

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the pool is garbage)."""
        loaders, self.loaders = self.loaders, {}
        for loader in loaders.values():
            shutdown(loader)

    def chunks(self, split: ShardSplit, job: Job, workers: int):
        """split_chunks of every worker, as the workers send them. No more workers than the
        most lanes of a split (those of a split with fewer lanes send empty parts)."""
        if workers == 0:
            yield from split_chunks(split, job, 0, 1, self.transforms)
            return
        if self.busy:
            stream = _Stream([split])
            stream.set(0, job)
            yield from torch.utils.data.DataLoader(stream, batch_size=None,
                                                   num_workers=min(workers, split.lanes))
            return
        if not any(s is split for s in self.splits):  # a new split (a subset): new workers
            self.close()
            self.splits.append(split)
        width = min(workers, max(s.lanes for s in self.splits))
        if width not in self.loaders:
            self.loaders[width] = torch.utils.data.DataLoader(
                _Stream(self.splits), batch_size=None, num_workers=width,
                persistent_workers=True)
        loader = self.loaders[width]
        loader.dataset.set(next(i for i, s in enumerate(self.splits) if s is split), job)
        self.busy = True
        try:
            yield from loader
        finally:  # also when the pass is left early (islice): the next one resets the workers
            self.busy = False


class ShardLoader(DecodedLoader):
    """make_loader's iterable for a ShardSplit: decoded.DecodedLoader's batches (their count,
    ranks, start batch, cutout, resize, normalisation), each put together from the workers'
    parts."""

    def __init__(self, split: ShardSplit, *, batch_size, world_size, drop_last=None, **kw):
        super().__init__(split, batch_size=batch_size, world_size=world_size,
                         drop_last=drop_last, **kw)
        self.job = Job(self.seed, self.epoch, self.train, self.rank, world_size, batch_size,
                       self.start_batch, drop_last, self.resolution, self.augment.flip,
                       self.augment.autoaugment)

    def train_order(self, n: int):
        return torch.arange(n)  # positions in the epoch's stream, in stream order

    def __iter__(self):
        if self.start_batch >= self.num_batches:
            return
        parts: dict[int, list] = {}
        b = self.start_batch
        for chunk in self.split.pool.chunks(self.split, self.job, self.num_workers):
            parts.setdefault(chunk[0], []).append(chunk)
            while len(parts.get(b, ())) == chunk[2]:  # every worker's part of batch b is in
                yield self.finish_batch(b, *_assemble(parts.pop(b), len(self.batches[b])))
                b += 1


def _assemble(pieces: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.empty((size, *pieces[0][4].shape[1:]), dtype=torch.uint8)
    labels = torch.empty(size, dtype=torch.int64)
    for _, _, _, slots, part_images, part_labels in pieces:
        images[slots], labels[slots] = part_images, part_labels
    return images, labels
