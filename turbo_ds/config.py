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
    qkv_bias: bool = True
    "bias on the fused q/k/v projection (VideoMAE's q/v biases load into it, with a zero k bias)"
    norm_eps: float = 1e-6
    "LayerNorm epsilon (original VideoMAE 1e-6; transformers' VideoMAE configs 1e-12)"
    drop_path: float = 0.0
    "stochastic depth rate of the last block, increasing linearly from 0 over depth"
    activation_checkpointing: bool = False
    "recompute each block in the backward pass instead of storing its activations"
    pretrained: str | None = None
    "local weights to start from: a transformers VideoMAE directory or an original VideoMAE .pth"


@dataclass
class TurboConfig:
    strategy: Literal["random", "tube", "frame_balanced", "motion"] = "random"
    "how kept tokens are chosen: uniform, same spatial set at every time step, equal share per time step, motion-weighted"
    keep_ratio: float | Literal["auto"] = 0.25
    "training fraction of space-time tokens in (0, 1] (a ramp's start), or auto: the largest that fits memory_budget_gb"
    memory_budget_gb: float | None = None
    "keep_ratio: auto only: one rank's memory budget in GiB (GPU: max_memory_allocated; CPU: peak RSS growth)"
    eval_keep_ratio: float = 1.0
    "fraction of tokens kept at evaluation, in (0, 1]"
    motion_temperature: float = 1.0
    "motion: Gumbel top-k temperature on motion scores (normalised to mean 1 per clip); 0 = pure top-k"
    motion_mix: float = 0.0
    "motion: fraction of the kept tokens picked uniformly at random among the rest, in [0, 1]"
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    "training keep ratio over steps: constant keep_ratio, or a ramp from keep_ratio to keep_ratio_end"
    keep_ratio_end: float | None = None
    "keep ratio at the end of a linear/cosine ramp, in (0, 1]; required by those schedules"
    ramp_steps: int = 0
    "steps of the linear/cosine ramp (0 = every step before the full-token phase)"
    full_token_steps: int = 0
    "the last N training steps keep every token (unmasked tuning, as in FLIP)"


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
    prefetch_factor: int = 2
    "batches each loader worker prepares ahead of the training loop"
    resampled: bool = False
    "draw training shards with replacement per rank/worker (multi-node: any shard count fits any world size)"
    decoded_cache_clips: int = 0
    "fully decoded videos kept in memory per loader stream (for tiny datasets; 0 = off: decode only picked frames)"
    decode_threads: int = 1
    "FFmpeg decoder threads per loader process (1 is fastest when workers fill the cores; 0 = FFmpeg picks)"
    sampling: Literal["uniform", "dense"] = "uniform"
    "temporal sampling: one pick per equal segment of the whole video, or one window of consecutive picks"
    frame_stride: int = 4
    "dense sampling: frames between consecutive picks (the window spans (num_frames - 1) * stride + 1 frames)"
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
    "videos per evaluation batch on each rank"
    num_clips: int = 1
    "temporal clips per video, evenly spaced (views = num_clips x num_crops; scores averaged over views)"
    num_crops: int = 1
    "spatial crops per clip: 1 = centre, 3 = start/centre/end of the long side"


@dataclass
class TextConfig:
    tokenizer: str | None = None
    "sentencepiece .model (data_prep/train_tokenizer.py) or a local transformers tokenizer folder (video_language)"
    train_tokenizer_if_missing: bool = False
    "at start-up, train a sentencepiece tokenizer on data.train's captions into text.tokenizer if it is missing"
    tokenizer_vocab_size: int = 8000
    "pieces of a tokenizer trained at start-up (shrinks, with a warning, when the captions support fewer)"
    tokenizer_type: Literal["unigram", "bpe"] = "unigram"
    "sentencepiece algorithm of a tokenizer trained at start-up (bpe keeps whole words of a small vocabulary)"
    max_length: int = 32
    "tokens per caption incl. bos/eos ([CLS]/[SEP]); shorter captions are padded, longer ones truncated and counted"
    pretrained: str | None = None
    "local transformers text-model folder (save_pretrained output, e.g. BERT); None = a new BERT from width/depth/heads"
    width: int = 256
    "hidden size of a new BERT text encoder (ignored with text.pretrained)"
    depth: int = 4
    "layers of a new BERT text encoder (ignored with text.pretrained)"
    heads: int = 4
    "attention heads of a new BERT text encoder (ignored with text.pretrained)"
    dropout: float = 0.1
    "dropout on the text encoder's hidden states and attention (overrides a pretrained model's)"
    pooling: Literal["cls", "mean"] = "cls"
    "caption feature: output at the first token (bos / [CLS]) or the mean over non-pad tokens"
    freeze: bool = False
    "freeze the whole text encoder (its projection head and the temperature still train)"
    freeze_layers: int = 0
    "freeze the text embeddings and the lowest N text encoder layers (0 = train all)"
    embed_dim: int = 256
    "shared video-text embedding size: the output of both projection heads"
    temperature: float = 0.07
    "initial softmax temperature of the contrastive loss; learned, with 1/temperature clamped to at most 100"


@dataclass
class LongVideoConfig:
    frames: int = 64
    "frames F per video, sampled uniformly over the whole video (segments mode: a multiple of model.num_frames)"
    mode: Literal["segments", "joint"] = "segments"
    "segments: a shared encoder per model.num_frames-frame segment + temporal Transformer; joint: one encoder over all F"
    temporal_depth: int = 2
    "segments mode: blocks of the temporal Transformer over the segment embeddings (0 = pooling only)"
    temporal_heads: int = 4
    "segments mode: attention heads of the temporal Transformer (must divide model.width)"
    pooling: Literal["cls", "mean", "concat"] = "cls"
    "segments mode: clip feature from a learned CLS token, the mean over segments, or all segments in order (head sees each)"
    eval_chunk_segments: int = 0
    "segments mode: encode this many segments of each clip at a time in evaluation (0 = all; same output, less memory)"


@dataclass
class Config:
    task: Literal["action_cls", "video_language", "long_video"] = "action_cls"
    "which task to train"
    run_dir: str = "runs/default"
    "run directory: resolved configs, metrics.jsonl, checkpoints; reused to resume"
    model: ModelConfig = field(default_factory=ModelConfig)
    turbo: TurboConfig = field(default_factory=TurboConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    text: TextConfig = field(default_factory=TextConfig)
    long_video: LongVideoConfig = field(default_factory=LongVideoConfig)


# ---------------------------------------------------------------------------- building


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for member in (a for a in typing.get_args(tp) if a is not type(None)):
            try:
                return _check_type(key, value, member)
            except ConfigError as e:
                errors.append(str(e).split(": ", 1)[1])
        raise ConfigError(f"{key}={value!r}: " + "; or ".join(errors))
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


def _validate_text(cfg: Config) -> None:
    """text.*: ranges always; the tokenizer and weights files only when the task uses them."""
    x = cfg.text
    for key, value in (("text.width", x.width), ("text.depth", x.depth), ("text.heads", x.heads),
                       ("text.embed_dim", x.embed_dim)):
        if value < 1:
            raise ConfigError(f"{key}={value}: must be at least 1")
    if x.width % x.heads:
        raise ConfigError(f"text.width={x.width}: must be divisible by text.heads={x.heads}")
    if x.max_length < 3:
        raise ConfigError(f"text.max_length={x.max_length}: must be at least 3 (bos, one token, eos)")
    if x.tokenizer_vocab_size <= 4:
        raise ConfigError(f"text.tokenizer_vocab_size={x.tokenizer_vocab_size}: must exceed the 4 special pieces")
    if not 0 <= x.dropout < 1:
        raise ConfigError(f"text.dropout={x.dropout}: must be in [0, 1)")
    if x.temperature < 0.01:
        raise ConfigError(f"text.temperature={x.temperature}: must be >= 0.01 (1/temperature is clamped to 100)")
    if x.freeze_layers < 0 or (x.pretrained is None and x.freeze_layers > x.depth):
        raise ConfigError(f"text.freeze_layers={x.freeze_layers}: must be in [0, text.depth={x.depth}]")
    if cfg.task != "video_language":
        return
    if x.tokenizer is None:
        raise ConfigError("text.tokenizer: required by task=video_language; give a sentencepiece .model or a "
                          "transformers tokenizer folder")
    found = Path(x.tokenizer).exists() or Path(x.tokenizer + ".model").is_file()
    if not found and not x.train_tokenizer_if_missing:
        prefix = x.tokenizer.removesuffix(".model")
        raise ConfigError(f"text.tokenizer={x.tokenizer}: no such file; build it with python "
                          f"data_prep/train_tokenizer.py --out {prefix} --shards {cfg.data.train}, set "
                          "text.train_tokenizer_if_missing=true, or give a local transformers tokenizer folder")
    if x.pretrained is not None and not (Path(x.pretrained) / "config.json").is_file():
        raise ConfigError(f"text.pretrained={x.pretrained}: no config.json there; give a local transformers "
                          "model folder (model.save_pretrained(DIR))")


def _validate_long_video(cfg: Config) -> None:
    """long_video.*: ranges always; how frames split into segments only when the task uses them."""
    lv, m = cfg.long_video, cfg.model
    for key, value in (("long_video.frames", lv.frames), ("long_video.temporal_heads", lv.temporal_heads)):
        if value < 1:
            raise ConfigError(f"{key}={value}: must be at least 1")
    for key, value in (("long_video.temporal_depth", lv.temporal_depth),
                       ("long_video.eval_chunk_segments", lv.eval_chunk_segments)):
        if value < 0:
            raise ConfigError(f"{key}={value}: must be at least 0")
    if cfg.task != "long_video":
        return
    if lv.mode == "segments":
        if lv.frames % m.num_frames:
            raise ConfigError(f"long_video.frames={lv.frames}: must be a multiple of model.num_frames={m.num_frames} "
                              f"(segments mode cuts the clip into segments of model.num_frames frames), e.g. "
                              f"{max(1, lv.frames // m.num_frames) * m.num_frames}")
        if m.width % lv.temporal_heads:
            raise ConfigError(f"long_video.temporal_heads={lv.temporal_heads}: must divide model.width={m.width}")
    elif lv.frames % m.tubelet_size:
        raise ConfigError(f"long_video.frames={lv.frames}: must be a multiple of model.tubelet_size={m.tubelet_size} "
                          "(joint mode encodes all frames as one clip)")
    if cfg.data.sampling != "uniform":
        raise ConfigError(f"data.sampling={cfg.data.sampling}: task=long_video samples frames uniformly over the "
                          "whole video; set data.sampling=uniform")


def _validate_auto_keep_ratio(cfg: Config) -> None:
    """keep_ratio: auto measures one constant ratio against a budget, for the tasks the planner can measure."""
    t = cfg.turbo
    if t.memory_budget_gb is None or t.memory_budget_gb <= 0:
        raise ConfigError(f"turbo.memory_budget_gb={t.memory_budget_gb}: turbo.keep_ratio=auto needs one rank's "
                          "memory budget in GiB, e.g. --set turbo.memory_budget_gb=40")
    if t.schedule != "constant" or t.full_token_steps:
        raise ConfigError("turbo.keep_ratio=auto: picks one constant ratio; set turbo.schedule=constant and "
                          "turbo.full_token_steps=0, or give turbo.keep_ratio as a number")
    if cfg.task not in ("action_cls", "long_video"):
        raise ConfigError(f"turbo.keep_ratio=auto: task={cfg.task} cannot be measured by the memory planner "
                          "(action_cls, long_video); give turbo.keep_ratio as a number")


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    _validate_text(cfg)
    _validate_long_video(cfg)
    m, t, d, tr = cfg.model, cfg.turbo, cfg.data, cfg.train
    if t.keep_ratio == "auto":
        _validate_auto_keep_ratio(cfg)
    for key, ratio in (("turbo.keep_ratio", t.keep_ratio), ("turbo.eval_keep_ratio", t.eval_keep_ratio)):
        if ratio != "auto" and not 0 < ratio <= 1:
            raise ConfigError(f"{key}={ratio}: must be in (0, 1]; 0.25 keeps a quarter of the tokens")
    if t.schedule != "constant" and t.keep_ratio_end is None:
        raise ConfigError(f"turbo.keep_ratio_end: required by turbo.schedule={t.schedule}; set the ratio the ramp ends at")
    if t.keep_ratio_end is not None and not 0 < t.keep_ratio_end <= 1:
        raise ConfigError(f"turbo.keep_ratio_end={t.keep_ratio_end}: must be in (0, 1]")
    if not 0 <= t.motion_mix <= 1:
        raise ConfigError(f"turbo.motion_mix={t.motion_mix}: must be in [0, 1] (fraction of kept tokens picked at random)")
    if t.motion_temperature < 0:
        raise ConfigError(f"turbo.motion_temperature={t.motion_temperature}: must be >= 0 (0 = pure top-k)")
    if t.ramp_steps < 0:
        raise ConfigError(f"turbo.ramp_steps={t.ramp_steps}: must be >= 0 (0 = ramp over the whole run)")
    if not 0 <= t.full_token_steps < tr.steps:
        raise ConfigError(f"turbo.full_token_steps={t.full_token_steps}: must be in [0, train.steps={tr.steps})")
    if not 0 <= m.drop_path < 1:
        raise ConfigError(f"model.drop_path={m.drop_path}: must be in [0, 1)")
    if m.norm_eps <= 0:
        raise ConfigError(f"model.norm_eps={m.norm_eps}: must be > 0")
    if m.pretrained is not None and not Path(m.pretrained).exists():
        raise ConfigError(f"model.pretrained={m.pretrained}: no such file or directory; give a local transformers "
                          "VideoMAE directory or a VideoMAE .pth")
    if m.img_size % m.patch_size:
        raise ConfigError(f"model.img_size={m.img_size}: must be a multiple of model.patch_size={m.patch_size}")
    if m.num_frames % m.tubelet_size:
        raise ConfigError(f"model.num_frames={m.num_frames}: must be a multiple of model.tubelet_size={m.tubelet_size}")
    if m.width % m.heads:
        raise ConfigError(f"model.width={m.width}: must be divisible by model.heads={m.heads}")
    positive = {"train.steps": tr.steps, "train.log_every": tr.log_every, "train.eval_every": tr.eval_every,
                "train.ckpt_every": tr.ckpt_every, "eval.batch_size": cfg.eval.batch_size,
                "model.depth": m.depth, "model.width": m.width, "data.shuffle_buffer": d.shuffle_buffer,
                "data.prefetch_factor": d.prefetch_factor, "data.frame_stride": d.frame_stride,
                "eval.num_clips": cfg.eval.num_clips}
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
    for key, value in (("data.num_workers", d.num_workers), ("data.decode_threads", d.decode_threads),
                       ("data.decoded_cache_clips", d.decoded_cache_clips)):
        if value < 0:
            raise ConfigError(f"{key}={value}: must be at least 0")
    if cfg.eval.num_crops not in (1, 3):
        raise ConfigError(f"eval.num_crops={cfg.eval.num_crops}: must be 1 (centre) or 3 (start/centre/end)")
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
