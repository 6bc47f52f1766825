#!/usr/bin/env python
"""bench/gpu_check.sh's env step: what this machine trains on, as torch and DeepSpeed see it.

    python bench/gpu_env.py OUT.json

Prints what training would use (``turbo_ds.engine.distributed.usable_devices``, which train.py runs at
start too) and writes versions and the GPUs torch counts (a CUDA_VISIBLE_DEVICES subset and MIG
instances as training sees them) to OUT.json. When nvidia-smi lists GPUs that torch cannot use, it
exits 1 with one line saying why, and writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout

import torch  # noqa: E402

from turbo_ds.config import ConfigError  # noqa: E402
from turbo_ds.engine.distributed import driver_gpus, usable_devices  # noqa: E402


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    try:
        devices = usable_devices(get_accelerator().device_name())
    except ConfigError as e:
        sys.exit(f"gpu_check: {e}")
    count = torch.cuda.device_count()
    print(devices)
    Path(sys.argv[1]).write_text(json.dumps({
        "torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__,
        "devices": devices, "driver_gpus": driver_gpus(), "gpu_count": count,
        "gpus": [torch.cuda.get_device_name(i) for i in range(count)],
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None}, indent=1))


if __name__ == "__main__":
    main()
