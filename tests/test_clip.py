"""Video-language from CLIP: the CLIP layout of the video tower against transformers' CLIP (image
embedding of identical frames, text tower + projection), Turbo on it, bad inputs, DSL re-scoring,
zero-shot classification, and one real 2-rank run whose run dir the zero-shot tool then reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast, CLIPVisionModel

from conftest import read_metrics, run_train, tiny_overrides
from turbo_ds.config import Config, ConfigError, DataConfig, EvalConfig, ModelConfig, TextConfig, TurboConfig
from turbo_ds.tasks import checked
from turbo_ds.data.shards import read_manifest, write_manifest
from turbo_ds.models.pretrained import CheckpointMismatch, load_pretrained
from turbo_ds.models.vit import VideoViT
from turbo_ds.prep.demo_clip import make_demo_clip
from turbo_ds.tasks.retrieval import dual_softmax, retrieval_metrics
from turbo_ds.tasks.video_language import VideoLanguage, build_model, build_tokenizer
from turbo_ds.tasks.zero_shot import KINETICS_TEMPLATES, class_texts, open_source
from turbo_ds.turbo import STRATEGIES

VIDEO = ModelConfig(arch="clip", num_frames=8, img_size=32, patch_size=8, tubelet_size=2, width=32, depth=2, heads=2,
                    norm_eps=1e-5)  # 4 x 4 x 4 = 64 patch tokens


def vl_config(folder: Path, **text) -> Config:
    cfg = Config(task="video_language", model=ModelConfig(**{**VIDEO.__dict__, "pretrained": str(folder)}),
                 text=TextConfig(pretrained=str(folder), pooling="eos", max_length=16, embed_dim=16, dropout=0.0,
                                 **text))
    return cfg


@pytest.fixture(scope="module")
def clip_folder(tiny_demo, tmp_path_factory) -> Path:
    """A tiny random-init CLIPModel folder with a CLIP BPE tokenizer of the demo captions (make_demo_clip)."""
    torch.manual_seed(0)
    return make_demo_clip(tmp_path_factory.mktemp("clip") / "clip", tiny_demo / "train", width=32, depth=2, heads=2,
                          patch_size=8, image_size=32, text_width=32, text_depth=2, text_heads=2, text_positions=16,
                          embed_dim=16, vocab_size=400, log=lambda _: None)


@pytest.fixture(scope="module")
def reference(clip_folder) -> CLIPModel:
    return CLIPModel.from_pretrained(clip_folder).eval()


def still_clip(images: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, 3, T, H, W) clips of T identical frames."""
    return images[:, :, None].expand(-1, -1, frames, -1, -1).contiguous()


# ------------------------------------------------------------------------------ parity


@pytest.mark.parity
@pytest.mark.parametrize("tower", ["CLIPModel", "CLIPVisionModel"])
def test_identical_frames_give_clips_image_embedding(clip_folder, reference, tmp_path, tower):
    folder = clip_folder
    if tower == "CLIPVisionModel":  # transformers 5 saves a lone vision tower without the vision_model. prefix
        folder = tmp_path / "vision"
        CLIPVisionModel.from_pretrained(clip_folder).save_pretrained(folder)
    encoder = VideoViT(VIDEO).eval()
    report = load_pretrained(encoder, folder)
    assert report.missing == ["temporal_pos_embed"] and not report.unexpected
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference.vision_model(pixel_values=images).pooler_output  # (3, 32)
        torch.testing.assert_close(encoder(still_clip(images, 8)), want, atol=1e-4, rtol=1e-4)
        moving = still_clip(images, 8)
        moving[:, :, 4:] = moving[:, :, 4:].roll(8, dims=-1)  # the second half moves: no longer one image
        assert (encoder(moving) - want).abs().max() > 1e-3  # 10x the tolerance: the test can fail


@pytest.mark.parity
def test_towers_and_projections_match_clip_model(clip_folder, reference):
    cfg = vl_config(clip_folder)
    tokenizer = build_tokenizer(cfg.text)  # from the CLIP folder itself: text.tokenizer is not set
    model, report = build_model(cfg, tokenizer)
    model.eval()
    assert "text_projection: loaded" in report and "logit scale" in report
    assert model.logit_scale().item() == pytest.approx(reference.logit_scale.exp().item())
    captions = ["a small red circle moves up slowly", "a large blue square and a small green triangle move to the left",
                "", "a cyan square"]
    ids, mask, _ = tokenizer.encode(captions, cfg.text.max_length)  # (4, 16), padded
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want_text = reference.get_text_features(input_ids=ids, attention_mask=mask).pooler_output  # (4, 16)
        torch.testing.assert_close(model.text_proj(model.text(ids, mask)), want_text, atol=1e-5, rtol=1e-5)
        want_video = reference.get_image_features(pixel_values=images).pooler_output  # (2, 16)
        torch.testing.assert_close(model.video_proj(model.video(still_clip(images, 8))), want_video, atol=1e-4,
                                   rtol=1e-4)

        # save -> load round trip: a model built without the CLIP weights takes the saved state exactly
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        again, _ = build_model(cfg, tokenizer, weights=False)
        assert again.load_state_dict(saved, strict=True)
        again.eval()
        for a, b in zip(model(still_clip(images, 8), ids, mask), again(still_clip(images, 8), ids, mask)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.unit
def test_demo_clip_folder_loads_in_transformers(clip_folder):
    tok = CLIPTokenizerFast.from_pretrained(clip_folder)
    ids = tok("a small red circle moves up slowly")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids[1:-1]
    assert tok.convert_ids_to_tokens(ids)[1:3] == ["a</w>", "small</w>"]  # whole demo words after BPE merges
    model = CLIPModel.from_pretrained(clip_folder)
    assert model.config.text_config.vocab_size == len(tok) and model.config.text_config.eos_token_id == tok.eos_token_id
    assert model.config.vision_config.patch_size == 8 and model.config.projection_dim == 16


# ------------------------------------------------------------------- Turbo on the tower


@pytest.mark.unit
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_trains_the_clip_tower_and_keeps_the_class_token(clip_folder, strategy):
    encoder = VideoViT(VIDEO, TurboConfig(strategy=strategy, keep_ratio=0.25))
    load_pretrained(encoder, clip_folder)
    seen = []
    encoder.blocks[0].attn.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    out = encoder.train()(torch.randn(2, 3, 8, 32, 32))  # (2, 32)
    (out * torch.randn_like(out)).sum().backward()  # not out.sum(): a LayerNorm's output sums to a constant
    assert seen == [1 + encoder.turbo.num_kept()] and encoder.turbo.num_kept() == 16  # class token + 16 of 64
    assert encoder.cls_token.grad.abs().sum() > 0 and encoder.temporal_pos_embed.grad.abs().sum() > 0
    encoder.eval()(torch.randn(1, 3, 8, 32, 32))
    assert seen[-1] == 1 + 64


# ----------------------------------------------------------------------------- bad input


@pytest.mark.unit
def test_clip_folder_that_does_not_fit_the_model_names_both(clip_folder):
    wider = ModelConfig(**{**VIDEO.__dict__, "width": 64, "heads": 4})
    with pytest.raises(CheckpointMismatch, match="CLIP width 32 != model.width 64"):
        load_pretrained(VideoViT(wider), clip_folder)
    coarser = ModelConfig(**{**VIDEO.__dict__, "patch_size": 16})
    with pytest.raises(CheckpointMismatch, match="CLIP patch size 8 != model.patch_size 16"):
        load_pretrained(VideoViT(coarser), clip_folder)
    with pytest.raises(CheckpointMismatch, match="a CLIP folder; set model.arch=clip"):
        load_pretrained(VideoViT(ModelConfig(**{**VIDEO.__dict__, "arch": "videomae"})), clip_folder)


@pytest.mark.unit
def test_tokenizer_of_another_model_and_wrong_pooling_stop_before_training(clip_folder, tmp_path):
    other = CLIPTokenizer().train_new_from_iterator(["a small red circle moves up"] * 8, vocab_size=270,
                                                    show_progress=False)
    other.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match=r"text.tokenizer=.*tok has \d+ tokens but text.pretrained=.* embeds"):
        VideoLanguage(vl_config(clip_folder, tokenizer=str(tmp_path / "tok")), {})
    with pytest.raises(ConfigError, match="text.pooling=cls: .* causal CLIP text tower .* set text.pooling=eos"):
        VideoLanguage(Config(task="video_language", model=VIDEO,
                             text=TextConfig(pretrained=str(clip_folder), max_length=16, embed_dim=16)), {})


@pytest.mark.unit
def test_zero_shot_data_without_class_names_stops_before_training(tiny_demo, clip_folder, tmp_path):
    folder = tmp_path / "captions_only"
    folder.mkdir()
    shards = read_manifest(tiny_demo / "val")["shards"]
    for shard in shards:
        shutil.copy(tiny_demo / "val" / shard["name"], folder)
    write_manifest(folder, task="video_language", shards=shards)
    cfg = vl_config(clip_folder)
    cfg.eval = EvalConfig(zero_shot_data=str(folder))
    with pytest.raises(ConfigError, match=r"eval.zero_shot_data=.*captions_only: its manifest has no class_names"):
        VideoLanguage(cfg, {})  # train.py prints it as a config error before the engine starts
    cfg.eval = EvalConfig(zero_shot_data=str(tiny_demo / "val"), zero_shot_templates=["a video of a person"])
    with pytest.raises(ConfigError, match="eval.zero_shot_templates=.*exactly one {}"):
        checked(cfg)


# ------------------------------------------------------------------------ metrics


@pytest.mark.unit
def test_dual_softmax_rescoring():
    # 3 captions x 3 videos. Caption 0 prefers video 1 (0.6 vs 0.5), but video 1 matches caption 1
    # far better; the prior over captions moves caption 0 to its own video.
    sim = torch.tensor([[0.5, 0.6, 0.1], [0.1, 0.9, 0.2], [0.2, 0.1, 0.7]])
    owner = torch.tensor([0, 1, 2])
    torch.testing.assert_close(dual_softmax(sim, 10.0, 0), sim * torch.softmax(10 * sim, dim=0))
    m = retrieval_metrics(sim, owner, dsl_scale=10.0)
    assert m["t2v_r1"] == pytest.approx(2 / 3) and m["t2v_dsl_r1"] == 1.0
    assert {f"{d}_dsl_{k}" for d in ("t2v", "v2t") for k in ("r1", "r5", "r10", "medr", "meanr")} <= m.keys()
    assert "t2v_dsl_r1" not in retrieval_metrics(sim, owner)


@pytest.mark.unit
def test_class_texts_and_templates(tiny_demo, tmp_path):
    assert len(KINETICS_TEMPLATES) == 28 and KINETICS_TEMPLATES[8] == "a video of a person {}."
    assert class_texts(open_source(str(tiny_demo / "val"), DataConfig()))[4] == "to the left slowly"  # the demo manifest says it as captions do
    manifest = json.loads((tiny_demo / "val" / "manifest.json").read_text())
    shards = manifest["shards"]
    folder = tmp_path / "names_only"
    folder.mkdir()
    for shard in shards:
        (folder / shard["name"]).symlink_to(tiny_demo / "val" / shard["name"])
    write_manifest(folder, task="action_cls", shards=shards, class_names=["playing_guitar", "abseiling"])
    assert class_texts(open_source(str(folder), DataConfig())) == ["playing guitar", "abseiling"]


# -------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_clip_recipe_trains_tunes_unmasked_and_zero_shot_reads_the_run_dir_and_its_export(tiny_demo, tmp_path, capsys):
    """The demo recipe on 2 ranks (fp32 ZeRO-2, so that the engine and the tool compute the same numbers):
    the CLIP folder is written on first use, the unmasked tune is logged, every eval reports retrieval, DSL
    and zero-shot; then python -m turbo_ds.zeroshot rebuilds the model from the run dir's checkpoint, and its
    export (turbo_ds.export) classifies the same."""
    from conftest import REPO

    ds = json.loads((REPO / "ds_configs" / "zero2_bf16.json").read_text())
    ds["bf16"]["enabled"] = False
    (tmp_path / "zero2_fp32.json").write_text(json.dumps(ds))
    run_dir, folder = tmp_path / "run", tmp_path / "demo_clip"
    args = tiny_overrides(tiny_demo, run_dir, f"model.pretrained={folder}", f"text.pretrained={folder}",
                          f"eval.zero_shot_data={tiny_demo}/val", "turbo.full_token_steps=2", "model.depth=2",
                          "model.img_size=32", "model.num_frames=8", "train.eval_every=100")  # 64 patch tokens
    proc = run_train(args, ds_config=str(tmp_path / "zero2_fp32.json"), config="configs/demo_clip_video_language.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"demo CLIP folder {folder}" in proc.stdout  # written on first use, sized by the recipe
    assert CLIPModel.from_pretrained(folder).config.vision_config.num_hidden_layers == 2
    assert "turbo: unmasked tuning from step 3 to 4 (turbo.full_token_steps=2)" in proc.stdout
    train = [r for r in read_metrics(run_dir) if "train/loss" in r]
    assert [(r["step"], r["train/tokens_kept"]) for r in train] == [(2, 16), (4, 64)]
    [final] = [r for r in read_metrics(run_dir) if "eval/t2v_r1" in r]
    assert (final["eval/num_videos"], final["eval/num_captions"], final["eval/zero_shot_num_clips"]) == (32, 32, 32)
    assert "eval/t2v_dsl_r1" in final and final["eval/zero_shot_num_classes"] == 8
    assert "| num_videos 32 | num_captions 32 |" in proc.stdout

    from turbo_ds import zeroshot  # its main in this process: the same code as the command, without a start-up

    assert zeroshot.main(["--model", str(run_dir), "--data", f"{tiny_demo}/val", "--json",
                          str(tmp_path / "zs.json")]) == 0
    out = capsys.readouterr()
    last = out.out.strip().splitlines()[-1]
    assert last.startswith("top1 ") and "| num_classes 8 |" in last and "| num_clips 32 |" in last
    zs = json.loads((tmp_path / "zs.json").read_text())
    assert zs["top1"] == pytest.approx(final["eval/zero_shot_top1"]) and zs["top5"] == pytest.approx(
        final["eval/zero_shot_top5"])
    assert zs["templates"][0] == "a small red circle moves {}"  # the run's eval.zero_shot_templates

    # The export of a CLIP-architecture run (CLIP tokenizer files, CLIPTextModel text_encoder/) classifies the same.
    from turbo_ds.export import from_run, write_export

    write_export(from_run(run_dir), tmp_path / "export")
    assert CLIPTextModel.from_pretrained(tmp_path / "export" / "text_encoder").config.num_hidden_layers == 2
    assert zeroshot.main(["--model", str(tmp_path / "export"), "--data", f"{tiny_demo}/val", "--json",
                          str(tmp_path / "zs_export.json")]) == 0
    assert json.loads((tmp_path / "zs_export.json").read_text())["top1"] == pytest.approx(zs["top1"])
