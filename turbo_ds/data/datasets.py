"""The run's datasets, each opened once per rank and handed to the task and the streams.

Opening reads each manifest (a URL's with the configured retries, so an unreachable store stops
the run here) and checks that the training set feeds every loader stream. ``open_datasets`` runs
before the ranks exist, so that a dataset that cannot serve the run stops it before any process
group or engine; only the demo, which rank 0 generates once the ranks exist, is opened after
that (``Datasets.open``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from turbo_ds.config import ConfigError, DataConfig
from turbo_ds.data.locations import is_remote
from turbo_ds.data.shards import MANIFEST, check_readers
from turbo_ds.data.source import ShardSource
from turbo_ds.data.transport import ReadPolicy

SPLITS = ("train", "val")


def open_datasets(data: DataConfig, world: int, collective_timeout_s: float) -> "Datasets | None":
    """Both splits opened for ``world`` ranks, or None when the demo is still to be generated into them.

    A remote split must give up on a stalled store (skip the shard, count it) before the other ranks
    give up on this one (``train.collective_timeout_s``): else a store that stops answering looks like a
    lost node.
    """
    policy = ReadPolicy.from_config(data)
    if any(is_remote(getattr(data, split)) for split in SPLITS) and policy.stalled_s >= collective_timeout_s:
        raise ConfigError(f"data.read_timeout_s={data.read_timeout_s:g} x (data.read_retries={data.read_retries} + 1) "
                          f"+ backoff (data.read_backoff_s={data.read_backoff_s:g}, doubling) = {policy.stalled_s:.0f} "
                          f"s to give up on a stalled store, not below train.collective_timeout_s="
                          f"{collective_timeout_s:g}: lower the read settings or raise the collective timeout")
    for split in SPLITS:
        location = getattr(data, split)
        given = getattr(data, f"{split}_manifest") is not None  # a manifest named apart
        if not is_remote(location) and not given and not (Path(location) / MANIFEST).is_file():
            if data.generate_demo:
                return None
            raise ConfigError(f"data.{split}={location}: no dataset there ({MANIFEST} missing); build shards with "
                              "data_prep/ or set data.generate_demo=true for the demo data")
    return Datasets.open(data, world)


@dataclass(frozen=True)
class Datasets:
    train: ShardSource
    val: ShardSource

    @classmethod
    def open(cls, data: DataConfig, world: int) -> "Datasets":
        """Both splits' sources; a ConfigError naming the key when one cannot be read or cannot feed ``world``
        ranks x ``data.num_workers`` streams."""
        opened = {}
        for split in SPLITS:
            key = f"data.{split}"
            try:
                opened[split] = source = ShardSource.from_config(data, split)
                if split == "train":
                    check_readers(data, source.manifest, world)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(str(e) if str(e).startswith(key) else f"data: {e}") from e
        return cls(**opened)
