"""Global negatives: on 2 gloo ranks the video-language loss and the rank-averaged gradients
(what DeepSpeed applies) equal one process's on the concatenated batch; so do eval metrics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from turbo_ds.config import Config, ModelConfig, TextConfig, TurboConfig
from turbo_ds.engine.gather import all_gather_objects, all_gather_with_grad

WORLD, MICRO = 2, 3
WORDS = ["red", "green", "blue", "circle", "square", "moves", "up", "down", "slowly", "quickly", "a", "and"]


def tiny_config(tokenizer: Path) -> Config:
    """keep_ratio 1 and no dropout: the only difference between the runs is how the batch is split."""
    return Config(task="video_language",
                  model=ModelConfig(num_frames=4, img_size=16, patch_size=8, tubelet_size=2, width=32, depth=2,
                                    heads=2),
                  turbo=TurboConfig(keep_ratio=1.0),
                  text=TextConfig(tokenizer=str(tokenizer), width=32, depth=2, heads=2, max_length=12, dropout=0.0,
                                  embed_dim=16, pooling="mean"))


def make_batches(seed: int = 0) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    n = WORLD * MICRO
    video = torch.randn(n, 3, 4, 16, 16, generator=g)
    text = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (5,), generator=g)) for _ in range(n)]
    train = {"video": video, "text": text}
    evals = [{"video": torch.randn(k, 3, 4, 16, 16, generator=g),
              "captions": [[f"a {WORDS[j % 12]} {WORDS[(j * 7) % 12]}"] * (1 + j % 2) for j in range(k)]}
             for k in (3, 2, 2)]  # uneven: rank 1 gets one batch and pads once
    return train, evals


def build(cfg: Config):
    from turbo_ds.tasks.video_language import VideoLanguage

    torch.manual_seed(0)  # identical initial weights in every process
    return VideoLanguage(cfg, {})


def step(task, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    loss = task.loss(task.model, batch, torch.float32)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}


def evaluate(task, batches: list[dict], pad: int = 0) -> dict:
    task.model.eval()
    outputs = [task.eval_step(task.model, b, torch.float32) for b in batches]
    for _ in range(pad):
        task.eval_padding(task.model, torch.float32)
    return task.eval_metrics(outputs)


def rank_main(rank: int, port: int, cfg: Config, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        train, evals = make_batches()
        task = build(cfg)
        mine = {"video": train["video"][rank * MICRO : (rank + 1) * MICRO],
                "text": train["text"][rank * MICRO : (rank + 1) * MICRO]}
        loss, grads = step(task, mine)
        for g in grads.values():  # DeepSpeed's gradient averaging over ranks
            dist.all_reduce(g)
            g /= WORLD
        metrics = evaluate(task, evals[rank::WORLD], pad=len(evals[0::WORLD]) - len(evals[rank::WORLD]))
        x = torch.arange(4.0).view(2, 2) + 10 * rank  # plain gather: rank order, identity in backward
        gathered = all_gather_with_grad(x)
        objects = all_gather_objects({"rank": rank})
        torch.save({"loss": loss, "grads": grads, "metrics": metrics, "gathered": gathered, "objects": objects},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    from turbo_ds.prep.tokenizer_trainer import train

    folder = tmp_path_factory.mktemp("tok")
    captions = [" ".join(WORDS[(i * k) % 12] for k in range(1, 6)) for i in range(200)]
    train(captions, folder / "tok", "bpe", 40, 1.0, 10_000)
    return folder / "tok.model"


@pytest.mark.parity
def test_two_ranks_match_one_process_on_the_concatenated_batch(tokenizer, tmp_path):
    cfg = tiny_config(tokenizer)
    mp.spawn(rank_main, args=(free_port(), cfg, str(tmp_path)), nprocs=WORLD, join=True)
    train, evals = make_batches()
    task = build(cfg)
    ref_loss, ref_grads = step(task, train)
    ref_metrics = evaluate(task, evals)
    assert task.model.log_scale.grad is not None and abs(task.model.log_scale.grad.item()) > 0
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["loss"] == pytest.approx(ref_loss, abs=1e-5)
        assert got["grads"].keys() == ref_grads.keys()
        for name, ref in ref_grads.items():
            torch.testing.assert_close(got["grads"][name], ref, atol=1e-5, rtol=1e-4, msg=name)
        assert got["metrics"] == pytest.approx(ref_metrics, abs=1e-6)
        assert got["metrics"]["eval/num_videos"] == 7 and got["metrics"]["eval/num_captions"] == 10
        torch.testing.assert_close(got["gathered"], torch.cat([torch.arange(4.0).view(2, 2),
                                                               torch.arange(4.0).view(2, 2) + 10]))
        assert got["objects"] == [{"rank": 0}, {"rank": 1}]


@pytest.mark.unit
def test_single_process_gathers_are_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x
    assert all_gather_objects("a") == ["a"]
