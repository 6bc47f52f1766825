"""The one reader of the DeepSpeed JSON.

The JSON is the single source of truth for what it holds: micro-batch, accumulation,
optimizer and its peak LR, gradient clipping, precision and ZeRO stage. Everything in
turbo_ds that needs one of these (the batch plan, the trainer's compute dtype, the memory
planner's bytes per parameter) reads it through ``DeepSpeedConfig``; values that the YAML
restates are cross-checked in ``plan_batches``, never silently overridden.

Learning rates live in the JSON, one JSON per kind of run (ds_configs/: the demo's
``zero{0,1,2,3}_bf16.json`` train from scratch; ``videomae_ft_*`` and ``clip_ft_*`` fine-tune
pretrained weights). turbo_ds's one key of its own, ``lr_base_batch``, makes the JSON's lr the
peak LR at that global batch, scaled linearly to the run's (VideoMAE's 5e-4 x batch / 256); it
is resolved (and removed) before DeepSpeed sees the JSON. ``check_finetune_lr`` refuses a run
from pretrained weights whose JSON holds a from-scratch lr.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from turbo_ds.config.schema import Config, ConfigError

if TYPE_CHECKING:
    import torch

Precision = Literal["bf16", "fp16", "fp32"]

LR_BASE_BATCH = "lr_base_batch"  # turbo_ds's own top-level key: optimizer.params.lr is the lr at this global batch


@dataclass(frozen=True)
class FinetuneAnchor:
    """A published fine-tuning LR: ``lr`` at a global batch of ``batch``, scaled linearly with the batch."""

    lr: float
    batch: int
    source: str
    ds_config: str
    "the shipped JSON that holds it"


# Per model.arch, the LR of fine-tuning its pretrained weights. A run from model.pretrained whose peak LR per
# sample is more than FINETUNE_MARGIN x the anchor's is refused: the demo's from-scratch 1e-3 at 16-128 clips is
# 16-64x VideoMAE's and 100x or more CLIP's, and quietly wrecks pretrained weights (the guard sees no divergence).
FINETUNE_ANCHORS = {
    "videomae": FinetuneAnchor(5e-4, 256, "VideoMAE (5e-4 per 256 clips)", "ds_configs/videomae_ft_zero2_bf16.json"),
    "clip": FinetuneAnchor(2e-5, 1024, "CLIP towers (1e-5 to 2e-5 per 1024 pairs)",
                           "ds_configs/clip_ft_zero2_bf16.json"),
}
FINETUNE_MARGIN = 2.0

# DeepSpeed's monitor sections -> (the package the monitor imports, how to install it). turbo_ds feeds
# them itself (engine/monitors.py), so a missing package must stop the run here, before any engine starts.
MONITORS = {
    "tensorboard": ("tensorboard", "pip install 'turbo_ds[tensorboard]'"),
    "wandb": ("wandb", "pip install 'turbo_ds[wandb]'"),
    "csv_monitor": (None, ""),
    "comet": ("comet_ml", "pip install 'comet_ml>=3.41'"),
}


@dataclass(frozen=True)
class BatchPlan:
    """Batch sizes derived from the DeepSpeed JSON and the world size."""

    micro: int
    accumulation: int
    world: int

    @property
    def global_size(self) -> int:
        return self.micro * self.accumulation * self.world


@dataclass(frozen=True)
class DeepSpeedConfig:
    """A checked DeepSpeed JSON; ``raw`` is what ``deepspeed.initialize`` gets (see ``resolved``)."""

    raw: dict[str, Any]

    def __post_init__(self) -> None:
        ds = self.raw
        micro = ds.get("train_micro_batch_size_per_gpu")
        if not isinstance(micro, int) or micro < 1:
            raise ConfigError("ds_config train_micro_batch_size_per_gpu: must be set to a positive integer "
                              "(it is the per-rank batch; the JSON is its single source of truth)")
        if "scheduler" in ds:
            raise ConfigError("ds_config scheduler: remove it; the LR schedule comes from the YAML train.* keys "
                              "(warmup_steps, steps, min_lr_ratio)")
        if ds.get("bf16", {}).get("enabled") and ds.get("fp16", {}).get("enabled"):
            raise ConfigError("ds_config: bf16 and fp16 are both enabled; enable at most one")
        if "load_universal" in ds.get("checkpoint", {}):
            raise ConfigError("ds_config checkpoint.load_universal: remove it; turbo_ds converts a checkpoint to a "
                              "universal one and loads it that way by itself when the world size changes")
        if not isinstance(ds.get("optimizer", {}).get("params", {}).get("lr"), (int, float)):
            raise ConfigError("ds_config optimizer.params.lr: missing; add e.g. \"optimizer\": {\"type\": \"AdamW\", "
                              "\"params\": {\"lr\": 1e-3}} (the peak LR of the YAML's warmup-cosine schedule)")
        base = ds.get(LR_BASE_BATCH)
        if base is not None and (not isinstance(base, int) or isinstance(base, bool) or base < 1):
            raise ConfigError(f"ds_config {LR_BASE_BATCH}={base!r}: must be a positive integer, the global batch at "
                              "which optimizer.params.lr holds (e.g. 256: lr x batch / 256), or removed (lr as given)")
        params = ds["optimizer"]["params"]
        if "fused" in params and not params.get("torch_adam"):
            raise ConfigError("ds_config optimizer.params.fused: torch AdamW's flag, which DeepSpeed passes on only "
                              "with \"torch_adam\": true; add that (as the shipped JSONs do) or remove fused")
        for section, (package, install) in MONITORS.items():
            value = ds.get(section, {})
            if not isinstance(value, dict):
                raise ConfigError(f"ds_config {section}={value!r}: must be an object, e.g. \"{section}\": "
                                  "{\"enabled\": true, \"output_path\": \"runs/x/monitor\"}")
            if value.get("enabled") and package and importlib.util.find_spec(package) is None:
                raise ConfigError(f"ds_config {section}.enabled=true: the {package} package is not installed; "
                                  f"{install}, or set {section}.enabled to false")

    @property
    def micro(self) -> int:
        return self.raw["train_micro_batch_size_per_gpu"]

    @property
    def accumulation(self) -> int:
        return self.raw.get("gradient_accumulation_steps", 1)

    @property
    def optimizer(self) -> dict[str, Any]:
        """``{"type": ..., "params": {...}}`` as in the JSON."""
        return self.raw["optimizer"]

    def peak_lr(self, plan: BatchPlan) -> float:
        """The peak LR of a run with ``plan``, which the YAML's warmup-cosine schedule scales: the JSON's lr, times
        global batch / ``lr_base_batch`` when the JSON has that key."""
        lr = float(self.optimizer["params"]["lr"])
        base = self.raw.get(LR_BASE_BATCH)
        return lr * plan.global_size / base if base else lr

    @property
    def precision(self) -> Precision:
        for key in ("bf16", "fp16"):
            if self.raw.get(key, {}).get("enabled"):
                return key
        return "fp32"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype DeepSpeed runs the model in (its parameters; inputs must match)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    @property
    def zero_stage(self) -> int:
        return int(self.raw.get("zero_optimization", {}).get("stage", 0))

    @property
    def global_batch(self) -> int | None:
        """Clips per optimizer step over all ranks, as a resolved JSON records it (``resolved``; None before)."""
        return self.raw.get("train_batch_size")

    @property
    def skips_nonfinite_steps(self) -> bool:
        """Whether DeepSpeed's own overflow check skips a step whose gradients are not finite (no update,
        gradients cleared, LR schedule held): fp16 always; bf16 unless ``bf16.check_grad_overflow`` is false
        on ZeRO-1/2 (ZeRO-0's bf16 optimizer and ZeRO-3 check the gradient norm anyway); fp32 on ZeRO-3."""
        if self.precision == "fp16" or self.zero_stage == 3:
            return True
        if self.precision == "bf16":
            return self.zero_stage == 0 or self.raw["bf16"].get("check_grad_overflow", True) is not False
        return False

    def state_bytes(self, num_params: int) -> dict[str, int]:
        """Bytes of parameters, gradients and optimizer state (fp32 master + 2 Adam moments) for ``num_params``."""
        mixed = self.precision != "fp32"
        width = 2 if mixed else 4
        return {"params": width * num_params, "grads": width * num_params, "optimizer": (12 if mixed else 8) * num_params}

    def zero_saving_bytes(self, num_params: int, ranks: int) -> int:
        """Per-rank bytes that the ZeRO stage removes by partitioning state over ``ranks`` ranks."""
        state = self.state_bytes(num_params)
        sharded = sum(state[k] for k in ("optimizer", "grads", "params")[: self.zero_stage])
        return int(sharded * (1 - 1 / ranks))

    @property
    def monitors(self) -> dict[str, dict[str, Any]]:
        """The enabled monitor sections (tensorboard, wandb, csv_monitor, comet) as the JSON gives them."""
        return {k: self.raw[k] for k in MONITORS if self.raw.get(k, {}).get("enabled")}

    def resolved(self, plan: BatchPlan) -> dict[str, Any]:
        """The JSON the run uses, with the global batch and the peak lr written out (it goes to the run dir)."""
        optimizer = {**self.optimizer, "params": {**self.optimizer["params"], "lr": self.peak_lr(plan)}}
        return {**{k: v for k, v in self.raw.items() if k != LR_BASE_BATCH}, "optimizer": optimizer,
                "train_batch_size": plan.global_size}

    def engine_config(self, plan: BatchPlan, load_universal: bool = False) -> dict[str, Any]:
        """What ``deepspeed.initialize`` gets: ``resolved`` without the monitor sections, which turbo_ds feeds
        itself (engine/monitors.py). The engine's own events count samples, not steps, and would open a second
        TensorBoard writer and W&B run on the same output.

        DeepSpeed's throughput timer is off unless the JSON has a ``timers`` section: by default it
        synchronises the GPU twice per micro-step (host stalls) to time what ``train/clips_per_s`` measures.

        ``load_universal``: the engine is to load a universal checkpoint (an elastic resume, decided by the
        checkpoint manager); never in the run dir's copy.
        """
        out = {"timers": {"throughput": {"enabled": False}},
               **{k: v for k, v in self.resolved(plan).items() if k not in MONITORS}}
        if load_universal:
            out["checkpoint"] = {**out.get("checkpoint", {}), "load_universal": True}
        return out


def load_ds_config(path: str | Path) -> DeepSpeedConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--ds_config {path}: no such file; DeepSpeed configs live in ds_configs/")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--ds_config {path}: not valid JSON ({e})") from e
    return DeepSpeedConfig(raw)


def plan_batches(cfg: Config, ds: DeepSpeedConfig, world: int) -> BatchPlan:
    """Micro-batch and accumulation from the JSON; cross-check everything that restates them."""
    plan = BatchPlan(ds.micro, ds.accumulation, world)
    given = ds.raw.get("train_batch_size")
    if given is not None and given != plan.global_size:
        raise ConfigError(
            f"ds_config train_batch_size={given}: contradicts micro {plan.micro} x accumulation "
            f"{plan.accumulation} x {world} ranks = {plan.global_size}; remove it or make it equal")
    if cfg.train.global_batch_size is not None and cfg.train.global_batch_size != plan.global_size:
        raise ConfigError(
            f"train.global_batch_size={cfg.train.global_batch_size}: contradicts the DeepSpeed JSON (micro "
            f"{plan.micro} x accumulation {plan.accumulation} x {world} ranks = {plan.global_size}); remove it or "
            "change the JSON")
    if plan.micro % cfg.data.repeat_aug:
        raise ConfigError(f"data.repeat_aug={cfg.data.repeat_aug}: must divide the micro-batch (ds_config "
                          f"train_micro_batch_size_per_gpu={plan.micro}), so that no batch (and no checkpoint) "
                          "splits a video's copies")
    if cfg.model.compile and ds.zero_stage == 3:
        raise ConfigError("model.compile=true: not with ZeRO stage 3 (ds_config zero_optimization.stage), whose "
                          "hooks gather the blocks' partitioned weights where torch.compile cannot trace them; use "
                          "ZeRO 0-2 or model.compile=false")
    return plan


def check_finetune_lr(cfg: Config, ds: DeepSpeedConfig, plan: BatchPlan, ds_path: str | Path = "") -> None:
    """Refuse a run from pretrained weights (model.pretrained; not the demo's generated CLIP folder) whose peak LR,
    per sample, is over FINETUNE_MARGIN x its architecture's fine-tuning anchor: a from-scratch JSON (the demo's)."""
    if cfg.model.pretrained is None or cfg.model.generate_demo_clip or not cfg.train.check_finetune_lr:
        return
    anchor, lr = FINETUNE_ANCHORS[cfg.model.arch], ds.peak_lr(plan)
    at_anchor = lr * anchor.batch / plan.global_size
    if at_anchor > FINETUNE_MARGIN * anchor.lr:
        raise ConfigError(
            f"ds_config{' ' + str(ds_path) if ds_path else ''} optimizer.params.lr: a peak lr of {lr:.3g} at a global "
            f"batch of {plan.global_size} (micro {plan.micro} x accumulation {plan.accumulation} x {plan.world} ranks) "
            f"is {at_anchor:.3g} per {anchor.batch}, over {FINETUNE_MARGIN:g}x the fine-tuning lr of {anchor.source}: "
            f"a from-scratch lr (the demo's) that would wreck model.pretrained={cfg.model.pretrained}; use --ds_config "
            f"{anchor.ds_config} (its lr scales with the batch), or set train.check_finetune_lr=false")
