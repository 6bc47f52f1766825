"""The ground floor: it imports nothing else of turbo_ds.

Typed config tree: YAML recipe + ``--set key=value`` overrides, validated before any compute.

    schema      the dataclasses (every field typed, with a default and a one-line doc)
    loading     YAML + overrides -> the typed tree (unknown keys and wrong types stop here)
    validation  cross-field rules per section (a task's own: Task.check_config, run by the entry points)
    deepspeed   the one reader of the DeepSpeed JSON, and the batch plan it implies
"""

from turbo_ds.config.deepspeed import BatchPlan, DeepSpeedConfig, check_finetune_lr, load_ds_config, plan_batches
from turbo_ds.config.loading import config_from_dict, load_config, to_dict
from turbo_ds.config.schema import (Config, ConfigError, DataConfig, EvalConfig, LongVideoConfig, ModelConfig,
                                    TextConfig, TrainConfig, TurboConfig)
from turbo_ds.config.validation import validate

__all__ = ["BatchPlan", "Config", "ConfigError", "DataConfig", "DeepSpeedConfig", "EvalConfig", "LongVideoConfig",
           "ModelConfig", "TextConfig", "TrainConfig", "TurboConfig", "check_finetune_lr", "config_from_dict",
           "load_config", "load_ds_config", "plan_batches", "to_dict", "validate"]
