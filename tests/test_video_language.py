"""Video-language task: retrieval metrics on hand-made similarities, the text tower (pretrained
parity, freezing), tokenizer errors, and the task end to end on real demo shards in one process."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from turbo_ds.config import Config, ConfigError, ModelConfig, TextConfig
from turbo_ds.tasks import checked
from turbo_ds.models.text import TextEncoder
from turbo_ds.tasks.retrieval import retrieval_metrics, t2v_ranks, v2t_ranks
from turbo_ds.tasks.video_language import VideoLanguage, check_text_model, contrastive_loss, prepare_tokenizer

TINY_VIDEO = ModelConfig(num_frames=4, img_size=16, patch_size=8, tubelet_size=2, width=32, depth=1, heads=2)

# --------------------------------------------------------------------------- metrics

# 4 captions, 3 videos; video 0 has captions 0 and 1.
SIM = torch.tensor([[0.9, 0.1, 0.2],
                    [0.3, 0.5, 0.55],
                    [0.2, 0.8, 0.1],
                    [0.7, 0.6, 0.5]])
OWNER = torch.tensor([0, 0, 1, 2])


@pytest.mark.unit
def test_ranks_on_a_hand_made_matrix():
    # t2v: caption 1's video scores lowest of 3 -> rank 3; caption 3's video is last too.
    assert t2v_ranks(SIM, OWNER).tolist() == [1, 3, 1, 3]
    # v2t: video 0 hits with caption 0 although caption 1 ranks badly; caption 1 (0.55) beats
    # video 2's own caption (0.5) in its column -> rank 2.
    assert v2t_ranks(SIM, OWNER).tolist() == [1, 1, 2]
    m = retrieval_metrics(SIM, OWNER)
    assert m == pytest.approx({"t2v_r1": 0.5, "t2v_r5": 1.0, "t2v_r10": 1.0, "t2v_medr": 2.0, "t2v_meanr": 2.0,
                               "v2t_r1": 2 / 3, "v2t_r5": 1.0, "v2t_r10": 1.0, "v2t_medr": 1.0, "v2t_meanr": 4 / 3})


@pytest.mark.unit
def test_ties_count_against_the_query():
    """Collapsed embeddings must score as badly as possible, not perfectly."""
    flat = torch.zeros(4, 3)
    assert t2v_ranks(flat, OWNER).tolist() == [3, 3, 3, 3]
    assert v2t_ranks(flat, OWNER).tolist() == [3, 4, 4]  # 1 + captions of the other videos


@pytest.mark.unit
def test_video_without_captions_is_a_target_but_no_query():
    sim = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.3, 0.1]])
    owner = torch.tensor([1, 1])  # videos 0 and 2 have no caption
    assert t2v_ranks(sim, owner).tolist() == [1, 1]
    assert v2t_ranks(sim, owner).tolist() == [1]


@pytest.mark.unit
def test_ranks_match_a_brute_force_sort():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(50, 12, generator=g)
    owner = torch.randint(12, (50,), generator=g)
    t2v = [1 + sim[q].argsort(descending=True).tolist().index(int(owner[q])) for q in range(50)]
    assert t2v_ranks(sim, owner).tolist() == t2v
    v2t = [1 + min(sim[:, v].argsort(descending=True).tolist().index(q) for q in range(50) if owner[q] == v)
           for v in range(12) if (owner == v).any()]
    assert v2t_ranks(sim, owner).tolist() == v2t
    metrics = retrieval_metrics(sim, owner)
    assert (metrics["t2v_medr"], metrics["v2t_medr"]) == pytest.approx((np.median(t2v), np.median(v2t)))
    assert metrics["t2v_r5"] == pytest.approx(np.mean(np.array(t2v) <= 5))


@pytest.mark.unit
def test_contrastive_loss_is_log_n_at_chance_and_small_when_aligned():
    e = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert contrastive_loss(e, e, torch.tensor(0.0)).item() == pytest.approx(math.log(8))
    assert contrastive_loss(torch.eye(8), torch.eye(8), torch.tensor(100.0)).item() < 1e-6


# ------------------------------------------------------------------------ text tower


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory) -> tuple[Path, BertModel]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16)
    model = BertModel(config).eval()
    folder = tmp_path_factory.mktemp("bert")
    model.save_pretrained(folder)
    return folder, model


@pytest.mark.parity
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pretrained_text_tower_matches_the_saved_model(saved_bert, pooling):
    folder, original = saved_bert
    encoder = TextEncoder(TextConfig(pretrained=str(folder), pooling=pooling), vocab_size=60, pad_id=0).eval()
    ids = torch.randint(4, 60, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:], mask[2, 3:] = 0, 0
    ids[mask == 0] = 0
    with torch.no_grad():
        h = original(input_ids=ids, attention_mask=mask).last_hidden_state  # (3, 10, 32)
        want = h[:, 0] if pooling == "cls" else (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(encoder(ids, mask), want, atol=1e-6, rtol=1e-5)
    assert encoder.width == 32 and encoder.vocab_size == 60 and encoder.bert.pooler is None


@pytest.mark.unit
def test_freezing_the_text_tower(saved_bert):
    folder, _ = saved_bert
    lower = TextEncoder(TextConfig(pretrained=str(folder), freeze_layers=1), vocab_size=60, pad_id=0).train()
    frozen = {n for n, p in lower.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in frozen)
    assert any(n.startswith("bert.encoder.layer.1.") for n, p in lower.named_parameters() if p.requires_grad)
    assert not lower.bert.embeddings.training and lower.bert.encoder.layer[1].training  # no dropout in frozen parts
    whole = TextEncoder(TextConfig(pretrained=str(folder), freeze=True), vocab_size=60, pad_id=0).train()
    assert not any(p.requires_grad for p in whole.parameters()) and not whole.bert.training
    with pytest.raises(ValueError, match="freeze_layers=3"):
        TextEncoder(TextConfig(pretrained=str(folder), freeze_layers=3), vocab_size=60, pad_id=0)


# ---------------------------------------------------------------------- bad inputs


@pytest.mark.unit
def test_missing_tokenizer_stops_at_validation_with_the_build_command(tmp_path):
    cfg = Config(task="video_language", text=TextConfig(tokenizer=str(tmp_path / "spm.model")))
    with pytest.raises(ConfigError, match=r"text.tokenizer=.*spm.model: no such file; build it with python "
                                          r"data_prep/train_tokenizer.py --out .*spm --shards data/demo/train"):
        checked(cfg)
    with pytest.raises(ConfigError, match="text.tokenizer: required by task=video_language"):
        checked(Config(task="video_language"))
    with pytest.raises(ConfigError, match="data_prep/train_tokenizer.py --out"):  # the task checks again
        VideoLanguage(cfg, {})
    checked(Config(task="video_language", text=TextConfig(tokenizer=str(tmp_path / "spm.model"),
                                                           train_tokenizer_if_missing=True)))


@pytest.mark.unit
@pytest.mark.parametrize("override, message", [
    ({"width": 30, "heads": 4}, "text.width=30: must be divisible by text.heads=4"),
    ({"max_length": 2}, "text.max_length=2"),
    ({"temperature": 0.001}, "text.temperature=0.001"),
    ({"freeze_layers": 5, "depth": 4}, r"text.freeze_layers=5: must be in \[0, text.depth=4\]"),
    ({"dropout": 1.0}, "text.dropout=1.0"),
    ({"pretrained": "/nonexistent/bert"}, "text.pretrained=/nonexistent/bert: no config.json"),
])
def test_bad_text_settings_stop_at_validation(tmp_path, override, message):
    (tmp_path / "spm.model").write_bytes(b"")
    with pytest.raises(ConfigError, match=message):
        checked(Config(task="video_language", text=TextConfig(tokenizer=str(tmp_path / "spm.model"), **override)))


@pytest.fixture(scope="module")
def demo_tokenizer(tiny_demo, tmp_path_factory) -> Config:
    """A config for the tiny demo shards whose tokenizer is trained at 'start-up'."""
    cfg = Config(task="video_language", model=TINY_VIDEO,
                 text=TextConfig(tokenizer=str(tmp_path_factory.mktemp("tok") / "demo.model"),
                                 train_tokenizer_if_missing=True, tokenizer_type="bpe", tokenizer_vocab_size=100,
                                 max_length=12, width=32, depth=1, heads=2, embed_dim=16))
    cfg.data.train, cfg.data.val = f"{tiny_demo}/train", f"{tiny_demo}/val"
    checked(cfg)
    prepare_tokenizer(cfg)
    return cfg


@pytest.mark.unit
def test_pretrained_text_model_that_does_not_fit_the_tokenizer_stops_before_training(demo_tokenizer, saved_bert):
    text = TextConfig(tokenizer=demo_tokenizer.text.tokenizer, pretrained=str(saved_bert[0]), max_length=12)
    with pytest.raises(ConfigError, match=r"has \d+ tokens but text.pretrained=.* embeds 60; use the tokenizer"):
        VideoLanguage(Config(task="video_language", model=TINY_VIDEO, text=text), {})

    class SameVocab:  # a stand-in tokenizer, to reach the next check
        vocab_size, pad_id = 60, 0

    text.max_length = 32
    with pytest.raises(ConfigError, match="text.max_length=32: .* has only 16 positions"):
        check_text_model(text, TextEncoder(text, 60, 0), SameVocab())


# ------------------------------------------------------------- task on demo shards


@pytest.mark.unit
def test_task_trains_and_evaluates_on_demo_captions_in_one_process(demo_tokenizer):
    from turbo_ds.prep.tokenizer_trainer import read_captions

    cfg = demo_tokenizer
    assert Path(cfg.text.tokenizer).is_file() and not list(Path(cfg.text.tokenizer).parent.glob("*.tmp*"))
    prepare_tokenizer(cfg)  # present: a no-op
    captions = read_captions(None, cfg.data.train)
    task = VideoLanguage(cfg, {"class_names": []})
    assert (task.tokens_total, task.tokens_kept) == (8, 2)
    ids, mask = task.encode(captions[:4], dict.fromkeys(task.train_counts, 0))
    assert (ids[:, 0] == 2).all() and mask.sum(1).max() <= 12  # bos first: the "CLS" token
    batch = {"video": torch.randn(4, 3, 4, 16, 16), "text": [captions[0], "", captions[1], " ".join(captions)]}
    loss = task.loss(task.model, batch, torch.float32)
    loss.backward()
    assert math.isfinite(loss.item()) and task.model.log_scale.grad is not None
    assert task.counters == {"text/captions": 4, "text/truncated_captions": 1, "text/empty_captions": 1}
    assert task.model.logit_scale().item() == pytest.approx(1 / 0.07)

    task.model.eval()
    clips = torch.randn(2, 3, 4, 16, 16)
    one_view = {"video": torch.randn(3, 3, 4, 16, 16), "captions": [[captions[0]], captions[1:3], []],
                "key": list("abc")}
    two_views = {"video": torch.stack([clips, clips], dim=1), "captions": [[""], [captions[3]]], "key": list("de")}
    outputs = [task.eval_step(task.model, batch, torch.float32) for batch in (one_view, two_views)]
    task.eval_padding(task.model, torch.float32)
    m = task.eval_metrics(outputs)
    single = task.eval_step(task.model, {**two_views, "video": clips}, torch.float32)
    torch.testing.assert_close(outputs[1]["video"], single["video"])  # averaging identical views changes nothing
    assert (m["eval/num_videos"], m["eval/num_captions"], m["eval/empty_captions"]) == (5, 5, 1)
    assert m["eval/chance_r1"] == pytest.approx(0.2)
    expected = {f"eval/{d}_{k}" for d in ("t2v", "v2t") for k in ("r1", "r5", "r10", "medr", "meanr")}
    assert expected <= m.keys()
    assert all(0 <= m[f"eval/{d}_r1"] <= m[f"eval/{d}_r5"] <= 1 for d in ("t2v", "v2t"))
