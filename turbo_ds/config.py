"""Typed config tree: YAML recipe + ``--set key=value`` overrides, validated before any compute.

Every field has a type, a default and a one-line doc (the string after it). The DeepSpeed
JSON is the single source of truth for what it holds (micro-batch, accumulation,
optimizer, precision, ZeRO); the YAML may restate the global batch size, which is then
cross-checked, never silently overridden.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad config: the message names the key and the fix, in one line."""


@dataclass
class ModelConfig:
    num_frames: int = 16
    "frames per clip fed to the encoder"
    img_size: int = 64
    "frame height and width after cropping, in pixels"
    patch_size: int = 8
    "spatial patch size of a tubelet, in pixels"
    tubelet_size: int = 2
    "temporal size of a tubelet, in frames"
    width: int = 128
    "transformer embedding width"
    depth: int = 4
    "number of transformer blocks"
    heads: int = 4
    "attention heads per block"
    mlp_ratio: float = 4.0
    "MLP hidden width as a multiple of the embedding width"
    pos_embed: Literal["sincos", "learned"] = "sincos"
    "space-time position embedding: fixed sinusoids (as VideoMAE) or learned"


@dataclass
class TurboConfig:
    strategy: Literal["random"] = "random"
    "how kept tokens are chosen during training"
    keep_ratio: float = 0.25
    "fraction of space-time tokens kept in training, in (0, 1]"
    eval_keep_ratio: float = 1.0
    "fraction of tokens kept at evaluation, in (0, 1]"


@dataclass
class DataConfig:
    train: str = "data/demo/train"
    "training dataset folder (tar shards + manifest.json)"
    val: str = "data/demo/val"
    "validation dataset folder (tar shards + manifest.json)"
    generate_demo: bool = False
    "generate the demo dataset into the parent of train/ and val/ when it is missing"
    num_workers: int = 0
    "loader worker processes per rank (0 decodes in the training process)"
    shuffle_buffer: int = 256
    "samples held in the shuffle buffer of each loader stream"
    decoded_cache_clips: int = 0
    "decoded clips kept in memory per loader stream (for tiny datasets; 0 = off)"
    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])
    "random resized crop: range of the crop area as a fraction of the frame"
    hflip_prob: float = 0.5
    "probability of a horizontal flip in training (0 for direction-sensitive labels)"
    mean: list[float] = field(default_factory=lambda: [0.45, 0.45, 0.45])
    "per-channel mean used to normalise pixels in [0, 1]"
    std: list[float] = field(default_factory=lambda: [0.225, 0.225, 0.225])
    "per-channel standard deviation used to normalise pixels"


@dataclass
class TrainConfig:
    steps: int = 1000
    "optimizer steps in the whole run"
    warmup_steps: int = 100
    "linear LR warmup steps before the cosine decay"
    min_lr_ratio: float = 0.01
    "final LR as a fraction of the DeepSpeed JSON's optimizer lr"
    global_batch_size: int | None = None
    "optional restatement of micro-batch x accumulation x ranks; checked against the JSON"
    seed: int = 0
    "seed for weights, token selection, data order and augmentation"
    log_every: int = 20
    "log training metrics every N steps"
    eval_every: int = 500
    "evaluate every N steps (and always at the end)"
    ckpt_every: int = 500
    "save a checkpoint every N steps (and always at the end)"
    stop_at_step: int | None = None
    "checkpoint and stop this invocation at step N (split a run over several jobs); rerun to continue"
    layer_decay: float = 1.0
    "layer-wise LR decay: block i of L gets lr * layer_decay^(L + 1 - i); 1.0 = off (VideoMAE fine-tuning: 0.75)"
    label_smoothing: float = 0.0
    "label smoothing of the classification targets"
    mixup_alpha: float = 0.0
    "Mixup Beta(alpha, alpha) mixing of clip pairs; 0 = off (VideoMAE fine-tuning: 0.8)"
    cutmix_alpha: float = 0.0
    "CutMix Beta(alpha, alpha); the same box in every frame; 0 = off (VideoMAE fine-tuning: 1.0)"


@dataclass
class EvalConfig:
    batch_size: int = 64
    "clips per evaluation batch on each rank"


@dataclass
class Config:
    task: Literal["action_cls"] = "action_cls"
    "which task to train"
    run_dir: str = "runs/default"
    "run directory: resolved configs, metrics.jsonl, checkpoints; reused to resume"
    model: ModelConfig = field(default_factory=ModelConfig)
    turbo: TurboConfig = field(default_factory=TurboConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------- building


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        return _check_type(key, value, next(a for a in typing.get_args(tp) if a is not type(None)))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}={value!r}: must be one of {list(typing.get_args(tp))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return [_check_type(f"{key}[{i}]", v, typing.get_args(tp)[0]) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from nested dicts, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(f"{prefix}{key}", value, tp)
    return cls(**kwargs)


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set turbo.keep_ratio=0.5")
    key, raw = assignment.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw) if raw.strip() else ""


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    m, t, d, tr = cfg.model, cfg.turbo, cfg.data, cfg.train
    for key, ratio in (("turbo.keep_ratio", t.keep_ratio), ("turbo.eval_keep_ratio", t.eval_keep_ratio)):
        if not 0 < ratio <= 1:
            raise ConfigError(f"{key}={ratio}: must be in (0, 1]; 0.25 keeps a quarter of the tokens")
    if m.img_size % m.patch_size:
        raise ConfigError(f"model.img_size={m.img_size}: must be a multiple of model.patch_size={m.patch_size}")
    if m.num_frames % m.tubelet_size:
        raise ConfigError(f"model.num_frames={m.num_frames}: must be a multiple of model.tubelet_size={m.tubelet_size}")
    if m.width % m.heads:
        raise ConfigError(f"model.width={m.width}: must be divisible by model.heads={m.heads}")
    positive = {"train.steps": tr.steps, "train.log_every": tr.log_every, "train.eval_every": tr.eval_every,
                "train.ckpt_every": tr.ckpt_every, "eval.batch_size": cfg.eval.batch_size,
                "model.depth": m.depth, "model.width": m.width, "data.shuffle_buffer": d.shuffle_buffer}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}={value}: must be at least 1")
    if not 0 < tr.layer_decay <= 1:
        raise ConfigError(f"train.layer_decay={tr.layer_decay}: must be in (0, 1]; 1.0 turns it off")
    for key, value in (("train.label_smoothing", tr.label_smoothing), ("train.mixup_alpha", tr.mixup_alpha),
                       ("train.cutmix_alpha", tr.cutmix_alpha)):
        if value < 0 or (key == "train.label_smoothing" and value >= 1):
            raise ConfigError(f"{key}={value}: must be >= 0" + (" and < 1" if "smoothing" in key else ""))
    if not 0 <= tr.warmup_steps < tr.steps:
        raise ConfigError(f"train.warmup_steps={tr.warmup_steps}: must be in [0, train.steps={tr.steps})")
    if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
        raise ConfigError(f"data.crop_scale={d.crop_scale}: must be [min, max] with 0 < min <= max <= 1")
    if len(d.mean) != 3 or len(d.std) != 3:
        raise ConfigError("data.mean and data.std: need 3 values (RGB)")
    if d.generate_demo and Path(d.train).parent != Path(d.val).parent:
        raise ConfigError(f"data.generate_demo: data.train={d.train} and data.val={d.val} must share a parent "
                          "folder (the demo is written to PARENT/train and PARENT/val)")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML recipe, apply ``--set`` overrides, build and validate the typed tree."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file; recipes live in configs/")
    tree = yaml.safe_load(path.read_text()) or {}
    for assignment in overrides:
        _apply_override(tree, assignment)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------- DeepSpeed JSON


@dataclass(frozen=True)
class BatchPlan:
    """Batch sizes derived from the DeepSpeed JSON and the world size."""

    micro: int
    accumulation: int
    world: int

    @property
    def global_size(self) -> int:
        return self.micro * self.accumulation * self.world


def load_ds_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--ds_config {path}: no such file; DeepSpeed configs live in ds_configs/")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--ds_config {path}: not valid JSON ({e})") from e


def plan_batches(cfg: Config, ds: dict[str, Any], world: int) -> BatchPlan:
    """Derive micro-batch and accumulation from the JSON; cross-check everything that restates them."""
    micro = ds.get("train_micro_batch_size_per_gpu")
    if not isinstance(micro, int) or micro < 1:
        raise ConfigError("ds_config train_micro_batch_size_per_gpu: must be set to a positive integer "
                          "(it is the per-rank batch; the JSON is its single source of truth)")
    accum = ds.get("gradient_accumulation_steps", 1)
    plan = BatchPlan(micro, accum, world)
    if "train_batch_size" in ds and ds["train_batch_size"] != plan.global_size:
        raise ConfigError(
            f"ds_config train_batch_size={ds['train_batch_size']}: contradicts micro {micro} x accumulation "
            f"{accum} x {world} ranks = {plan.global_size}; remove it or make it equal")
    if cfg.train.global_batch_size is not None and cfg.train.global_batch_size != plan.global_size:
        raise ConfigError(
            f"train.global_batch_size={cfg.train.global_batch_size}: contradicts the DeepSpeed JSON (micro "
            f"{micro} x accumulation {accum} x {world} ranks = {plan.global_size}); remove it or change the JSON")
    if "scheduler" in ds:
        raise ConfigError("ds_config scheduler: remove it; the LR schedule comes from the YAML train.* keys "
                          "(warmup_steps, steps, min_lr_ratio)")
    if ds.get("bf16", {}).get("enabled") and ds.get("fp16", {}).get("enabled"):
        raise ConfigError("ds_config: bf16 and fp16 are both enabled; enable at most one")
    if not isinstance(ds.get("optimizer", {}).get("params", {}).get("lr"), (int, float)):
        raise ConfigError("ds_config optimizer.params.lr: missing; add e.g. \"optimizer\": {\"type\": \"AdamW\", "
                          "\"params\": {\"lr\": 1e-3}} (the peak LR of the YAML's warmup-cosine schedule)")
    return plan
