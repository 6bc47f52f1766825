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

SPLITS = ("train", "val")


def open_datasets(data: DataConfig, world: int) -> "Datasets | None":
    """Both splits opened for ``world`` ranks, or None when the demo is still to be generated into them."""
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
