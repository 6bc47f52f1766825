"""Metrics out through DeepSpeed's monitors: the JSON's ``tensorboard``, ``wandb``, ``csv_monitor`` (and ``comet``).

Every record ``RunLog`` writes to metrics.jsonl (the source of truth) also goes, from rank 0,
to each enabled monitor, one scalar per numeric key with the training step as x-axis.
The monitors are DeepSpeed's own (``MonitorMaster``, configured from the JSON's sections as
DeepSpeed documents them: events under ``output_path/job_name``, W&B ``project``/``group``/
``team``). The engine gets the JSON without these sections (``DeepSpeedConfig.engine_config``):
its own events count samples, not steps, and a W&B run drops any step lower than one it has seen.
"""

from __future__ import annotations

import os
from typing import Any


class Monitors:
    """DeepSpeed's MonitorMaster for the enabled ``sections``; rank 0 only (built after DeepSpeed's comm init)."""

    def __init__(self, sections: dict[str, dict[str, Any]], configs: dict[str, Any] | None = None):
        from deepspeed.monitor.config import get_monitor_config
        from deepspeed.monitor.monitor import MonitorMaster

        self.master = MonitorMaster(get_monitor_config(sections))
        if self.master.wandb_monitor is not None and configs:
            import wandb

            wandb.config.update(configs, allow_val_change=True)  # the run's resolved YAML and JSON, as in run dir

    def destinations(self) -> list[str]:
        """Where each enabled monitor writes, for the log."""
        m, out = self.master, []
        if m.tb_monitor is not None:
            out.append(f"tensorboard {m.tb_monitor.summary_writer.log_dir}")
        if m.csv_monitor is not None:
            out.append(f"csv_monitor {m.csv_monitor.log_dir}")
        if m.wandb_monitor is not None:
            import wandb

            out.append(f"wandb project {m.wandb_monitor.project} run {wandb.run.id} "
                       f"({os.environ.get('WANDB_MODE', 'online')}, {wandb.run.dir})")
        if m.comet_monitor is not None:
            out.append("comet")
        return out

    def write(self, record: dict[str, Any]) -> None:
        """Every numeric value of ``record`` (bools as 0/1) at x = ``record["step"]``; not ``wall_s``, the
        record's time (each monitor stamps its events with the wall-clock itself)."""
        step = record["step"]
        events = [(key, float(value), step) for key, value in record.items()
                  if key not in ("step", "wall_s") and isinstance(value, (int, float))]
        self.master.write_events(events)

    def rewind(self, step: int) -> None:
        """A resumed run: TensorBoard hides the events past ``step`` that the dead run wrote (as metrics.jsonl drops
        them). W&B and CSV cannot take events back; a W&B resume is a new run."""
        tb = self.master.tb_monitor
        if tb is not None and tb.summary_writer is not None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = tb.summary_writer.log_dir
            tb.summary_writer.close()
            tb.summary_writer = SummaryWriter(log_dir=log_dir, purge_step=step + 1)

    def close(self) -> None:
        m = self.master
        if m.tb_monitor is not None and m.tb_monitor.summary_writer is not None:
            m.tb_monitor.summary_writer.close()
        if m.wandb_monitor is not None:
            import wandb

            wandb.finish()
