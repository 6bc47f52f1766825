"""Cross-field rules that types alone cannot express, one function per config section.

Nothing here reads a file or knows a task: a task adds its own rules (and checks the files
it will read) in its ``check_config``, which the entry points run after these
(``turbo_ds.tasks.checked``).
"""

from __future__ import annotations

from turbo_ds.config.schema import (Config, ConfigError, DataConfig, EvalConfig, LongVideoConfig, ModelConfig,
                                    TextConfig, TrainConfig, TurboConfig)


def _at_least(minimum: int, values: dict[str, int | float]) -> None:
    for key, value in values.items():
        if value < minimum:
            raise ConfigError(f"{key}={value}: must be at least {minimum}")


def check_model(m: ModelConfig) -> None:
    _at_least(1, {"model.depth": m.depth, "model.width": m.width})
    if not 0 <= m.drop_path < 1:
        raise ConfigError(f"model.drop_path={m.drop_path}: must be in [0, 1)")
    if m.norm_eps <= 0:
        raise ConfigError(f"model.norm_eps={m.norm_eps}: must be > 0")
    if m.img_size % m.patch_size:
        raise ConfigError(f"model.img_size={m.img_size}: must be a multiple of model.patch_size={m.patch_size}")
    if m.num_frames % m.tubelet_size:
        raise ConfigError(f"model.num_frames={m.num_frames}: must be a multiple of model.tubelet_size={m.tubelet_size}")
    if m.width % m.heads:
        raise ConfigError(f"model.width={m.width}: must be divisible by model.heads={m.heads}")
    if m.generate_demo_clip and m.arch != "clip":
        raise ConfigError(f"model.generate_demo_clip: writes a CLIP folder into model.pretrained for model.arch=clip "
                          f"(is {m.arch}); set model.arch=clip or drop model.generate_demo_clip")


def check_turbo(t: TurboConfig, train_steps: int) -> None:
    if t.keep_ratio == "auto":
        if t.memory_budget_gb is None or t.memory_budget_gb <= 0:
            raise ConfigError(f"turbo.memory_budget_gb={t.memory_budget_gb}: turbo.keep_ratio=auto needs one rank's "
                              "memory budget in GiB, e.g. --set turbo.memory_budget_gb=40")
        if t.schedule != "constant" or t.full_token_steps:
            raise ConfigError("turbo.keep_ratio=auto: picks one constant ratio; set turbo.schedule=constant and "
                              "turbo.full_token_steps=0, or give turbo.keep_ratio as a number")
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
    if not 0 <= t.full_token_steps < train_steps:
        raise ConfigError(f"turbo.full_token_steps={t.full_token_steps}: must be in [0, train.steps={train_steps})")


def check_data(d: DataConfig) -> None:
    _at_least(1, {"data.shuffle_buffer": d.shuffle_buffer, "data.prefetch_factor": d.prefetch_factor,
                  "data.frame_stride": d.frame_stride, "data.repeat_aug": d.repeat_aug})
    _at_least(0, {"data.num_workers": d.num_workers, "data.decode_threads": d.decode_threads,
                  "data.decoded_cache_clips": d.decoded_cache_clips})
    if d.max_decode_pixels < 64 * 64:
        raise ConfigError(f"data.max_decode_pixels={d.max_decode_pixels}: must be at least 4096 (64x64); "
                          "the default 2073600 is 1920x1080")
    if not 0 <= d.randaug.n <= 16 or not 0 <= d.randaug.m <= 10:
        raise ConfigError(f"data.randaug={{n: {d.randaug.n}, m: {d.randaug.m}}}: needs 0 <= n <= 16 ops "
                          "(0 = off) and 0 <= m <= 10 (timm's magnitude scale)")
    if d.decode_timeout_s < 0:
        raise ConfigError(f"data.decode_timeout_s={d.decode_timeout_s}: must be >= 0 (0 = no limit)")
    if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
        raise ConfigError(f"data.crop_scale={d.crop_scale}: must be [min, max] with 0 < min <= max <= 1")
    if len(d.mean) != 3 or len(d.std) != 3:
        raise ConfigError("data.mean and data.std: need 3 values (RGB)")
    _at_least(0, {"data.read_retries": d.read_retries, "data.read_backoff_s": d.read_backoff_s,
                  "data.prefetch_shards": d.prefetch_shards})
    if d.read_timeout_s <= 0:
        raise ConfigError(f"data.read_timeout_s={d.read_timeout_s}: must be > 0 (seconds without a byte before a retry)")
    if not 0 <= d.max_skipped_shard_fraction <= 1:
        raise ConfigError(f"data.max_skipped_shard_fraction={d.max_skipped_shard_fraction}: must be in [0, 1] "
                          "(0: any shard that cannot be read stops the run)")


def check_train(tr: TrainConfig) -> None:
    _at_least(1, {"train.steps": tr.steps, "train.log_every": tr.log_every, "train.eval_every": tr.eval_every,
                  "train.ckpt_every": tr.ckpt_every})
    if tr.keep_last_checkpoints is not None:
        _at_least(1, {"train.keep_last_checkpoints": tr.keep_last_checkpoints})
    if not 0 <= tr.warmup_steps < tr.steps:
        raise ConfigError(f"train.warmup_steps={tr.warmup_steps}: must be in [0, train.steps={tr.steps})")
    if not 0 < tr.layer_decay <= 1:
        raise ConfigError(f"train.layer_decay={tr.layer_decay}: must be in (0, 1]; 1.0 turns it off")
    if not 0 < tr.head_lr_scale <= 1000:
        raise ConfigError(f"train.head_lr_scale={tr.head_lr_scale}: must be in (0, 1000]; 1.0 turns it off")
    _at_least(0, {"train.mixup_alpha": tr.mixup_alpha, "train.cutmix_alpha": tr.cutmix_alpha})
    _at_least(1, {"train.max_bad_steps": tr.max_bad_steps})
    if tr.divergence_factor != 0 and tr.divergence_factor <= 1:
        raise ConfigError(f"train.divergence_factor={tr.divergence_factor}: must be > 1 (a loss this many times the "
                          "recent median is bad), or 0 to flag only non-finite losses")
    if not 0 <= tr.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing={tr.label_smoothing}: must be in [0, 1)")
    if tr.collective_timeout_s <= 0:
        raise ConfigError(f"train.collective_timeout_s={tr.collective_timeout_s}: must be > 0 seconds "
                          "(a few minutes on a cluster: longer than the slowest checkpoint save)")


def check_eval(e: EvalConfig) -> None:
    _at_least(1, {"eval.batch_size": e.batch_size, "eval.num_clips": e.num_clips})
    if e.num_crops not in (1, 3):
        raise ConfigError(f"eval.num_crops={e.num_crops}: must be 1 (centre) or 3 (start/centre/end)")
    if e.zero_shot_templates is not None:
        bad = [t for t in e.zero_shot_templates if t.count("{}") != 1]
        if bad or not e.zero_shot_templates:
            raise ConfigError(f"eval.zero_shot_templates={bad or []}: every template needs exactly one {{}} for the "
                              "class text, e.g. 'a video of {}.'; null uses CLIP's Kinetics templates")


def check_text(x: TextConfig) -> None:
    _at_least(1, {"text.width": x.width, "text.depth": x.depth, "text.heads": x.heads, "text.embed_dim": x.embed_dim})
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


def check_long_video(lv: LongVideoConfig) -> None:
    _at_least(1, {"long_video.frames": lv.frames, "long_video.temporal_heads": lv.temporal_heads})
    _at_least(0, {"long_video.temporal_depth": lv.temporal_depth,
                  "long_video.eval_chunk_segments": lv.eval_chunk_segments})


def validate(cfg: Config) -> None:
    """Every section's rules (the task's own come from ``Task.check_config``)."""
    check_model(cfg.model)
    check_turbo(cfg.turbo, cfg.train.steps)
    check_data(cfg.data)
    check_train(cfg.train)
    check_eval(cfg.eval)
    check_text(cfg.text)
    check_long_video(cfg.long_video)
    if cfg.train.head_lr_scale != 1 and not (cfg.model.pretrained or cfg.text.pretrained):
        raise ConfigError(f"train.head_lr_scale={cfg.train.head_lr_scale}: scales the lr of what pretrained weights did "
                          "not initialise, but neither model.pretrained nor text.pretrained is set; use 1.0 (or change "
                          "the JSON's lr)")
