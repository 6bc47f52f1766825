"""Memory planner: which frames per video, micro-batch and keep ratio fit in a memory budget.

    python -m turbo_ds.plan --config configs/breakfast_vitb.yaml --ds_config ds_configs/zero2_bf16.json --memory-gb 40

Nothing is estimated from formulas: every setting is measured by a few real training steps
(forward + backward + optimizer step of the task's model on synthetic inputs of the right
shape, as DeepSpeed runs them) in a fresh subprocess, and the largest fitting frames,
micro-batch or keep ratio is searched for over those measurements.

    measure     one setting's training steps in a fresh child process and its memory need
                (Setting, Measurement, measure, run_steps; CUDA: max allocated, CPU: peak RSS growth)
    search      Planner (largest frames / micro-batch / keep ratio that fits, each setting measured
                once), PlanError, KEEP_RATIOS, and pick_keep_ratio over AUTO_KEEP_RATIOS, which
                serves ``turbo.keep_ratio: auto``
    cli         python -m turbo_ds.plan (parse_args, main, the table); __main__ runs it

Imports go one way: cli -> search -> measure; neither measure nor search imports this package.
"""

# ``measure`` here is the function (as before the split); the module is ``turbo_ds.plan.measure`` in sys.modules,
# so ``from turbo_ds.plan.measure import ...`` still reaches it.
from turbo_ds.plan.measure import Measurement, Setting, measure, run_steps, with_setting
from turbo_ds.plan.search import AUTO_KEEP_RATIOS, KEEP_RATIOS, Planner, PlanError, frame_unit, pick_keep_ratio
from turbo_ds.plan.cli import main

__all__ = ["AUTO_KEEP_RATIOS", "KEEP_RATIOS", "Measurement", "PlanError", "Planner", "Setting", "frame_unit", "main",
           "measure", "pick_keep_ratio", "run_steps", "with_setting"]
