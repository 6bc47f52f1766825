"""The GPU rules through the engine path, on a CPU: a whole ``Trainer.fit`` (DeepSpeed's CPU engine, ZeRO-2
bf16: training steps, the log lines' collectives, an evaluation through ``run_evaluation``, a checkpoint) in a
process group that, like NCCL, serves one device and refuses tensors anywhere else.

* The stand-in group (gloo underneath, one rank) refuses any tensor not on the rank's device and records
  which collective turbo_ds called from where.
* While the trainer runs, no turbo_ds code may create a tensor on the default device (no ``device=``): on a
  GPU that is a CPU tensor meeting CUDA ones, or handed to NCCL. The loader's workers, CPU by design, run in
  their own processes and are not watched.
* Normalisation (``to_device``) gives device tensors from the loader's uint8 batch (``meta`` stands in for a GPU).

The trainer runs in a child process (this file run as a script), so DeepSpeed's global state stays out of
the test session.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "randn", "rand", "randint",
             "randperm", "linspace", "eye")
PACKAGE = str(Path(__file__).resolve().parents[1] / "turbo_ds")


def turbo_ds_frames(frame) -> list[str]:
    """``file:function`` of every turbo_ds frame from ``frame`` up the stack, innermost first."""
    out = []
    while frame is not None:
        if frame.f_code.co_filename.startswith(PACKAGE):
            out.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}")
        frame = frame.f_back
    return out


def child(demo: str, run_dir: str) -> None:
    """Fit two steps with an evaluation and a checkpoint inside the stand-in group; print what it saw as JSON."""
    import torch.distributed as dist
    from torch.overrides import TorchFunctionMode

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")  # what DeepSpeed's engine asks of any launcher
    from turbo_ds.engine import distributed

    device = distributed._device  # the rank's device, as init_distributed records it (cpu here)
    calls: Counter[str] = Counter()

    class DeviceOnlyNcclLike(dist.ProcessGroup):
        """Serves the rank's device only and says who called; gloo moves the bytes (one rank)."""

        def __init__(self, store, rank, size, timeout):
            super().__init__(rank, size)
            self.gloo = dist.ProcessGroupGloo(store, rank, size, timeout)

        def getBackendName(self) -> str:
            return "device_only_nccl_like"

        def _check(self, op: str, tensors) -> None:
            bad = [str(t.device) for t in tensors if t.device != device]
            if bad:
                raise RuntimeError(f"{op}: tensors on {bad}, the rank's device is {device} (NCCL refuses them)")
            calls[f"{op} from {' < '.join(turbo_ds_frames(sys._getframe(1))) or 'DeepSpeed'}"] += 1

        def allreduce(self, tensors, opts=None):
            self._check("allreduce", tensors)
            return self.gloo.allreduce(tensors, opts)

        def allgather(self, outputs, inputs, opts=None):
            self._check("allgather", inputs)
            return self.gloo.allgather(outputs, inputs, opts)

        def _allgather_base(self, output, input, opts=None):
            self._check("allgather", [input])
            return self.gloo._allgather_base(output, input, opts)

        def broadcast(self, tensors, opts=None):
            self._check("broadcast", tensors)
            return self.gloo.broadcast(tensors, opts)

        def reduce_scatter(self, outputs, inputs, opts=None):
            self._check("reduce_scatter", outputs)
            return self.gloo.reduce_scatter(outputs, inputs, opts)

        def _reduce_scatter_base(self, output, input, opts=None):
            self._check("reduce_scatter", [input])
            return self.gloo._reduce_scatter_base(output, input, opts)

        def barrier(self, opts=None):
            return self.gloo.barrier(opts)

    dist.Backend.register_backend("device_only_nccl_like", DeviceOnlyNcclLike, devices=[device.type])
    dist.init_process_group("device_only_nccl_like", rank=0, world_size=1, store=dist.HashStore())
    import deepspeed

    deepspeed.init_distributed()  # wraps the group above

    from turbo_ds.config import load_config, load_ds_config, plan_batches
    from turbo_ds.data.datasets import Datasets
    from turbo_ds.engine.checkpoint import CheckpointManager
    from turbo_ds.engine.metrics import RunLog
    from turbo_ds.tasks import build_task
    from turbo_ds.trainer import Trainer
    from turbo_ds.engine.guard import PreemptionFlag

    cfg = load_config("configs/demo_action_cls.yaml", [
        f"run_dir={run_dir}", f"data.train={demo}/train", f"data.val={demo}/val", "data.generate_demo=false",
        "data.num_workers=1", "data.shuffle_buffer=8", "train.steps=2", "train.warmup_steps=1", "train.log_every=1",
        "train.eval_every=2", "train.ckpt_every=2", "eval.batch_size=16", "model.width=32", "model.depth=1",
        "model.heads=2"])
    ds = load_ds_config("ds_configs/zero2_bf16.json")
    info = distributed.DistInfo(0, 1, 0, ("localhost",), device, "cpu")
    Path(run_dir).mkdir(parents=True)
    log = RunLog(run_dir, True)
    datasets = Datasets.open(cfg.data, 1)
    trainer = Trainer(cfg, ds, plan_batches(cfg, ds, 1), info, build_task(cfg, datasets.train.manifest), datasets,
                      CheckpointManager(run_dir, info, cfg.train), log, PreemptionFlag())
    created: Counter[str] = Counter()

    class DefaultDeviceTensors(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            caller = sys._getframe(1)  # the Python code that called torch
            if (getattr(func, "__name__", "") in FACTORIES and kwargs.get("device") is None
                    and caller.f_code.co_filename.startswith(PACKAGE)):
                created[f"torch.{func.__name__} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}"] += 1
            return func(*args, **kwargs)

    calls.clear()  # from here on: the trainer's own collectives
    with DefaultDeviceTensors():
        trainer.fit()
    log.close()
    print(json.dumps({"calls": calls, "created": created}))


def test_a_whole_fit_runs_in_a_group_that_refuses_tensors_off_the_device(tiny_demo, tmp_path):
    import subprocess

    from conftest import REPO, read_metrics

    proc = subprocess.run([sys.executable, __file__, str(tiny_demo), str(tmp_path / "run")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["created"] == {}, f"tensors created on the default device by turbo_ds: {seen['created']}"
    callers = " | ".join(seen["calls"])
    # the guard's one all-reduce per step, the log lines' and the evaluation's reductions went through the group
    for site in ("guard.py:verdict", "trainer.py:_log_train", "classification.py:", "trainer.py:run_evaluation"):
        assert site in callers, seen["calls"]
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
    assert [r["eval/num_clips"] for r in records if "eval/top1" in r] == [32]  # every val clip, evaluated once
    assert (tmp_path / "run" / "COMPLETED").is_file()


def test_normalisation_leaves_the_batch_on_the_device():
    from turbo_ds.config import DataConfig
    from turbo_ds.data.samples import to_device
    from turbo_ds.data.transforms import Normalizer

    batch = {"video": torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8), "label": torch.tensor([1, 2]), "key": ["a", "b"]}
    out = to_device(batch, torch.device("meta"), Normalizer(DataConfig().mean, DataConfig().std))
    assert out["video"].device.type == "meta" and out["video"].dtype == torch.float32
    assert out["label"].device.type == "meta" and out["key"] == ["a", "b"]


if __name__ == "__main__":
    child(*sys.argv[1:3])
