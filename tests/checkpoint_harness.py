"""A process that saves checkpoints back to back through the real CheckpointManager and a real DeepSpeed
engine (1 rank, ZeRO-2 bf16), for tests that freeze or kill it mid-save (tests/test_checkpoint_safety.py).

    python tests/checkpoint_harness.py RUN_DIR

It first resumes from RUN_DIR's latest checkpoint, if any, and checks that the weights it loaded are
the ones that checkpoint recorded (``trainer_state.json`` holds a checksum of the weights); prints
``resumed STEP`` (0 for a new run) and ``ready``, then changes the weights and saves, forever, printing
``saving STEP`` before each save.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbo_ds.config import BatchPlan, DeepSpeedConfig, TrainConfig  # noqa: E402
from turbo_ds.engine.checkpoint import TRAINER_STATE, CheckpointManager  # noqa: E402
from turbo_ds.engine.distributed import init_distributed  # noqa: E402
from turbo_ds.engine.metrics import RunLog  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def checksum(engine) -> float:
    """Of the fp32 master weights the checkpoint holds (ZeRO-2 on one rank: one flat partition per group)."""
    return float(sum(p.detach().double().sum() for p in engine.optimizer.single_partition_of_fp32_groups))


class Weights:
    """What the harness keeps besides the engine (as the trainer's state_dict does): the step and a checksum."""

    def __init__(self, engine) -> None:
        self.engine, self.step, self.saved = engine, 0, None

    def state_dict(self) -> dict:
        return {"step": self.step, "checksum": checksum(self.engine)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.saved = state["step"], state["checksum"]


def main(run_dir: str) -> None:
    import deepspeed

    dist_info = init_distributed()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))  # 0.5M
    ds = json.loads((REPO / "ds_configs" / "zero2_bf16.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=4, train_batch_size=4)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir, True)
    manager = CheckpointManager(run_dir, dist_info, TrainConfig(keep_last_checkpoints=2))
    resume = manager.prepare_resume(model, DeepSpeedConfig(ds), BatchPlan(4, 1, 1), log.info)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds,
                                      lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
    weights = Weights(engine)
    if manager.restore(engine, log, resume, {"weights": weights}):
        saved = json.loads((manager.latest / TRAINER_STATE).read_text())["checksum"]
        assert saved == weights.saved
        assert abs(checksum(engine) - saved) <= 1e-9 * max(1.0, abs(saved)), (checksum(engine), saved)
    print(f"resumed {weights.step}", flush=True)
    print("ready", flush=True)
    while True:
        weights.step += 1
        with torch.no_grad():  # new weights for every checkpoint, without a training step's cost
            for partition in engine.optimizer.single_partition_of_fp32_groups:
                partition.add_(1.0)
        print(f"saving {weights.step}", flush=True)
        manager.save(engine, weights.step, {"weights": weights}, log)


if __name__ == "__main__":
    main(sys.argv[1])
