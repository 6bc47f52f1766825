"""WebDataset loaders: each split's stream is one ordered, commented list of stages.

As in open_clip's ``get_wds_dataset``, ``TrainStream.stages`` and ``EvalStream.stages``
list the whole pipeline in order: a source (shard paths or URLs), then stages, each a function
from an iterator to an iterator; ``run`` chains them (the generic stages: data/stages.py; the
per-sample ones, what a sample holds and collate: data/samples.py). Training, one epoch of one
rank/worker (epoch e is a deterministic function of the seed)::

    this stream's share of the shards (shuffled by (seed, e), split by rank and worker; see
    data/position.py) -> tar samples (remote shards prefetched and retried) -> number samples in their
    shard -> keep the share -> shuffle buffer
    (data.resampled: shards drawn with replacement by (seed, e, rank, worker) -> tar samples -> take its share
    -> shuffle buffer) -> count -> drop first (resume) -> skip lost shards' placeholders -> seed per sample
    -> parse targets -> decode (data.repeat_aug copies' windows at once) -> choose views -> one sample per copy

and the epochs one after another -> batch (uint8; a batch may span the end of an epoch: no sample is dropped)
|| in the training process: to_device -> RandAugment (data.randaug: each clip's drawn ops) -> normalise (float32).

Evaluation, one reader (rank x worker): its whole shards and its part of the remainder (see
``EvalStream``) -> tar samples -> number samples in their shard -> keep its part -> skip lost
shards' placeholders -> parse targets -> decode -> choose views (num_clips x num_crops, no
randomness) -> batch (the last one partial), then the reader's closing record || to_device -> normalise.

Bad data is skipped and counted (``StreamPosition.skipped``), never fatal: an unreadable
tar file or member through ``StreamPosition.tar_handler``, a sample that raises
``DataError`` (corrupt mp4, a video over ``data.max_decode_pixels`` x 16 or still decoding after
``data.decode_timeout_s``, missing or unparsable member, no caption) through
``each_or_skip``. Any other exception is a bug and propagates. Shards are located and read
by ``source.ShardSource`` (a local folder or a URL): a shard that cannot be read after
retries is counted in ``StreamPosition.skipped_shards`` and its samples become placeholders
(numbered in their shard like real ones), skipped and counted after the stream has counted
them, so no later sample moves and its ``done`` ranges stay whole.
"""

from __future__ import annotations

import math
import random
import signal
from typing import Any, Callable, Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from turbo_ds.config import DataConfig, EvalConfig, ModelConfig
from turbo_ds.data.position import Layout, Ranges, Share, StreamPosition, eval_share, regroup, share
from turbo_ds.data.samples import (ClipSpec, DecodedCache, Targets, choose_views, collate, copies, decode,
                                   parse_targets, seed_per_sample)
from turbo_ds.data.shards import check_readers
from turbo_ds.data.source import ShardSource, check_not_lost
from turbo_ds.data.stages import (batch, drop_first, each, each_or_skip, keep, number_samples, resampled, run,
                                  shuffle, shuffled, take)


def _alone(obj: Any) -> list[Any]:
    """``gather`` of a single process: its own object (a module-level function: streams go to loader workers)."""
    return [obj]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class TrainStream(IterableDataset):
    """Infinite, epoch-seeded training batches for one rank, read from ``source`` (opened once per rank).

    In the training process it also keeps where this rank's streams stand (``record`` each batch):
    ``state_dict`` is what a checkpoint records (every rank's positions, through ``gather``, a
    collective), ``load_state_dict`` resumes it: each stream skips the raw samples it had consumed
    (cheap: no decoding). When the checkpoint was written by another world size or worker count,
    the positions of all old streams are regrouped (data/position.py) and the new streams read
    exactly what the old ones had left.
    """

    def __init__(self, source: ShardSource, data: DataConfig, model: ModelConfig, rank: int, world: int,
                 batch_size: int, seed: int, frames: int | None = None, targets: Targets = "label",
                 gather: Callable[[Any], list[Any]] = _alone):
        self.source = source  # a folder or URL: manifest, shard URLs, reading
        self.manifest, self.shards = self.source.manifest, self.source.shards
        self.names = [s["name"] for s in self.manifest["shards"]]
        self.counts = [s["num_samples"] for s in self.manifest["shards"]]
        self.spec = ClipSpec.from_config(data, model, train=True, frames=frames, targets=targets)
        if batch_size % data.repeat_aug:  # a position (a checkpoint) must never fall between a video's copies
            raise ValueError(f"data.repeat_aug={data.repeat_aug}: must divide the batch size {batch_size}")
        self.data, self.rank, self.world, self.batch_size, self.seed = data, rank, world, batch_size, seed
        self.gather = gather
        self.layout = Layout(world, max(1, data.num_workers))
        self.resume, self.taken, self.regrouped = {}, {}, None
        self.position = self.positions()  # this rank's streams, recorded even before they deliver

    @classmethod
    def from_config(cls, data: DataConfig, *args: Any, **kwargs: Any) -> "TrainStream":
        """A stream over ``data.train``, opened here (one-process tools and tests; a run opens it once per rank
        in ``data.datasets``, which checks the readers too, and hands it over)."""
        stream = cls(ShardSource.from_config(data, "train"), data, *args, **kwargs)
        check_readers(data, stream.manifest, stream.world)
        return stream

    # ------------------------------------------------ state (the training process)

    def record(self, batch: dict[str, Any]) -> list[str]:
        """Note where ``batch``'s stream stands after it; what its shard readers reported, for the log."""
        self.position[batch["stream"]] = batch["position"]
        return [f"{batch['stream']}: {e}" for e in batch["events"]]

    def state_dict(self) -> dict[str, Any]:
        """Every rank's stream positions and the layout that wrote them (a collective: every rank calls it)."""
        merged = {k: v for part in self.gather(self.position) for k, v in part.items()}
        return {"data_position": merged, "data_layout": self.layout_state(merged)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint's ``data_position`` and ``data_layout`` (before the first ``iter``); without a
        layout, the positions are this stream's own layout's."""
        self.resume = state["data_position"]
        if state.get("data_layout") is not None:
            self._restore_layout(state["data_layout"])
        self.position = self.positions()

    def _restore_layout(self, recorded: dict[str, Any]) -> None:
        index_of = {name: i for i, name in enumerate(self.names)}
        named = [*recorded.get("taken", {}).values(), *(s.get("done", {}) for s in self.resume.values())]
        gone = sorted({shard for part in named for shard in part} - set(index_of))
        if gone:
            raise ValueError(f"data.train={self.data.train}: the checkpoint's data position names shards that are "
                             f"not in its manifest ({', '.join(gone[:3])}); resume with the run's dataset")
        taken = {int(e): {index_of[shard]: Ranges.parse(r) for shard, r in part.items()}
                 for e, part in recorded.get("taken", {}).items()}
        old = Layout(recorded["ranks"], recorded["workers"])
        if old == self.layout:
            self.taken = taken
            return
        # Another world size or worker count: every rank regroups all old streams the same way.
        self.regrouped = regroup(self.resume, old, taken, self.order, self.counts, index_of, self.data.resampled)
        self.regrouped.note = f"data: {old} -> {self.layout}: {self.regrouped.note}"
        self.taken = self.regrouped.taken
        # The old totals (bad and short samples, lost shards, read retries) go on with the first stream,
        # so logged sums continue.
        self.resume = {name: {"epoch": self.regrouped.epoch, **(self.regrouped.totals if k == 0 else {})}
                       for k, name in enumerate(self.layout.names())}

    def order(self, epoch: int) -> list[int]:
        """Epoch ``epoch``'s shard order (indices): the same on every rank, for any world size."""
        return shuffled(list(range(len(self.shards))), f"{self.seed}-{epoch}")

    def positions(self) -> dict[str, dict[str, Any]]:
        """Where this rank's streams start (what a checkpoint records for a stream that has not yet delivered)."""
        return {name: StreamPosition(**self.resume.get(name, {})).state()
                for name in self.layout.names() if name.startswith(f"rank{self.rank}/")}

    def layout_state(self, positions: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What a checkpoint records beside every stream's ``positions``: the layout, and what was taken
        of the epochs that were in progress when it last changed (while a stream is still in one)."""
        oldest = min((p["epoch"] for p in positions.values()), default=0)
        return {"ranks": self.layout.ranks, "workers": self.layout.workers,
                "taken": {str(e): {self.names[i]: str(r) for i, r in part.items()}
                          for e, part in self.taken.items() if e >= oldest}}

    def stages(self, epoch: int, worker: int, workers: int, pos: StreamPosition, cache: DecodedCache | None = None,
               resume_at: int = 0, raw: bool = False) -> list:
        """Epoch ``epoch`` of this rank/worker's stream: ``[source, stage, ...]`` for ``run``.

        ``resume_at`` raw samples are skipped undecoded; ``raw`` stops after the shuffle buffer.
        """
        if self.data.resampled:
            # Every stream draws its own shards with replacement, so any shard count suits any
            # world size; its epoch is its share of the manifest. A good shard yields at least
            # one sample, so that many draws suffice (fewer samples only if shards are broken).
            quota = self.manifest["num_samples"] // (self.world * workers)
            pipeline = [
                resampled(self.shards, quota, random.Random(f"resample-{self.seed}-{epoch}-{self.rank}-{worker}")),
                # tar members -> samples (remote shards prefetched); unreadable members and shards skipped, counted
                self.source.samples(pos),
                take(quota),  # this stream's share of an epoch
            ]
        else:
            # Whole shards order[k::streams] for stream k = rank + world * worker (split by rank, then by
            # worker); in an epoch that was in progress when the world size changed, its part of the rest.
            part = share(self.order(epoch), self.counts, self.taken.get(epoch), self.rank + self.world * worker,
                         self.world * workers)
            pipeline = [
                [self.shards[i] for i in part],  # this stream's shards (paths or URLs), in the epoch's order
                # tar members -> samples (remote shards prefetched); unreadable members and shards skipped, counted;
                # a lost shard gives its manifest count of placeholders, so its indices still line up
                self.source.samples(pos),
                number_samples(self.source.names),  # __shard__, __index__: what a position records
                keep({self.names[i]: r for i, r in part.items()}),  # only its part of partly read shards
            ]
        order = random.Random(f"{self.seed}-{epoch}-{self.rank}-{worker}")
        pipeline.append(shuffle(self.data.shuffle_buffer, order))  # shuffle buffer, seeded per stream and epoch
        if raw:
            return pipeline
        spec, cache = self.spec, cache or DecodedCache(0, self.data)
        return pipeline + [
            pos.count,  # raw samples consumed this epoch, and which: what a checkpoint records
            drop_first(resume_at),  # resume mid-epoch: drop what was already trained on, without decoding
            each_or_skip(check_not_lost, pos),  # placeholders of a shard that could not be read: skipped, counted
            each(seed_per_sample(self.seed, epoch)),  # per-sample rng from (seed, epoch, key)
            each_or_skip(parse_targets(spec.targets), pos),  # label or captions; bad ones skipped and counted
            each_or_skip(decode(spec, cache, pos), pos),  # only the picked frames; a corrupt mp4 is skipped, counted
            each(choose_views(spec)),  # per copy (data.repeat_aug): random resized crop box, flip, one caption
            copies,  # each copy a sample of the batch (the micro-batch holds whole videos' copies)
        ]

    def epoch_samples(self, epoch: int, worker: int, workers: int, pos: StreamPosition) -> Iterator[dict]:
        """The raw (undecoded) samples this rank/worker reads in ``epoch``, in order."""
        return run(self.stages(epoch, worker, workers, pos, raw=True))

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        name, spec = f"rank{self.rank}/worker{worker}", self.spec
        pos = StreamPosition(**self.resume.get(name, {}))
        cache = DecodedCache(self.data.decoded_cache_clips, self.data)
        resume_at, pos.consumed, pos.done = pos.consumed, 0, {}  # counted again while skipping

        def epochs() -> Iterator[dict]:
            nonlocal resume_at
            while True:
                yield from run(self.stages(pos.epoch, worker, workers, pos, cache, resume_at))
                pos.next_epoch()
                resume_at = 0

        # crop + flip + resize on uint8, normalise into one batch tensor; batches span epoch ends
        yield from batch(self.batch_size, lambda group: collate(group, spec, name, pos), partial=False)(epochs())


class EvalStream(IterableDataset):
    """Every validation sample exactly once across ranks (and workers), each shard read by as few readers as
    can be: reader k = rank + world x worker of R = world x workers reads whole shards k, k + R, ... of the
    first len(shards) - len(shards) % R, and an equal contiguous part of the remaining shards' samples
    (``position.eval_share``), so one evaluation reads the validation set about once, not R times.

    Each reader ends with a record of where it stands (``{"end": True, "position", "events", "lost"}``),
    after its last batch, also when it had no batch: ``run_evaluation`` counts skipped samples and lost
    shards from those. With ``evaluation.num_clips * num_crops = V > 1`` views, ``video`` is
    (B, V, C, T, H, W). ``num_workers`` must equal the loader's; ``num_batches`` accounts for the split.
    """

    def __init__(self, source: ShardSource, data: DataConfig, model: ModelConfig, rank: int, world: int,
                 batch_size: int, evaluation: EvalConfig | None = None, num_workers: int = 0,
                 frames: int | None = None, targets: Targets = "label"):
        self.source = source  # a folder or URL: manifest, shard URLs, reading
        self.manifest, self.shards = self.source.manifest, self.source.shards
        self.names = [s["name"] for s in self.manifest["shards"]]
        self.counts = [s["num_samples"] for s in self.manifest["shards"]]
        self.spec = ClipSpec.from_config(data, model, train=False, evaluation=evaluation, frames=frames,
                                         targets=targets)
        self.data, self.rank, self.world, self.batch_size = data, rank, world, batch_size
        self.workers = max(1, num_workers)

    @classmethod
    def from_config(cls, data: DataConfig, *args: Any, **kwargs: Any) -> "EvalStream":
        """A stream over ``data.val``, opened here (one-process tools and tests)."""
        return cls(ShardSource.from_config(data, "val"), data, *args, **kwargs)

    def part(self, rank: int, worker: int) -> Share:
        """The samples reader (``rank``, ``worker``) evaluates: shard index -> None (whole) or its Ranges."""
        return eval_share(self.counts, rank + self.world * worker, self.world * self.workers)

    @property
    def num_batches(self) -> int:
        """Batches on the busiest rank; every rank runs this many (padding) so collectives line up."""
        def batches(rank: int) -> int:
            return sum(math.ceil(sum(self.counts[i] if r is None else len(r) for i, r in self.part(rank, w).items())
                                 / self.batch_size) for w in range(self.workers))
        return max(batches(r) for r in range(self.world))

    def stages(self, worker: int, workers: int, pos: StreamPosition) -> list:
        """This rank/worker's share of the validation set: ``[source, stage, ...]`` for ``run``."""
        spec, part = self.spec, self.part(self.rank, worker)
        return [
            [self.shards[i] for i in part],  # this reader's shards, in manifest order
            # tar members -> samples (remote shards prefetched); an unreadable shard gives placeholders, so that
            # the samples after it keep their indices
            self.source.samples(pos),
            number_samples(self.source.names),  # __shard__, __index__
            keep({self.names[i]: r for i, r in part.items()}),  # only its part of a shared shard
            each_or_skip(check_not_lost, pos),  # placeholders of a shard that could not be read: skipped, counted
            each_or_skip(parse_targets(spec.targets), pos),  # label or captions; bad ones skipped and counted
            each_or_skip(decode(spec, DecodedCache(0, self.data), pos), pos),  # corrupt, huge, hanging: skipped
            each(choose_views(spec)),  # num_clips x num_crops fixed views
            batch(self.batch_size, lambda group: collate(group, spec, self.stream_name(worker), pos),
                  partial=True),
        ]

    def stream_name(self, worker: int) -> str:
        return f"eval{self.rank}/worker{worker}"

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        if workers != self.workers:
            raise ValueError(f"EvalStream(num_workers={self.workers}) is read by {workers} loader workers; "
                             "pass the same count to both")
        pos = StreamPosition()
        yield from run(self.stages(worker, workers, pos))
        yield {"end": True, "stream": self.stream_name(worker), "position": pos.state(),
               "events": pos.take_events(), "lost": pos.lost}


def _ignore_stop_signals(worker_id: int) -> None:
    # Slurm signals every process of a job step; the training process handles preemption
    # (finish the step, checkpoint) and its workers must survive until it is done.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(stream: TrainStream | EvalStream, num_workers: int, prefetch_factor: int | None = None,
                pin_memory: bool = False) -> DataLoader:
    """Batches are formed inside the stream, so the DataLoader only adds worker processes.

    ``prefetch_factor`` (batches queued per worker) defaults to the stream's ``data.prefetch_factor``.
    ``pin_memory`` (for a GPU) copies each batch into page-locked memory in a background thread, so that
    its copy to the GPU runs asynchronously.
    """
    prefetch = prefetch_factor or stream.data.prefetch_factor
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      prefetch_factor=prefetch if num_workers else None, worker_init_fn=_ignore_stop_signals,
                      pin_memory=pin_memory)
