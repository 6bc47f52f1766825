"""The search: the largest frames, micro-batch or keep ratio whose measured training step fits the budget.

Memory grows with frames, micro-batch and keep ratio (nearly affinely in the first two),
so the largest fitting value is searched for: grow where a line through the needs measured
so far meets the budget, then narrow the bracket the same way, bisecting when that stalls
(about 4-6 measurements per search). ``Planner`` measures each setting at most once (through
``measure.measure``, or a model of memory in tests); ``pick_keep_ratio`` serves
``turbo.keep_ratio: auto`` (a bisection over ``AUTO_KEEP_RATIOS``).
"""

from __future__ import annotations

from typing import Callable

from turbo_ds.config import Config, ConfigError, DeepSpeedConfig, plan_batches
from turbo_ds.plan.measure import Measurement, Setting, default_device, measure, spare_gb
from turbo_ds.tasks import task_type

KEEP_RATIOS = (1.0, 0.5, 0.25, 0.125)
AUTO_KEEP_RATIOS = (1.0, 0.75, 0.5, 0.375, 0.25, 0.1875, 0.125)  # turbo.keep_ratio: auto picks among these


class PlanError(ConfigError):
    """No setting fits, or the config cannot be planned; the message names the smallest setting's need."""


class Planner:
    """Measures settings of one config against one budget, each at most once.

    ``measure_fn`` (signature of ``measure``) is what measures one setting; tests pass a model of memory.
    """

    def __init__(self, cfg: Config, ds: DeepSpeedConfig, budget_gb: float, device: str = "cpu", steps: int = 3,
                 ranks: int = 1, num_classes: int = 10, log: Callable[[str], None] | None = None,
                 measure_fn: Callable[..., Measurement] | None = None):
        if not task_type(cfg.task).plannable:
            raise PlanError(f"task={cfg.task}: the memory planner cannot measure this task (it measures tasks "
                            "trained on labelled clips)")
        self.cfg, self.ds, self.budget_gb = cfg, ds, budget_gb
        self.device, self.steps, self.ranks, self.num_classes = device, steps, ranks, num_classes
        self.log = log or (lambda msg: None)
        self.measure_fn = measure_fn or measure
        self.results: dict[Setting, Measurement] = {}

    def _measure(self, setting: Setting, limit_gb: float | None = None) -> Measurement:
        return self.measure_fn(self.cfg, self.ds, setting, self.budget_gb, self.device, self.steps, self.ranks,
                               self.num_classes, limit_gb)

    def __call__(self, setting: Setting) -> Measurement:
        if setting not in self.results:
            m = self._measure(setting)
            self.log(f"  {setting.frames} frames x micro {setting.micro} @ keep {setting.keep_ratio:g}: "
                     + (f"{m.peak_gb:.2f} GB, {m.step_s:.2f} s/step" if m.peak_gb is not None else m.note)
                     + ("" if m.fits else "  (does not fit)"))
            self.results[setting] = m
        return self.results[setting]

    def largest(self, make: Callable[[int], Setting], unit: int, cap: int) -> Measurement | None:
        """The fitting measurement of the largest multiple of ``unit`` up to ``cap``, or None.

        Memory is close to affine in frames and micro-batch, so the next size tried is where a
        line through the measured needs meets the budget (extrapolating at most 4x); when that
        does not at least halve the open interval, the next try bisects it.
        """
        top = cap // unit
        lo, hi = 0, top + 1  # multiples of unit: lo fits (0: none yet), hi does not (top + 1: not tried)
        needs: dict[int, float | None] = {}
        k, bisect = 1, False
        while hi - lo > 1:
            m = self(make(k * unit))
            needs[k] = m.peak_gb
            width = hi - lo
            lo, hi = (k, hi) if m.fits else (lo, k)
            bisect = hi <= top and not bisect and 2 * (hi - lo) > width  # bracketed, slow progress: bisect next
            k = (lo + hi) // 2 if bisect else self._guess(lo, hi, needs, top)
        return self(make(lo * unit)) if lo else None

    def _guess(self, lo: int, hi: int, needs: dict[int, float | None], top: int) -> int:
        """Where an affine fit of the measured needs reaches the budget, inside (lo, hi)."""
        if lo == 0:
            return hi // 2
        fits = sorted(k for k in needs if k <= lo and needs[k] is not None)
        if hi <= top and needs.get(hi) is not None:
            (k0, n0), (k1, n1) = (lo, needs[lo]), (hi, needs[hi])
        elif len(fits) >= 2:  # extrapolate from a baseline of at least half of lo: neighbours' noise can flip the slope
            k0 = max((k for k in fits if k <= lo // 2), default=fits[0])
            (k0, n0), (k1, n1) = (k0, needs[k0]), (lo, needs[lo])
        else:
            return min(2 * lo, hi - 1, top)  # one point: double
        slope = (n1 - n0) / (k1 - k0)
        guess = lo + int((self.budget_gb - needs[lo]) / slope) if slope > 0 else 4 * lo
        return max(lo + 1, min(guess, 4 * lo, hi - 1, top))

    def max_frames(self, keep_ratio: float, micro: int, unit: int, cap: int) -> Measurement | None:
        return self.largest(lambda f: Setting(f, micro, keep_ratio), unit, cap)

    def max_micro(self, keep_ratio: float, frames: int, cap: int) -> Measurement | None:
        return self.largest(lambda b: Setting(frames, b, keep_ratio), 1, cap)

    def best_keep_ratio(self, frames: int, micro: int, ratios: tuple[float, ...] = AUTO_KEEP_RATIOS) -> Measurement:
        """The fitting measurement of the largest ratio in ``ratios`` (bisection: memory grows with the ratio)."""
        ratios = sorted(ratios, reverse=True)
        lo, hi = -1, len(ratios)  # ratios[hi] fits, ratios[lo] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self(Setting(frames, micro, ratios[mid])).fits:
                hi = mid
            else:
                lo = mid
        if hi == len(ratios):
            raise self.nothing_fits(Setting(frames, micro, ratios[-1]))
        return self(Setting(frames, micro, ratios[hi]))

    def nothing_fits(self, smallest: Setting) -> PlanError:
        """The error for a budget that ``smallest`` (the least demanding setting tried) exceeds, with its need."""
        m, spare = self(smallest), spare_gb(self.device)
        if m.peak_gb is None:  # stopped at the budget: measure its need, up to what the machine can spare
            m = self._measure(smallest, limit_gb=spare)
        need = f"needs {m.peak_gb:.2f} GB" if m.peak_gb is not None else f"needs more than {spare:.1f} GB"
        return PlanError(f"memory budget {self.budget_gb:g} GB: nothing fits; the smallest setting ({smallest.frames} "
                         f"frames x micro-batch {smallest.micro} at keep ratio {smallest.keep_ratio:g}) {need}. Raise "
                         "the budget, or lower the frames or the micro-batch (train_micro_batch_size_per_gpu, with more "
                         "gradient_accumulation_steps), or set model.activation_checkpointing=true")


def frame_unit(cfg: Config) -> int:
    """Frames grow in steps of model.num_frames (segments mode needs whole segments)."""
    return cfg.model.num_frames


def pick_keep_ratio(cfg: Config, ds: DeepSpeedConfig, budget_gb: float, device: str | None = None,
                    ratios: tuple[float, ...] = AUTO_KEEP_RATIOS, ranks: int = 1,
                    log: Callable[[str], None] | None = None, measure_fn: Callable[..., Measurement] | None = None
                    ) -> float:
    """The largest keep ratio in ``ratios`` whose training step fits ``budget_gb`` at the config's frames and
    the JSON's micro-batch (for ``turbo.keep_ratio: auto``); PlanError when even the smallest does not fit."""
    micro = plan_batches(cfg, ds, ranks).micro
    planner = Planner(cfg, ds, budget_gb, device or default_device(), ranks=ranks, log=log, measure_fn=measure_fn)
    return planner.best_keep_ratio(task_type(cfg.task).frames(cfg), micro, ratios).setting.keep_ratio
