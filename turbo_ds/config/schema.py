"""The config tree's schema: typed dataclasses, each field with a default and a one-line doc
(the string under it).

Only types and defaults live here: reading YAML and ``--set`` is ``loading``, cross-field
rules are ``validation`` (task-specific ones are the task's ``check_config``), and the
DeepSpeed JSON has its own reader, ``deepspeed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The names of turbo_ds.turbo.STRATEGIES, spelled here so that config imports nothing above it
# (tests/test_turbo_strategies.py keeps both lists equal).
STRATEGY_NAMES = ("random", "tube", "frame_balanced", "motion")


class ConfigError(ValueError):
    """A bad config: the message names the key and the fix, in one line."""


@dataclass
class ModelConfig:
    arch: Literal["videomae", "clip"] = "videomae"
    "encoder layout: videomae (mean pool, GELU) or clip (class token, ln_pre, QuickGELU; starts from a CLIP folder)"
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
    "videomae: space-time position embedding, fixed sinusoids (as VideoMAE) or learned (clip: always learned)"
    qkv_bias: bool = True
    "bias on the fused q/k/v projection (VideoMAE's q/v biases load into it, with a zero k bias)"
    norm_eps: float = 1e-6
    "LayerNorm epsilon (original VideoMAE 1e-6; transformers' VideoMAE configs 1e-12; CLIP 1e-5)"
    drop_path: float = 0.0
    "stochastic depth rate of the last block, increasing linearly from 0 over depth"
    activation_checkpointing: bool = False
    "recompute each block in the backward pass instead of storing its activations"
    compile: bool = False
    "torch.compile the encoder blocks: faster steps after a one-time compilation (cached on disk); needs a C++ compiler"
    pretrained: str | None = None
    "local weights to start from: a transformers VideoMAE or (model.arch=clip) CLIP folder, or an original VideoMAE .pth"
    generate_demo_clip: bool = False
    "demo: when model.pretrained is missing, write a random-init CLIP folder there (data_prep/make_demo_clip.py)"


@dataclass
class TurboConfig:
    strategy: Literal[STRATEGY_NAMES] = "random"
    "how kept tokens are chosen (turbo_ds.turbo.STRATEGIES): random, tube, frame_balanced, motion"
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
class RandAugConfig:
    n: int = 0
    "RandAugment ops per training clip, the same for every frame, applied on the device (0 = off)"
    m: float = 9.0
    "RandAugment magnitude on timm's scale of 10 (VideoMAE: rand-m7-n4)"


@dataclass
class DataConfig:
    train: str = "data/demo/train"
    "training dataset: a folder or URL (https://, s3://, gs://, pipe:) of tar shards + manifest.json"
    val: str = "data/demo/val"
    "validation dataset: a folder or URL (https://, s3://, gs://, pipe:) of tar shards + manifest.json"
    train_manifest: str | None = None
    "data.train's manifest.json (path or URL) when it is not next to the shards (pipe: commands, brace patterns)"
    val_manifest: str | None = None
    "data.val's manifest.json (path or URL) when it is not next to the shards (pipe: commands, brace patterns)"
    read_timeout_s: float = 30.0
    "seconds a shard or manifest read may wait for a byte before that attempt is abandoned and retried (all "
    "attempts of a stalled read must end within train.collective_timeout_s: checked at start-up)"
    read_retries: int = 5
    "retries of a failed or stalled read (backoff read_backoff_s, doubling); then the shard is skipped and counted"
    read_backoff_s: float = 1.0
    "wait before the first retry of a read, in seconds; it doubles with each further retry (at most 60 s)"
    max_skipped_shard_fraction: float = 0.1
    "stop with an error when a loader stream cannot read more than this fraction of its shards in one epoch"
    prefetch_shards: int = 2
    "remote shards each loader stream downloads whole ahead of the decoder (memory: about this + 1 shards per stream)"
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
    max_decode_pixels: int = 1920 * 1080
    "larger frames are downscaled (aspect kept) while decoded; videos over 16x this (8K at 1080p) are skipped, counted"
    decode_timeout_s: float = 60.0
    "a video still decoding after this many seconds is abandoned, skipped and counted (0 = no limit)"
    sampling: Literal["uniform", "dense"] = "uniform"
    "temporal sampling: one pick per equal segment of the whole video, or one window of consecutive picks"
    frame_stride: int = 4
    "dense sampling: frames between consecutive picks (the window spans (num_frames - 1) * stride + 1 frames)"
    randaug: RandAugConfig = field(default_factory=RandAugConfig)
    "RandAugment on the training device after the uint8 copy, e.g. {n: 4, m: 7} (n: 0 = off)"
    repeat_aug: int = 1
    "training clips per decoded video (each its own crop, flip, token draw and dense window; K samples of the batch)"
    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])
    "random resized crop: range of the crop area as a fraction of the frame"
    hflip_prob: float = 0.5
    "probability of a horizontal flip in training (0 for direction-sensitive labels)"
    mean: list[float] = field(default_factory=lambda: [0.45, 0.45, 0.45])
    "per-channel mean used to normalise pixels in [0, 1]"
    std: list[float] = field(default_factory=lambda: [0.225, 0.225, 0.225])
    "per-channel standard deviation used to normalise pixels"
    repeat_batch: bool = False
    "benchmark only: train on the loader's first batch over and over from memory (the step's speed without the loader)"


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
    deterministic: bool = False
    "ask torch for deterministic kernels: bitwise-exact resume on GPUs too (CPU kernels already are), slower"
    log_every: int = 20
    "log training metrics every N steps"
    eval_every: int = 500
    "evaluate every N steps (and always at the end)"
    ckpt_every: int = 500
    "save a checkpoint every N steps (and always at the end)"
    keep_last_checkpoints: int | None = None
    "keep only the newest N complete checkpoints (None = keep all); the newest complete one is never deleted"
    stop_at_step: int | None = None
    "checkpoint and stop this invocation at step N (split a run over several jobs); rerun to continue"
    collective_timeout_s: float = 300.0
    "seconds a collective waits for its peers once training runs (from the first step on); a lost node then ends the job"
    divergence_factor: float = 10.0
    "a step whose loss exceeds this x the median of recent good steps is bad and skipped (0 = only NaN/inf is bad)"
    max_bad_steps: int = 3
    "stop the run with an error after this many bad (skipped) steps in a row; nothing is saved from bad weights"
    ckpt_failure: Literal["stop", "continue"] = "stop"
    "a checkpoint that cannot be written (disk full, I/O error): stop with an error, or continue and retry at the next"
    log_samples: bool = False
    "write the keys of the clips every rank trained on at each step to <run_dir>/samples.jsonl (a data audit)"
    layer_decay: float = 1.0
    "layer-wise LR decay: block i of L gets lr * layer_decay^(L + 1 - i); 1.0 = off (VideoMAE fine-tuning: 0.75)"
    head_lr_scale: float = 1.0
    "lr multiplier of the parameters no pretrained weights initialised (new heads, projections, a new text tower)"
    check_finetune_lr: bool = True
    "refuse a run from model.pretrained whose JSON lr is over 2x the fine-tuning anchor's (a from-scratch lr)"
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
    dsl: bool = False
    "video_language: also report retrieval after dual-softmax re-scoring (eval/t2v_dsl_r1, ...; uses the whole test set)"
    zero_shot_data: str | None = None
    "video_language: an action dataset folder (shards + manifest with class_names) classified zero-shot at each eval"
    zero_shot_templates: list[str] | None = None
    "zero-shot prompts, each with {} for the class text, averaged per class (None = CLIP's 28 Kinetics templates)"


@dataclass
class TextConfig:
    tokenizer: str | None = None
    "sentencepiece .model (data_prep/train_tokenizer.py) or a local transformers tokenizer folder; None = text.pretrained's"
    train_tokenizer_if_missing: bool = False
    "at start-up, train a sentencepiece tokenizer on data.train's captions into text.tokenizer if it is missing"
    tokenizer_vocab_size: int = 8000
    "pieces of a tokenizer trained at start-up (shrinks, with a warning, when the captions support fewer)"
    tokenizer_type: Literal["unigram", "bpe"] = "unigram"
    "sentencepiece algorithm of a tokenizer trained at start-up (bpe keeps whole words of a small vocabulary)"
    max_length: int = 32
    "tokens per caption incl. bos/eos ([CLS]/[SEP]); shorter captions are padded, longer ones truncated and counted"
    pretrained: str | None = None
    "local transformers text-model folder (save_pretrained: BERT, CLIPModel, CLIPTextModel); None = a new BERT"
    width: int = 256
    "hidden size of a new BERT text encoder (ignored with text.pretrained)"
    depth: int = 4
    "layers of a new BERT text encoder (ignored with text.pretrained)"
    heads: int = 4
    "attention heads of a new BERT text encoder (ignored with text.pretrained)"
    dropout: float = 0.1
    "dropout on the text encoder's hidden states and attention (overrides a pretrained model's)"
    pooling: Literal["cls", "mean", "eos"] = "cls"
    "caption feature: output at the first token (bos / [CLS]), the mean over non-pad tokens, or the last one (CLIP: eos)"
    freeze: bool = False
    "freeze the whole text encoder (its projection head and the temperature still train)"
    freeze_layers: int = 0
    "freeze the text embeddings and the lowest N text encoder layers (0 = train all)"
    embed_dim: int = 256
    "shared video-text embedding size: the output of both projection heads (a CLIP folder's projection_dim)"
    temperature: float = 0.07
    "initial softmax temperature of the contrastive loss (a CLIPModel folder's logit_scale replaces it); learned, 1/T <= 100"


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


