"""The divergence guard: a bad step is skipped, counted and logged; too many in a row stop the run.

A step is bad when its loss is not finite, when its gradients are not (DeepSpeed's overflow check
finds them), or when its loss exceeds ``train.divergence_factor`` x the median loss of recent good
steps. The reference median never drops below the median of the run's first good steps, so the
harmless spikes of a converged run (a loss of 0.1 after a hundred steps at 0.005) are not called
divergence; a run whose loss leaves the range it started from is.

Every rank must reach the same verdict before the optimizer step (a rank that skipped alone would
leave ZeRO's collectives unmatched), so the verdict comes from the step's one all-reduce, which
also carries every reason to stop that one rank may see alone: a stop signal (preemption), the
shards its loader streams lost in their epoch (the data budget is the sum over all ranks), and a
failure that ends the run (e.g. the run-dir lock taken away). A failure's message is gathered
only when a rank has one, so every rank stops at the same step with the same one-line error.
"""

from __future__ import annotations

import math
import signal
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from turbo_ds.engine.distributed import all_reduce_sum
from turbo_ds.engine.gather import all_gather_objects

WINDOW = 100  # good steps in each median


@dataclass(frozen=True)
class Verdict:
    loss: float
    "the step's loss, averaged over ranks (and micro-batches)"
    stop_signal: bool
    "a rank received a stop signal (SIGUSR1/SIGTERM)"
    problem: str | None
    "why the step is bad (None: it is good so far; DeepSpeed may still find non-finite gradients)"
    lost_shards: int = 0
    "the most shards the loader streams of every rank lost in one epoch"
    failure: str | None = None
    "why the run must end now, as the first rank that found a reason says it (None: no reason)"


class DivergenceGuard:
    """Per-run state of the guard (the same on every rank); ``state_dict`` travels with checkpoints."""

    def __init__(self, factor: float, max_bad: int, world: int, overflow_is_bad: bool = True):
        self.factor, self.max_bad, self.world = factor, max_bad, world
        self.overflow_is_bad = overflow_is_bad  # fp16: DeepSpeed's loss scaler skips overflows as routine
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.first: list[float] = []  # the run's first WINDOW good losses
        self.skipped = 0  # steps skipped over the whole run
        self.bad_in_row = 0
        self.streak_start: int | None = None  # the first step of the current run of bad steps

    @property
    def reference(self) -> float | None:
        """The loss level a good step stays within ``factor`` of; None before the first good step."""
        if not self.recent:
            return None
        return max(statistics.median(self.recent), statistics.median(self.first))

    def verdict(self, local_loss: torch.Tensor, stop_signal: bool, lost_per_epoch: list[int] = (),
                failure: str | None = None) -> Verdict:
        """The step's verdict, identical on every rank: one all-reduce of (loss, stop signal, failures, this rank's
        lost shards per epoch slot), and a gather of the failures' messages when there are any."""
        loss_sum, signals, failures, *lost = all_reduce_sum([local_loss, float(stop_signal), float(failure is not None),
                                                              *map(float, lost_per_epoch)])
        if failures:
            failure = next(reason for reason in all_gather_objects(failure) if reason is not None)
        loss, reference = loss_sum / self.world, self.reference
        problem = None
        if not math.isfinite(loss):
            problem = f"loss {loss}"
        elif self.factor and reference is not None and loss > self.factor * reference:
            problem = f"loss {loss:.4g} > {self.factor:g} x {reference:.4g}, the median of recent good steps"
        return Verdict(loss, signals > 0, problem, int(max(lost, default=0)), failure)

    def record(self, step: int, verdict: Verdict, applied: bool) -> str | None:
        """Account for the step once DeepSpeed has (or has not) applied it; returns why it was bad, or None."""
        problem = verdict.problem
        if problem is None and not applied:
            if not self.overflow_is_bad:  # fp16: the loss scaler's routine overflow, not a bad step
                self.skipped += 1
                return None
            problem = "non-finite gradient norm (DeepSpeed's overflow check skipped the update)"
        if problem is None:
            self.recent.append(verdict.loss)
            if len(self.first) < WINDOW:
                self.first.append(verdict.loss)
            self.bad_in_row, self.streak_start = 0, None
            return None
        self.skipped += 1
        self.bad_in_row += 1
        if self.streak_start is None:
            self.streak_start = step
        return problem

    @property
    def diverged(self) -> bool:
        return self.bad_in_row >= self.max_bad

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (saves happen after good steps only, so no streak is open)."""
        return {"recent": list(self.recent), "first": self.first, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent.extend(state.get("recent", []))
        self.first = list(state.get("first", []))
        self.skipped = int(state.get("skipped", 0))


class PreemptionFlag:
    """Set by SIGUSR1 (Slurm's warning before preemption or the time limit) or SIGTERM; the trainer reads it
    between steps. Installed on the first line of ``main``, so that a signal during start-up (demo data,
    planning, a universal conversion, the engine) stops the run at its first step instead of killing it."""

    def __init__(self) -> None:
        self.signal: str | None = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name


def finish_step(engine: Any, loss: torch.Tensor, skip: bool) -> bool:
    """Backward of the step's last micro-batch, then DeepSpeed's optimizer step; True if it updated the weights.

    A skipped step backpropagates NaN instead: DeepSpeed's own overflow check (fp16's loss scaler, the
    bf16 gradient check) then discards the whole step on every ZeRO stage, as it does for an fp16
    overflow: the gradients of every micro-batch are cleared, weights, optimizer state and LR schedule
    are left as they were, and its counters stay consistent. Only configs where
    ``DeepSpeedConfig.skips_nonfinite_steps`` holds may skip.
    """
    engine.backward(loss * math.nan if skip else loss)
    engine.step()
    applied = engine.was_step_applied()
    if skip and applied:
        raise RuntimeError("DeepSpeed applied a step the divergence guard skipped; its overflow check is off")
    return applied
