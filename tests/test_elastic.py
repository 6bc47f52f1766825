"""Elastic resume: a run checkpointed at one world size resumes at another, its data stream exact.

Over the epoch in which the world size changes, every training clip is seen exactly once:
the tests count ``__key__``s (seen once / repeated / missing) in the pure position logic, in
real loader streams, and in real DeepSpeed runs on every shipped ZeRO stage.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, read_metrics, run_train, tiny_overrides, resumed
from turbo_ds.config import DataConfig, ModelConfig
from turbo_ds.data.position import Layout, Ranges, regroup, share, stream_name
from turbo_ds.data.stages import shuffled
from turbo_ds.data.streams import TrainStream, make_loader


def key_counts(seen: list, every: set) -> dict[str, int]:
    counts = Counter(seen)
    return {"seen once": sum(counts[k] == 1 for k in every), "repeated": sum(c > 1 for c in counts.values()),
            "missing": sum(counts[k] == 0 for k in every), "foreign": len(set(counts) - every)}


def exact(every: set) -> dict[str, int]:
    return {"seen once": len(every), "repeated": 0, "missing": 0, "foreign": 0}


# ------------------------------------------------------------------ the position logic, without I/O


@pytest.mark.unit
def test_ranges():
    r = Ranges()
    for i in [3, 4, 0, 6, 5, 1]:
        r.add(i)
    assert r.pairs() == [[0, 2], [3, 7]] and 2 not in r and 6 in r and len(r) == 6
    r.add(2)
    assert r.pairs() == [[0, 7]] and r == Ranges([(5, 7), (0, 5)])
    holes = Ranges([(2, 4), (6, 9)])
    assert holes.complement(10).pairs() == [[0, 2], [4, 6], [9, 10]] and Ranges().complement(3).pairs() == [[0, 3]]
    assert holes.slice(1, 4).pairs() == [[3, 4], [6, 8]] and list(holes.slice(0, 99)) == [2, 3, 6, 7, 8]
    assert (Ranges([(0, 2)]) | Ranges([(2, 3), (5, 6)])).pairs() == [[0, 3], [5, 6]]
    assert str(holes) == "2:4,6:9" and Ranges.parse(str(holes)) == holes and Ranges.parse("") == Ranges()


@pytest.mark.unit
def test_share_without_a_change_is_the_rank_then_worker_split():
    order = shuffled(list(range(11)), "x")
    for ranks, workers in [(1, 1), (2, 1), (3, 2), (2, 4)]:
        for rank in range(ranks):
            for worker in range(workers):
                part = share(order, [5] * 11, None, rank + ranks * worker, ranks * workers)
                assert list(part) == order[rank::ranks][worker::workers] and set(part.values()) == {None}


@pytest.mark.unit
def test_share_of_the_rest_is_equal_contiguous_and_complete():
    counts, order = [7, 3, 9, 5], [2, 0, 3, 1]
    taken = {2: Ranges([(0, 9)]), 0: Ranges([(1, 3)]), 3: Ranges([(4, 5)])}  # shard 2 read, 1 untouched
    parts = [share(order, counts, taken, k, 5) for k in range(5)]
    sizes = [sum(len(r) for r in p.values()) for p in parts]
    assert sizes == [2, 2, 3, 2, 3] and sum(sizes) == 24 - 9 - 2 - 1
    got = Counter((i, j) for p in parts for i, r in p.items() for j in r)
    assert set(got.values()) == {1} and all(j not in taken.get(i, Ranges()) for i, j in got)
    assert parts[2] == {0: Ranges([(6, 7)]), 3: Ranges([(0, 2)])}  # contiguous, in the epoch's shard order


def simulate(counts: list[int], plan: list[tuple[Layout, list[int]]], seed: int) -> list[tuple[int, int, int]]:
    """Streams of each layout in ``plan`` read their parts in a random order (as a shuffle buffer
    would), each stopping after its quota of samples (crossing into later epochs), then the next
    layout regroups. Returns every (epoch, shard, index) read."""
    rng, seen = random.Random(seed), []
    names = [f"s{i}.tar" for i in range(len(counts))]
    index_of = {n: i for i, n in enumerate(names)}

    def order_of(epoch: int) -> list[int]:
        return shuffled(list(range(len(counts))), f"{seed}-{epoch}")

    states, taken, old = None, {}, None
    for layout, quotas in plan:
        start = 0
        if old is not None:
            regrouped = regroup(states, old, taken, order_of, counts, index_of, resampled=False)
            start, taken = regrouped.epoch, regrouped.taken
        states = {}
        for k, quota in enumerate(quotas):
            epoch, left = start, quota
            while True:
                part = share(order_of(epoch), counts, taken.get(epoch), k, layout.streams)
                todo = [(i, j) for i, r in part.items() for j in (range(counts[i]) if r is None else r)]
                rng.shuffle(todo)
                read, left = todo[:left], left - len(todo[:left])
                seen += [(epoch, i, j) for i, j in read]
                if len(read) < len(todo) or left == 0:  # stopped in this epoch (or right at its end)
                    break
                epoch += 1
            done: dict[str, Ranges] = {}
            for i, j in read:
                done.setdefault(names[i], Ranges()).add(j)
            states[stream_name(k % layout.ranks, k // layout.ranks)] = {
                "epoch": epoch, "done": {n: str(r) for n, r in done.items()}}
        old = layout
    return seen


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(6))
def test_every_sample_once_per_epoch_across_layout_changes(seed):
    """Uneven shards, streams at different epochs when the layout changes, three changes."""
    rng = random.Random(seed)
    counts = [rng.randint(1, 30) for _ in range(9)]
    layouts = [Layout(4, 1), Layout(2, 1), Layout(1, 3), Layout(3, 2)]
    plan = [(layout, [rng.randint(0, 60) for _ in range(layout.streams)]) for layout in layouts]
    plan[-1] = (layouts[-1], [400] * layouts[-1].streams)  # the last layout reads well past epoch 2
    seen = simulate(counts, plan, seed)
    for epoch in range(3):
        every = {(i, j) for i, n in enumerate(counts) for j in range(n)}
        assert key_counts([(i, j) for e, i, j in seen if e == epoch], every) == exact(every), f"epoch {epoch}"


@pytest.mark.unit
def test_resampled_and_old_positions_start_a_fresh_epoch():
    states = {stream_name(r, 0): {"epoch": e, "consumed": 3, "done": {}} for r, e in [(0, 4), (1, 5)]}
    args = (Layout(2, 1), {}, lambda e: [0, 1], [4, 4], {"a": 0, "b": 1})
    assert regroup(states, *args, resampled=True).epoch == 6
    older = {k: {"epoch": v["epoch"], "consumed": 3} for k, v in states.items()}  # no `done` recorded
    assert regroup(older, *args, resampled=False).epoch == 6
    assert regroup({stream_name(0, 0): states[stream_name(0, 0)]}, *args, resampled=False).epoch == 5


# ------------------------------------------------------------------ real loader streams


def read_ranks(demo: Path, layout: Layout, steps: int, batch: int, resume=None, resume_layout=None,
               source: str = "folder", **data_kw):
    """What each rank of ``layout`` trains on in ``steps`` steps: its keys and every stream's last position.

    ``source`` "pipe": the shards as URLs (``pipe:cat ...``, manifest given), read as remote shards are;
    ``data_kw``: further DataConfig keys."""
    train = {"folder": {"train": str(demo / "train")},
             "pipe": {"train": f"pipe:cat {demo}/train/train-{{000000..000003}}.tar",
                      "train_manifest": str(demo / "train" / "manifest.json")}}[source]
    data = DataConfig(**train, val=str(demo / "val"), shuffle_buffer=8,
                      num_workers=layout.workers if layout.workers > 1 else 0, **data_kw)
    keys, positions, epochs = [], {}, []
    for rank in range(layout.ranks):
        stream = resumed(TrainStream.from_config(data, ModelConfig(num_frames=4, img_size=32), rank, layout.ranks,
                                                 batch, seed=7), resume or {}, resume_layout)
        positions.update(stream.positions())
        batches = iter(make_loader(stream, data.num_workers))
        for _ in range(steps):
            b = next(batches)
            keys += b["key"]
            positions[b["stream"]] = b["position"]
            epochs.append(b["position"]["epoch"])
        last_layout = stream.layout_state(positions)
    return keys, positions, last_layout, epochs


@pytest.mark.unit
@pytest.mark.parametrize("source", ["folder", "pipe"])
def test_real_streams_resume_exactly_at_another_layout(tiny_demo, source):
    """64 clips in 4 shards, batches of 4: 4 ranks read 1 batch each, 2 ranks x 2 workers read 2 (the epoch's
    rest: 12 clips a stream), then 2 ranks x 1 worker (a second change inside the same epoch) read the rest.
    Shards read from URLs are recorded by their manifest names, as local ones."""
    every = {f"train{i:07d}" for i in range(64)}
    first, pos, layout, _ = read_ranks(tiny_demo, Layout(4, 1), 1, 4, source=source)
    assert set(pos["rank0/worker0"]["done"]) <= {f"train-{i:06d}.tar" for i in range(4)}
    second, pos, layout, epochs = read_ranks(tiny_demo, Layout(2, 2), 2, 4, pos, layout, source=source)
    assert epochs == [0] * 4 and layout["taken"]["0"]  # 16 clips taken before the first change
    third, *_, epochs = read_ranks(tiny_demo, Layout(2, 1), 4 + 1, 4, pos, layout, source=source)
    assert epochs == [0] * 4 + [1] + [0] * 4 + [1]  # the epoch's rest (16 clips a rank), then epoch 1
    trained = first + second + third[:16] + third[20:36]
    assert key_counts(trained, every) == exact(every)
    # Inside that epoch, a resume at the same layout is exact as always: stop after 2 batches a rank, go on.
    _, pos, layout, _ = read_ranks(tiny_demo, Layout(2, 1), 2, 4, pos, layout, source=source)
    resumed, *_ = read_ranks(tiny_demo, Layout(2, 1), 3, 4, pos, layout, source=source)
    assert resumed == third[8:20] + third[28:40]


@pytest.mark.unit
def test_repeated_copies_resume_exactly_at_another_layout(tiny_demo):
    """data.repeat_aug 2, batches of 4 (2 videos x 2 copies): 4 ranks read 2 batches (16 videos), then 2 ranks
    x 2 workers read the epoch's rest (12 videos a stream, 6 batches) and go on into epoch 1: over epoch 0
    every video is trained on exactly twice, its copies side by side."""
    every = {f"train{i:07d}" for i in range(64)}
    first, pos, layout, _ = read_ranks(tiny_demo, Layout(4, 1), 2, 4, repeat_aug=2)
    second, *_, epochs = read_ranks(tiny_demo, Layout(2, 2), 13, 4, pos, layout, repeat_aug=2)
    assert epochs == ([0] * 12 + [1]) * 2  # each rank: its two workers' 6 batches in turn, then epoch 1
    assert first[0::2] == first[1::2] and second[0::2] == second[1::2]
    trained = first + second[:48] + second[52:100]
    assert key_counts(trained[0::2], every) == exact(every) and Counter(trained) == Counter(2 * sorted(every))


# ------------------------------------------------------------------ real DeepSpeed runs


def micro_ds_config(tmp_path: Path, stage: int) -> str:
    """ds_configs/zero<stage>_bf16.json with 4 clips per rank: 64 demo clips make 8 steps on 2 ranks."""
    ds = json.loads((REPO / f"ds_configs/zero{stage}_bf16.json").read_text())
    path = tmp_path / f"zero{stage}_micro4.json"
    path.write_text(json.dumps({**ds, "train_micro_batch_size_per_gpu": 4}))
    return str(path)


@pytest.mark.e2e
@pytest.mark.parametrize("stage, repeat", [(0, 1), (1, 1), (2, 1), (3, 1), (0, 2)])
def test_elastic_resume_2_4_2_ranks_sees_every_clip_once(tiny_demo, tmp_path, stage, repeat, monkeypatch):
    """One epoch of 64 clips, 4 per rank and step: steps 1-2 on 2 ranks (16 clips), 3-4 on 4 ranks
    (32), 5-6 on 2 ranks again (the last 16): both changes fall in the middle of epoch 0. With data.repeat_aug 2
    a step holds 2 videos x 2 copies a rank and the steps double: every video is trained on twice."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # up to 4 ranks on 2 cores: one thread each (a third less CPU)
    run_dir, ds = tmp_path / "run", micro_ds_config(tmp_path, stage)
    sets = ["train.steps=100", "train.eval_every=1000", "train.ckpt_every=1000", "train.log_every=1",
            "train.log_samples=true", f"data.repeat_aug={repeat}"]
    for ranks, stop in [(2, 2 * repeat), (4, 4 * repeat), (2, 6 * repeat)]:
        proc = run_train(tiny_overrides(tiny_demo, run_dir, *sets, f"train.stop_at_step={stop}"), ranks=ranks,
                         ds_config=ds)
        output = proc.stdout[-2000:] + proc.stderr[-3000:]
        assert proc.returncode == 0 and f"stopping at step {stop}" in proc.stdout, output
        if stop > 2 * repeat:
            how = "ZeRO stage 0 loads it as it is" if stage == 0 else "converted it to a universal checkpoint in"
            assert f"written by {6 - ranks} rank(s), this run has {ranks}" in proc.stdout and how in proc.stdout
            assert "epoch 0 continues with the" in proc.stdout, proc.stdout[-3000:]
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    ranks_at = [2] * 2 * repeat + [4] * 2 * repeat + [2] * 2 * repeat
    assert [(r["step"], len(r["keys"])) for r in records] == list(enumerate(ranks_at, 1))
    # a rank's batch holds each video's copies side by side
    assert all(keys == [k for k in keys[0::repeat] for _ in range(repeat)] for r in records for keys in r["keys"])
    every = {f"train{i:07d}" for i in range(64)}
    trained = {r["step"]: [k for rank in r["keys"] for k in rank[0::repeat]] for r in records}  # one per video
    counts = key_counts([k for keys in trained.values() for k in keys], every)
    ckpts = run_dir / "checkpoints"
    state = json.loads((ckpts / f"step_{6 * repeat:08d}" / "trainer_state.json").read_text())
    size = len(json.dumps([state["data_position"], state["data_layout"]]))

    def around(first: int, last: int) -> str:  # the steps on both sides of one change
        seen = Counter(k for step in range(first, last + 1) for k in trained[step])
        return f"{sum(c == 1 for c in seen.values())} seen once, {sum(c > 1 for c in seen.values())} repeated"

    print(f"ZeRO-{stage} repeat_aug {repeat} key counts over epoch 0 (64 videos): {counts}; 2 -> 4 ranks: "
          f"{around(1, 4 * repeat)}; 4 -> 2 ranks: {around(2 * repeat + 1, 6 * repeat)}; data position {size} bytes")
    assert counts == exact(every)
    assert state["world_size"] == 2 and state["data_layout"]["ranks"] == 2
    losses = [r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert len(losses) == 6 * repeat and all(0 < x < 10 for x in losses)
    # Universal copies are a cache for the latest checkpoint only: the save at step 6 pruned step 4's.
    assert not list(ckpts.glob("*.universal*")) and not (ckpts / "latest_universal").exists()
    if stage == 3:  # bad input: at another world size, a checkpoint of another model shape is one clear line
        proc = run_train(tiny_overrides(tiny_demo, run_dir, *sets, "model.width=64"), ranks=None, ds_config=ds)
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        assert proc.returncode == 2 and len(errors) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert errors[0].startswith("config error: model: checkpoint ") and "another model shape: encoder." in errors[0]
        assert "model.width 128 there, 64 here" in errors[0] and "Traceback" not in proc.stderr
