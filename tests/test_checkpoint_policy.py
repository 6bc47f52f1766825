"""The checkpoint manager's resume checks on a checkpoint folder as a run leaves it (no engine needed)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from turbo_ds.config import BatchPlan, ConfigError, DeepSpeedConfig, TrainConfig
from turbo_ds.engine.checkpoint import CheckpointManager
from turbo_ds.engine.distributed import DistInfo

pytestmark = pytest.mark.unit


def ds_config(stage: int) -> dict:
    return json.loads((REPO / "ds_configs" / f"zero{stage}_bf16.json").read_text())


@pytest.mark.parametrize("world", [1, 2])
def test_a_resume_with_another_zero_stage_is_refused_at_any_world_size(tmp_path, world):
    """Written by 1 rank at ZeRO-2; resumed with ZeRO-3 on 1 rank (the same world size) or on 2."""
    ckpt = tmp_path / "checkpoints" / "step_00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 4, "world_size": 1, "ds_config": ds_config(2),
                                                         "config": {}}))
    (tmp_path / "checkpoints" / "latest").write_text(ckpt.name)
    manager = CheckpointManager(tmp_path, DistInfo(0, world, 0), TrainConfig())
    with pytest.raises(ConfigError) as e:
        manager.prepare_resume(torch.nn.Linear(2, 2), DeepSpeedConfig(ds_config(3)), BatchPlan(4, 1, world), print)
    assert str(e.value) == (f"ds_config zero_optimization.stage=3: checkpoint {ckpt} was written with ZeRO stage 2 by "
                            "1 rank(s); resume with zero_optimization.stage=2 (or use a new run_dir)")
    if world == 1:  # with the stage it was written with, it loads as it is
        resume = manager.prepare_resume(torch.nn.Linear(2, 2), DeepSpeedConfig(ds_config(2)), BatchPlan(4, 1, 1), print)
        assert resume.path == ckpt and not resume.universal
