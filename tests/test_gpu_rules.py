"""The rules a CUDA run with NCCL needs, pinned on a CPU-only machine.

* Every task's training step and evaluation step run on the ``meta`` device: a CPU tensor created
  in the compute path would meet meta tensors and raise, as it would meet CUDA tensors on a GPU.
* Every tensor our collectives hand to the process group is on the rank's device: a stand-in for
  NCCL (a Python process group) stops at the first collective and reports the devices it got.
* Each rank selects its device before the process group exists, and knows which one it is when the
  site binds one GPU per task.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator, set_accelerator
from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

from turbo_ds.config import Config, ConfigError, LongVideoConfig, ModelConfig, TextConfig
from turbo_ds.engine import distributed
from turbo_ds.engine.gather import all_gather_with_grad
from turbo_ds.engine.guard import DivergenceGuard
from turbo_ds.tasks import TASKS

pytestmark = pytest.mark.unit

META = torch.device("meta")
MODEL = ModelConfig(num_frames=4, img_size=16, patch_size=8, tubelet_size=2, width=32, depth=2, heads=4)


# ------------------------------------------------------------- no CPU tensor in the compute path


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory) -> str:
    from turbo_ds.prep.tokenizer_trainer import train

    prefix = tmp_path_factory.mktemp("tok") / "tok"
    train([f"a {c} square moves {d}" for c in ("red", "blue", "green") for d in ("up", "down")] * 20, prefix,
          "bpe", 30, 1.0, 10_000)
    return f"{prefix}.model"


def task_config(name: str, tokenizer: str) -> Config:
    return Config(task=name, model=MODEL, long_video=LongVideoConfig(frames=8, temporal_heads=2),
                  text=TextConfig(tokenizer=tokenizer, width=32, depth=1, heads=2, max_length=8, embed_dim=16))


def eval_batch(task, views: int) -> dict:
    """What the eval loader delivers for two samples (multi-view: (B, V, C, T, H, W)), on the meta device."""
    video = torch.zeros(2, *([views] if views > 1 else []), 3, task.clip_frames, 16, 16, device=META)
    if task.targets == "label":
        return {"video": video, "label": torch.zeros(2, dtype=torch.long, device=META)}
    return {"video": video, "captions": [["a red square moves up"], ["a blue square", "moves down"]]}


@pytest.mark.parametrize("name", TASKS)
def test_every_task_trains_and_evaluates_on_the_meta_device(name, spm_tokenizer, monkeypatch):
    # transformers asks the host whether a padding mask is all ones (a sync on a GPU, impossible on meta):
    # answer "no", so BERT builds the mask it would build for padded captions anyway.
    monkeypatch.setattr("transformers.masking_utils._ignore_bidirectional_mask_sdpa", lambda *args: False)
    task_class = TASKS[name]
    with torch.device(META):
        task = task_class(task_config(name, spm_tokenizer), {"class_names": ["a", "b", "c"]})
    assert all(p.device == META for p in task.model.parameters())
    batch = task.synthetic_batch(2, META)
    if task.targets == "captions":
        batch["text"] = ["a red square moves up", "a blue square moves down"]
    task.model.train()
    task.loss(task.model, batch, torch.float32).backward()
    assert all(p.grad is not None and p.grad.device == META for p in task.model.parameters() if p.requires_grad)
    task.model.eval()
    with torch.no_grad():
        for views in (1, 3):
            out = task.eval_step(task.model, eval_batch(task, views), torch.float32)
            leaves = out.values() if isinstance(out, dict) else [out]
            assert all(t.device == META for t in leaves if t.is_floating_point())
        task.eval_padding(task.model, torch.float32)


# ------------------------------------------------------------- collectives on the rank's device


class Handed(Exception):
    """Raised by the stand-in process group at the first collective, with the devices it was handed."""

    def __init__(self, op: str, tensors: list[torch.Tensor]):
        super().__init__(f"{op}: {[str(t.device) for t in tensors]}")
        self.devices = {t.device for t in tensors}


def _flat(items) -> list[torch.Tensor]:
    out = []
    for x in items:
        out += _flat(x) if isinstance(x, (list, tuple)) else [x]
    return out


class DeviceOnlyGroup(dist.ProcessGroup):
    """Like an NCCL group, it serves one device type; unlike one, it only reports what it was handed."""

    def getBackendName(self) -> str:
        return "device_only"

    def allreduce(self, tensors, opts=None):
        raise Handed("allreduce", _flat(tensors))

    def allgather(self, outputs, inputs, opts=None):
        raise Handed("allgather", _flat([outputs, inputs]))


@pytest.fixture
def device_only_group(monkeypatch):
    """A two-rank default group of ``DeviceOnlyGroup`` whose ranks compute on ``meta``."""
    if "device_only" not in dist.Backend.backend_list:
        dist.Backend.register_backend("device_only", lambda store, rank, size, timeout: DeviceOnlyGroup(rank, size),
                                      devices=["meta"])
    dist.init_process_group("device_only", rank=0, world_size=2, store=dist.HashStore())
    monkeypatch.setattr(distributed, "_device", META)  # what init_distributed records for the rank's GPU
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("collective", [
    lambda: distributed.all_reduce_sum([1.0, 2.0]),  # log windows, eval metrics, data counters
    # every step: the guard's one all-reduce of (loss on the device, stop signal)
    lambda: DivergenceGuard(10.0, 3, world=2).verdict(torch.tensor(2.0, device=META), stop_signal=True),
    lambda: all_gather_with_grad(torch.zeros(2, 4, device=META, requires_grad=True)),  # contrastive negatives
], ids=["all_reduce_sum", "divergence_guard", "all_gather_with_grad"])
def test_collectives_hand_tensors_on_the_ranks_device(device_only_group, collective):
    with pytest.raises(Handed) as handed:
        collective()
    assert handed.value.devices == {META}, handed.value


# ------------------------------------------------------------- each rank's device, selected first


@pytest.mark.parametrize("local_rank, kind, count, expected", [
    (0, "cpu", 0, "cpu"),
    (3, "cuda", 8, "cuda:3"),  # one rank per GPU of the node
    (0, "cuda", 1, "cuda:0"),  # the site binds one GPU per task; launch.sh sets LOCAL_RANK=0
])
def test_rank_device(local_rank, kind, count, expected):
    assert distributed.rank_device(local_rank, kind, count) == torch.device(expected)


def test_a_local_rank_without_its_device_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK=3, but this process sees 1 cuda device\(s\) "
                                           r"\(CUDA_VISIBLE_DEVICES=5\)"):
        distributed.rank_device(3, "cuda", 1)


class RecordingAccelerator(CPU_Accelerator):
    """DeepSpeed's CPU accelerator, claiming two devices of another kind and recording when one is selected."""

    def __init__(self):
        super().__init__()
        self.selected: list[tuple[int, bool]] = []

    def device_name(self, device_index=None):
        return "meta"

    def device_count(self):
        return 2

    def set_device(self, device_index):
        self.selected.append((device_index, dist.is_initialized()))


def test_the_rank_selects_its_device_before_the_process_group_exists(monkeypatch):
    accelerator, previous = RecordingAccelerator(), get_accelerator()
    monkeypatch.setattr(distributed, "_device", distributed._device)  # init_distributed sets it: restored after
    for key, value in dict(RANK="0", LOCAL_RANK="1", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(distributed.free_port())).items():
        monkeypatch.setenv(key, value)
    set_accelerator(accelerator)
    try:
        info = distributed.init_distributed()  # real DeepSpeed init (gloo), then our first barrier
        assert accelerator.selected == [(1, False)]  # LOCAL_RANK's device, while no group existed
        assert info.device == torch.device("meta", 1) and distributed._device == info.device
    finally:
        distributed.shutdown()
        set_accelerator(previous)
    assert os.environ["LOCAL_RANK"] == "1"


# ------------------------------------------------------------- GPUs the driver lists, torch cannot use


@pytest.fixture
def driver_lists(tmp_path, monkeypatch):
    """A stand-in nvidia-smi on PATH printing ``listing`` for ``-L``, and no CPU request in the environment."""
    def install(listing: str) -> None:
        fake = tmp_path / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}\nEOF\n")
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return install


def test_gpus_the_driver_lists_but_torch_cannot_use_stop_a_cpu_run(driver_lists, monkeypatch):
    driver_lists("GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-a)\n  MIG 3g.40gb Device 0: (UUID: MIG-b)\n"
                 "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-c)")
    assert distributed.driver_gpus() == 2  # MIG instances are listed under their GPU, not counted
    with pytest.raises(ConfigError, match=r"^nvidia-smi lists 2 GPU\(s\), but torch .* cannot use them \(.*\), so "
                                          r"DeepSpeed would train on the CPU; .*set DS_ACCELERATOR=cpu"):
        distributed.usable_devices("cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose
    assert distributed.usable_devices("cpu").startswith("cpu (asked for)")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # the CPU accelerator on purpose
    assert distributed.usable_devices().startswith("cpu (asked for)")


def test_a_machine_without_gpus_trains_on_the_cpu(driver_lists, monkeypatch):
    driver_lists("No devices were found")  # nvidia-smi of a driver without GPUs
    assert distributed.driver_gpus() == 0 and distributed.usable_devices("cpu").startswith("cpu (no GPU listed)")
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi at all
    assert distributed.driver_gpus() == 0 and distributed.usable_devices("cpu").startswith("cpu (no GPU listed)")
