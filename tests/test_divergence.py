"""The divergence guard: what counts as a bad step, that a skipped step changes nothing on any ZeRO stage,
and a demo run at 10^7 x the recipe's learning rate stopping with one line, then resuming at a sane one."""

from __future__ import annotations

import json
import math
import os
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from conftest import REPO, free_port, read_metrics, run_train, tiny_overrides
from turbo_ds.config import TrainConfig
from turbo_ds.engine.checkpoint import CheckpointManager
from turbo_ds.engine.distributed import DistInfo
from turbo_ds.engine.guard import WINDOW, DivergenceGuard


# ------------------------------------------------------------------ what a bad step is


@pytest.mark.unit
def test_bad_steps_are_non_finite_or_far_above_the_median_and_a_run_of_them_diverges():
    guard = DivergenceGuard(factor=10, max_bad=3, world=1)
    first = guard.verdict(torch.tensor(2.0), stop_signal=False)
    assert first.problem is None and guard.record(1, first, applied=True) is None  # nothing to compare with yet
    for step, loss in enumerate([2.1, 1.9, 2.0], start=2):
        assert guard.record(step, guard.verdict(torch.tensor(loss), False), True) is None
    assert guard.reference == pytest.approx(2.0)
    assert "loss 25 > 10 x 2" in guard.verdict(torch.tensor(25.0), False).problem
    assert guard.verdict(torch.tensor(math.nan), True).problem == "loss nan"
    assert guard.verdict(torch.tensor(math.inf), False).stop_signal is False
    assert guard.verdict(torch.tensor(19.0), False).problem is None

    for step, loss in enumerate([1e9, math.inf], start=5):
        assert guard.record(step, guard.verdict(torch.tensor(loss), False), applied=False) is not None
    assert guard.bad_in_row == 2 and not guard.diverged and guard.streak_start == 5
    good = guard.verdict(torch.tensor(2.0), False)
    assert good.problem is None and "gradient" in guard.record(7, good, applied=False)  # DeepSpeed's overflow check
    assert guard.diverged and guard.skipped == 3 and guard.streak_start == 5

    restored = DivergenceGuard(factor=10, max_bad=3, world=1)
    restored.load_state_dict(json.loads(json.dumps(guard.state_dict())))  # through trainer_state.json
    assert restored.reference == guard.reference and restored.skipped == 3 and restored.bad_in_row == 0


@pytest.mark.unit
def test_a_converged_run_keeps_the_loss_level_it_started_from_as_a_floor():
    """A loss of 0.1 after a hundred steps at 0.005 is a spike, not divergence: the reference never falls
    below the median of the run's first good steps."""
    guard = DivergenceGuard(factor=10, max_bad=3, world=1)
    for step in range(WINDOW):
        guard.record(step, guard.verdict(torch.tensor(2.0 - 1.9 * step / WINDOW), False), True)
    for step in range(WINDOW, 3 * WINDOW):
        guard.record(step, guard.verdict(torch.tensor(0.005), False), True)
    assert guard.verdict(torch.tensor(0.1), False).problem is None
    assert guard.verdict(torch.tensor(50.0), False).problem is not None


@pytest.mark.unit
def test_fp16_overflows_are_counted_but_are_not_bad_steps():
    guard = DivergenceGuard(factor=10, max_bad=1, world=1, overflow_is_bad=False)
    assert guard.record(1, guard.verdict(torch.tensor(2.0), False), applied=False) is None
    assert guard.skipped == 1 and not guard.diverged


# ------------------------------------------------------------------ a skipped step changes nothing


def _skip_changes_nothing(rank: int, world: int, port: int, results) -> None:
    try:
        results.put((rank, _skip_on_every_stage(rank, world, port)))
    except BaseException:  # noqa: BLE001 - reported to the test instead of leaving it waiting
        results.put((rank, traceback.format_exc()))


def _skip_on_every_stage(rank: int, world: int, port: int) -> dict:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from turbo_ds.engine.distributed import init_distributed
    from turbo_ds.engine.guard import finish_step

    init_distributed()
    out = {}
    for zero in range(4):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
        config = json.loads((REPO / "ds_configs" / f"zero{zero}_bf16.json").read_text())
        config.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=2, train_batch_size=2 * 2 * world)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        x = torch.randn(2, 8, generator=torch.Generator().manual_seed(rank)).to(torch.bfloat16)

        def step(skip: bool) -> bool:
            engine.backward(engine(x).float().pow(2).mean())  # an earlier micro-batch of the step
            engine.step()
            return finish_step(engine, engine(x).float().pow(2).mean(), skip)

        def state() -> list[torch.Tensor]:
            params = list(engine.module.parameters())
            if zero == 0:  # DeepSpeed's FP16_UnfusedOptimizer: fp32 copies, torch's AdamW state on them
                fp32 = [p for group in engine.optimizer.fp32_groups for p in group]
                adam = engine.optimizer.optimizer.state
                master = [p.clone() for p in fp32]
                moments = [adam[p][k].clone() for p in fp32 for k in ("exp_avg", "exp_avg_sq")]
            else:
                master = [safe_get_full_fp32_param(p).clone() for p in params]
                moments = [safe_get_full_optimizer_state(p, k).clone() for p in params for k in ("exp_avg", "exp_avg_sq")]
            with deepspeed.zero.GatheredParameters(params):  # ZeRO-3: the bf16 weights the model runs with
                return master + moments + [p.detach().clone() for p in params]

        assert step(skip=False)
        before, lr = state(), engine.get_lr()
        applied = step(skip=True)
        after = state()
        unchanged = all(torch.equal(a, b) for a, b in zip(before, after))
        assert step(skip=False)
        moved = all(torch.isfinite(t).all() for t in state()) and not torch.equal(state()[0], before[0])
        out[zero] = (applied, unchanged, engine.skipped_steps, lr == engine.get_lr(), moved)
    return out


@pytest.mark.unit
def test_a_roll_back_sets_diverged_checkpoints_aside_with_their_universal_copies(tmp_path):
    """The universal copy an elastic resume made of a diverged checkpoint goes with it; the good one is latest."""
    ckpts = tmp_path / "checkpoints"
    for name in ("step_00000002", "step_00000004", "step_00000004.universal"):
        (ckpts / name).mkdir(parents=True)
    (ckpts / "latest").write_text("step_00000004")
    manager = CheckpointManager(tmp_path, DistInfo(0, 1, 0), TrainConfig())
    assert manager.roll_back(3) == ckpts / "step_00000002"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000002", "step_00000004.diverged"]


@pytest.mark.unit
def test_reruns_diverging_at_the_same_step_keep_each_diverged_checkpoint_and_keep_last_prunes_them(tmp_path):
    """A rerun of the same diverging JSON writes step_3 again and sets it aside again: .diverged.2, .3 (never onto
    the earlier one, a non-empty folder); keep_last_checkpoints 2 keeps the two newest diverged folders."""
    ckpts = tmp_path / "checkpoints"
    manager = CheckpointManager(tmp_path, DistInfo(0, 1, 0), TrainConfig(keep_last_checkpoints=2))
    (ckpts / "step_00000002").mkdir(parents=True)
    for _ in range(3):
        (ckpts / "step_00000003").mkdir()
        (ckpts / "step_00000003" / "mp_rank_00_model_states.pt").write_bytes(b"weights")
        (ckpts / "latest").write_text("step_00000003")
        assert manager.roll_back(3) == ckpts / "step_00000002"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "latest", "step_00000002", "step_00000003.diverged.2", "step_00000003.diverged.3"]


@pytest.mark.e2e
def test_a_skipped_step_changes_no_weight_and_no_optimizer_state_on_any_zero_stage():
    """With gradient accumulation (the skipped step's first micro-batch already has gradients), on 2 ranks."""
    ctx, world, port = mp.get_context("spawn"), 2, free_port()
    results = ctx.Queue()
    procs = [ctx.Process(target=_skip_changes_nothing, args=(r, world, port, results)) for r in range(world)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert not any(isinstance(v, str) for v in got.values()), "\n".join(v for v in got.values() if isinstance(v, str))
    for rank in range(world):
        for zero in range(4):
            applied, unchanged, skipped, same_lr, moved = got[rank][zero]
            assert (applied, unchanged, skipped, same_lr, moved) == (False, True, 1, True, True), (rank, zero)


# ------------------------------------------------------------------ the acceptance run


def ds_with_lr(tmp_path, lr: float) -> str:
    config = json.loads((REPO / "ds_configs" / "zero2_bf16.json").read_text())
    config["optimizer"]["params"]["lr"] = lr
    config.pop("gradient_clipping")
    path = tmp_path / f"lr{lr:g}.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.e2e
def test_a_diverging_run_stops_in_max_bad_steps_and_resumes_at_a_sane_lr(tiny_demo, tmp_path):
    run_dir, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    common = ["train.log_every=1", "train.eval_every=100", "train.warmup_steps=1"]
    sane = run_train(tiny_overrides(tiny_demo, run_dir, *common, "train.steps=2", "train.ckpt_every=2"),
                     ds_config="ds_configs/zero2_bf16.json")
    assert sane.returncode == 0, sane.stderr[-3000:]

    # The recipe's JSON with lr 1e-3 -> 1e4 (10^7 x) and no clipping, resumed from step 2, a checkpoint every step;
    # run twice: the rerun diverges the same way, its step 3 set aside beside the first one's.
    wild, rerun = (run_train(tiny_overrides(tiny_demo, run_dir, *common, "train.steps=12", "train.ckpt_every=1"),
                             ds_config=ds_with_lr(tmp_path, 1e4)) for _ in range(2))
    assert wild.returncode == 3, wild.stdout[-3000:] + wild.stderr[-3000:]
    assert rerun.returncode == 3, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert rerun.stderr.strip().splitlines()[-1] == wild.stderr.strip().splitlines()[-1]
    assert (ckpts / "step_00000003.diverged.2").is_dir()
    assert "the DeepSpeed JSON's 1e+04 replaces the checkpoint's 0.001" in wild.stdout
    error = wild.stderr.strip().splitlines()[-1]
    assert error.startswith("divergence: steps 4-6 were bad (loss ") and "stopped at step 6 without saving" in error
    assert f"last good checkpoint {ckpts / 'step_00000002'} (rerunning resumes there)" in error
    assert "lower learning rate" in error and "warmup" in error and "gradient clipping" in error
    assert [line.split(":")[0] for line in wild.stdout.splitlines() if ": skipped, loss" in line] == [
        "step 4", "step 5", "step 6"]  # within train.max_bad_steps (3) bad steps
    # Step 3 trained at the wild LR and gave step 4's bad loss: its checkpoint is set aside, latest goes back.
    assert (ckpts / "latest").read_text() == "step_00000002" and (ckpts / "step_00000003.diverged").is_dir()
    assert not (ckpts / "step_00000004").exists()
    for f in (ckpts / "step_00000002").glob("*.pt"):
        state = torch.load(f, map_location="cpu", weights_only=False)
        tensors = [t for t in _tensors(state) if t.is_floating_point()]
        assert tensors and all(torch.isfinite(t).all() for t in tensors), f
    assert max(r.get("train/skipped_steps", 0) for r in read_metrics(run_dir)) == 3

    again = run_train(tiny_overrides(tiny_demo, run_dir, *common, "train.steps=4", "train.ckpt_every=2"),
                      ds_config="ds_configs/zero2_bf16.json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from checkpoint {ckpts / 'step_00000002'} at step 2" in again.stdout
    losses = {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}
    assert sorted(losses) == [1, 2, 3, 4] and all(0 < v < 5 for v in losses.values()), losses


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
