"""One float32 state dict from a DeepSpeed checkpoint folder of any ZeRO stage and world size, without DeepSpeed
engines or ranks (``CheckpointManager.fp32_weights`` calls it; nothing else reads DeepSpeed's files).

* ZeRO 1-3: the ranks' optimizer partitions hold the fp32 master weights; DeepSpeed's
  ``zero_to_fp32`` joins them for any world size (ZeRO-3's model files hold no weights at all).
* ZeRO 0: ``mp_rank_00_model_states.pt`` holds the module in the training precision and, with bf16/fp16,
  the mixed-precision optimizer's fp32 master copy per parameter group: one flat tensor (fused Adam's
  ``fp32_groups_flat``, parameters back to back) or a list of tensors (``torch_adam``'s unfused optimizer,
  ``fp32_groups``), both in group order; ``groups`` gives that order.

bf16 weights are the masters rounded, so where the module's weights are in the file, every master is
checked to round to them exactly: a group layout that does not match this code stops the export.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

MODEL_STATES = "mp_rank_00_model_states.pt"


def fp32_state_dict(folder: Path, groups: list[list[str]]) -> tuple[dict[str, torch.Tensor], str]:
    """(every tensor of the module state in float32, a note on where the weights came from).

    ``groups``: the names of the trained parameters in each optimizer parameter group, in order (ZeRO-0 only).
    """
    module_file = folder / MODEL_STATES
    saved = _load(module_file) if module_file.is_file() else {}
    module = saved.get("module") or {}
    if any(folder.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its chatter
            state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
        state, note = {k: v.float() for k, v in state.items()}, "fp32 master weights joined from the ZeRO partitions"
    elif module:
        state, note = _zero0(module, saved.get("optimizer") or {}, groups)
    else:
        raise FileNotFoundError(f"{folder}: neither {MODEL_STATES} nor ZeRO optimizer partitions; not a DeepSpeed "
                                "checkpoint")
    _check_rounding(state, module, folder)
    return state, note


def _load(path: Path) -> dict:
    # DeepSpeed pickles its config objects and the LR scheduler state: not loadable with weights_only.
    return torch.load(path, map_location="cpu", weights_only=False)


def _zero0(module: dict[str, torch.Tensor], optimizer: dict, groups: list[list[str]]) -> tuple[dict, str]:
    """The module's tensors, with every trained parameter replaced by its fp32 master when the file has them."""
    state = {k: v.float() for k, v in module.items()}
    flats = optimizer.get("fp32_groups_flat")
    if flats is None and optimizer.get("fp32_groups") is not None:  # unfused: one tensor per parameter
        flats = [torch.cat([t.reshape(-1) for t in group]) for group in optimizer["fp32_groups"]]
    if flats is None:
        dtype = next(iter(module.values())).dtype
        return state, ("the module's weights (fp32 training: they are the master copy)" if dtype == torch.float32
                       else f"the module's {dtype} weights: the checkpoint holds no fp32 master copy")
    if len(flats) != len(groups):
        raise ValueError(f"ZeRO-0 checkpoint has {len(flats)} fp32 parameter groups, this model's optimizer "
                         f"{len(groups)}: it was trained with another parameter grouping")
    for flat, names in zip(flats, groups):
        sizes = [module[n].numel() for n in names]
        if sum(sizes) != flat.numel():
            raise ValueError(f"ZeRO-0 fp32 group of {flat.numel()} values, its parameters hold {sum(sizes)}: the "
                             "checkpoint was trained with another parameter grouping")
        for name, part in zip(names, flat.float().split(sizes)):
            state[name] = part.view(module[name].shape).clone()  # (numel,) -> the parameter's shape
    return state, "fp32 master weights of the mixed-precision optimizer"


def _check_rounding(state: dict[str, torch.Tensor], module: dict[str, torch.Tensor], folder: Path) -> None:
    for name, saved in module.items():
        if saved.numel() and name in state and not torch.equal(state[name].to(saved.dtype), saved):
            raise ValueError(f"{folder}: the fp32 master of {name} does not round to the module's {saved.dtype} "
                             "weights; the optimizer layout does not match this model")
