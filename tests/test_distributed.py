"""Rank placement checks that need no process group: LOCAL_SIZE vs hosts, the layout line, failure kinds,
and the start-up checks of a world larger than the data (the multi-node jobs: test_slurm_multinode.py)."""

from __future__ import annotations

import os

import pytest

from conftest import tiny_overrides
from turbo_ds.config import ConfigError, load_config
from turbo_ds.engine.distributed import DistInfo, check_local_size, is_collective_failure, shm_buffers_mapped

pytestmark = pytest.mark.unit

HOSTS = ("node1", "node1", "node2", "node2")


def test_local_size_is_set_from_the_hosts_when_missing(monkeypatch):
    monkeypatch.setenv("LOCAL_SIZE", "")  # recorded, so the value check_local_size sets is removed afterwards
    monkeypatch.delenv("LOCAL_SIZE")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    check_local_size(("a", "b", "b"), 2)
    assert os.environ["LOCAL_SIZE"] == "2"


def test_local_size_matching_the_hosts_passes(monkeypatch):
    monkeypatch.setenv("LOCAL_SIZE", "2")
    check_local_size(HOSTS, 3)


@pytest.mark.parametrize("var", ["LOCAL_SIZE", "LOCAL_WORLD_SIZE"])
def test_local_size_spanning_hosts_is_a_config_error(monkeypatch, var):
    # what would switch DeepSpeed's shm collectives on across nodes: a hang on a real cluster
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    monkeypatch.setenv(var, "4")
    with pytest.raises(ConfigError, match=r"LOCAL_SIZE=4: rank 2's host node2 runs 2 of the 4 ranks \(2 3\)"):
        check_local_size(HOSTS, 2)


def test_layout_names_every_rank_with_its_host():
    line = DistInfo(0, 4, 0, HOSTS).layout()
    assert line.startswith("4 rank(s) on 2 host(s): node1: 0 1 | node2: 2 3 | DeepSpeed shm buffers mapped by rank 0:")
    assert shm_buffers_mapped() == 0  # this process started no DeepSpeed shm op


def test_collective_failures_are_told_apart():
    assert is_collective_failure(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 8000ms "
                                              "for recv operation to complete"))
    assert is_collective_failure(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.1.1.2]"))
    assert not is_collective_failure(RuntimeError("CUDA out of memory")) and not is_collective_failure(ValueError("x"))


def test_collective_timeout_must_be_positive():
    with pytest.raises(ConfigError, match=r"train.collective_timeout_s=0.0: must be > 0"):
        load_config("configs/demo_action_cls.yaml", ["train.collective_timeout_s=0"])


def test_more_ranks_than_shards_stops_before_any_engine(tiny_demo, tmp_path, monkeypatch, capsys):
    from turbo_ds.train import main

    monkeypatch.setenv("WORLD_SIZE", "6")  # e.g. sbatch --nodes=2 --ntasks-per-node=3 on the 4-shard tiny demo
    args = ["--config", "configs/demo_action_cls.yaml", "--ds_config", "ds_configs/zero0_bf16.json",
            *tiny_overrides(tiny_demo, tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"config error: data.train={tiny_demo}/train: 4 shards cannot feed 6 ranks x 1 "
                          "workers") and "data.resampled=true" in err and not (tmp_path / "run").exists()
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main([*args, "--set", "data.num_workers=2"]) == 2  # 4 ranks x 2 workers = 8 readers
    assert "4 shards cannot feed 4 ranks x 2 workers" in capsys.readouterr().err
