"""Export (safetensors + transformers VideoMAE), predict on video files, DeepSpeed monitors, model FLOPs."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import REPO, read_metrics, run_train, tiny_overrides
from turbo_ds.config import ConfigError, ModelConfig, load_config, load_ds_config
from turbo_ds.data.shards import read_manifest
from turbo_ds.engine.checkpoint import CheckpointManager, NoCheckpoint
from turbo_ds.export import Consolidated, from_run, load_export, write_export
from turbo_ds.models.flops import vit_flops
from turbo_ds.models.to_transformers import NotConvertible, from_videomae, to_videomae, videomae_config
from turbo_ds.models.vit import VideoClassifier, VideoViT
from turbo_ds.predict import Clips
from turbo_ds.predict import main as predict
from turbo_ds.tasks import build_task, task_type


def clips_from_shard(shard: Path, out: Path, count: int) -> list[Path]:
    """The first ``count`` mp4 members of a real demo shard, as files."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".mp4")][:count]
        for m in members:
            (out / m.name).write_bytes(tar.extractfile(m).read())
    return [out / m.name for m in members]


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial norms and biases (init leaves them at 1 / 0), so a dropped or swapped tensor shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


# --------------------------------------------------------------------------- unit / parity


@pytest.mark.parity
def test_videomae_names_round_trip_and_match_transformers_logits():
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    cfg = ModelConfig(num_frames=4, img_size=32, patch_size=8, width=64, depth=2, heads=4)
    ours = perturbed(VideoClassifier(VideoViT(cfg), 5))
    hf_config = {k: v for k, v in videomae_config(cfg, list("abcde")).items() if k not in ("architectures", "model_type")}
    hf = VideoMAEForVideoClassification(VideoMAEConfig(**hf_config)).eval()
    hf.load_state_dict(to_videomae(ours.state_dict()), strict=True)
    back = VideoClassifier(VideoViT(cfg), 5).eval()
    back.load_state_dict(from_videomae(to_videomae(ours.state_dict())), strict=True)
    video = torch.randn(2, 3, 4, 32, 32)  # (B, C, T, H, W)
    with torch.no_grad():
        logits = ours(video)
        assert torch.allclose(hf(pixel_values=video.transpose(1, 2)).logits, logits, atol=1e-4)  # (B, T, C, H, W)
        assert torch.allclose(back(video), logits, atol=1e-5)  # only the (softmax-invariant) k bias is zeroed
    with pytest.raises(NotConvertible, match="pos_embed"):
        videomae_config(ModelConfig(pos_embed="learned"), ["a"])


@pytest.mark.unit
def test_vit_flops_match_torch_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig(num_frames=8, img_size=64, patch_size=8, width=96, depth=3, heads=4)
    vit = VideoViT(cfg, 0.25).train()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # attention as matmuls the counter sees
        vit(torch.randn(1, 3, 8, 64, 64))  # (B, C, T, H, W)
    kept = vit.turbo.num_kept(training=True)
    assert kept == 64
    assert vit_flops(vit, kept) == pytest.approx(counter.get_total_flops(), rel=0.02)  # norms/biases: not counted


@pytest.mark.unit
def test_monitor_without_its_package_stops_before_any_engine(tmp_path, monkeypatch, capsys):
    ds = json.loads((REPO / "ds_configs/zero2_bf16.json").read_text())
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({**ds, "wandb": {"enabled": True, "project": "p"}}))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec and import both fail
    with pytest.raises(ConfigError, match=r"wandb\.enabled=true: the wandb package is not installed; "
                                          r"pip install 'turbo_ds\[wandb\]'"):
        load_ds_config(path)
    from turbo_ds.train import main

    assert main(["--config", "configs/demo_action_cls.yaml", "--ds_config", str(path)]) == 2
    assert "turbo_ds[wandb]" in capsys.readouterr().err
    path.write_text(json.dumps({**ds, "wandb": {"enabled": False}}))
    assert load_ds_config(path).monitors == {}


@pytest.mark.unit
def test_checkpoint_listing_names_the_steps_there_are(tmp_path):
    checkpoints = CheckpointManager.reader(tmp_path)
    with pytest.raises(NoCheckpoint, match="no complete checkpoint"):
        checkpoints.find()
    for name in ("step_00000002", "step_00000004", "step_00000006.partial"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert list(checkpoints.complete()) == [2, 4]
    assert checkpoints.find().name == "step_00000004"  # no `latest` pointer: the newest complete one
    with pytest.raises(NoCheckpoint, match="no checkpoint at step 6; complete checkpoints are at steps 2, 4"):
        checkpoints.find(6)


@pytest.mark.unit
def test_export_folder_loads_and_predict_names_bad_videos(tiny_demo, tmp_path, capsys):
    cfg = load_config(REPO / "configs/demo_action_cls.yaml",
                      ["model.depth=1", f"data.train={tiny_demo}/train", f"data.val={tiny_demo}/val"])
    manifest = read_manifest(cfg.data.train)
    task = build_task(cfg, manifest)
    perturbed(task.model)
    write_export(Consolidated(task, manifest["class_names"], {"step": 0}), tmp_path / "exp")
    loaded = load_export(tmp_path / "exp")
    good = clips_from_shard(tiny_demo / "val" / "val-000000.tar", tmp_path / "videos", 2)
    (tmp_path / "videos" / "broken.mp4").write_bytes(good[0].read_bytes()[:2000])
    video = Clips(loaded)(good[0].name, good[0])  # (1, C, T, H, W), as evaluation decodes it
    with torch.no_grad():
        assert torch.allclose(loaded.model(video), task.model(video), atol=1e-5)
    assert predict(["--model", str(tmp_path / "exp"), "--json", "--top-k", "3", str(tmp_path / "videos"),
                    str(tmp_path / "missing.mp4")]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["video"]).name for r in lines] == ["broken.mp4", *sorted(p.name for p in good), "missing.mp4"]
    assert "error" in lines[0] and "no such file" in lines[-1]["error"]
    assert all(len(r["top_k"]) == 3 and r["top_k"][0]["label"] in manifest["class_names"] for r in lines[1:3])


@pytest.mark.unit
def test_video_language_export_holds_both_towers_and_the_tokenizer(tiny_demo, tmp_path, capsys):
    cfg = load_config(REPO / "configs/demo_video_language.yaml",
                      ["model.depth=1", "text.depth=1", f"text.tokenizer={tmp_path}/spm.model",
                       f"data.train={tiny_demo}/train", f"data.val={tiny_demo}/val"])
    task_type(cfg.task).prepare(cfg, print)  # trains the demo's sentencepiece tokenizer on the captions
    task = build_task(cfg, read_manifest(cfg.data.train))
    perturbed(task.model)
    write_export(Consolidated(task, None, {"step": 0}), tmp_path / "exp")
    assert {p.name for p in (tmp_path / "exp").iterdir()} == {"config.json", "model.safetensors", "tokenizer.model",
                                                             "text_encoder"}
    loaded = load_export(tmp_path / "exp")
    ours, theirs = task.model.state_dict(), loaded.model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    videos = clips_from_shard(tiny_demo / "val" / "val-000000.tar", tmp_path / "videos", 2)
    capsys.readouterr()
    assert predict(["--model", str(tmp_path / "exp"), "--json", "--text", "a red square moves up",
                    *map(str, videos)]) == 0
    ranking = json.loads(capsys.readouterr().out)["ranking"]
    assert sorted(r["video"] for r in ranking) == sorted(map(str, videos))


# ---------------------------------------------------------------------------------- e2e

ZERO0_SCRIPT = """
import json, os, sys, torch, deepspeed
from turbo_ds.config import ModelConfig
from turbo_ds.engine.checkpoint import CheckpointManager
from turbo_ds.engine.distributed import free_port
from turbo_ds.engine.optim import group_names, param_groups
from turbo_ds.models.vit import VideoClassifier, VideoViT

os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
deepspeed.init_distributed()
model = VideoClassifier(VideoViT(ModelConfig(num_frames=4, img_size=32, width=64, depth=2, heads=4), 0.5), 3)
config = {**json.load(open("ds_configs/zero0_bf16.json")), "train_batch_size": 16}
groups = param_groups(model, 1e-2, 0.75, 2)
layout = group_names(groups, model)
engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=config)
for _ in range(2):  # the fp32 masters move away from their bf16 copies
    loss = engine(torch.randn(16, 3, 4, 32, 32, dtype=torch.bfloat16)).float().logsumexp(-1).mean()
    engine.backward(loss)
    engine.step()
engine.save_checkpoint(sys.argv[1], tag="step_00000002")
weights, note = CheckpointManager.fp32_weights(CheckpointManager.reader(sys.argv[1] + "/..").find(2),
                                               layout)
# torch_adam (our JSONs): DeepSpeed's unfused optimizer keeps one fp32 master tensor per parameter
masters = {p: m for fp32, group in zip(engine.optimizer.fp32_groups, engine.optimizer.fp16_groups)
           for m, p in zip(fp32, group)}
names = {p: n for n, p in model.named_parameters()}
assert len(engine.optimizer.fp32_groups) == 8, "layer decay: 4 layers x (decay, no decay)"
assert len(masters) == len(names)
assert all(torch.equal(weights[names[p]], m) for p, m in masters.items()), "fp32 masters"
assert any(not torch.equal(m.bfloat16().float(), m) for m in masters.values()), "masters are finer than bf16"
print("OK", note)
"""


@pytest.mark.e2e
def test_zero0_export_takes_the_fp32_masters_in_the_optimizers_group_layout(tmp_path):
    """A real ZeRO-0 bf16 checkpoint (DeepSpeed's mixed-precision optimizer, 8 layer-decay groups): every weight
    comes from its flat fp32 master copy, not the bf16 module weights beside it."""
    (tmp_path / "checkpoints").mkdir()
    proc = subprocess.run([sys.executable, "-c", ZERO0_SCRIPT, str(tmp_path / "checkpoints")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK fp32 master weights of the mixed-precision optimizer" in proc.stdout, \
        proc.stdout[-2000:] + proc.stderr[-3000:]



@pytest.mark.e2e
def test_zero3_run_exports_fp32_state_and_feeds_every_monitor(tiny_demo, tmp_path, monkeypatch, capsys):
    """2 ranks, ZeRO-3 (no weights in the model files), TensorBoard + CSV + W&B offline from the JSON."""
    ds = json.loads((REPO / "ds_configs/zero3_bf16.json").read_text())
    monitors = {"tensorboard": {"enabled": True, "output_path": str(tmp_path / "mon"), "job_name": "tb"},
                "csv_monitor": {"enabled": True, "output_path": str(tmp_path / "mon"), "job_name": "csv"},
                "wandb": {"enabled": True, "project": "turbo_ds_test"}}
    (tmp_path / "ds.json").write_text(json.dumps({**ds, **monitors}))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "mon"))
    run_dir = tmp_path / "run"
    proc = run_train(tiny_overrides(tiny_demo, run_dir), ds_config=str(tmp_path / "ds.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "TFLOP/s" in proc.stdout and "| eta 0:00:00" in proc.stdout
    records = read_metrics(run_dir)
    assert all(r["train/tflops"] > 0 for r in records if "train/loss" in r)

    # TensorBoard: every numeric metric of metrics.jsonl, at its step (read back from the event file).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "mon" / "tb"))
    events.Reload()
    written = [(k, r["step"], v) for r in records for k, v in r.items() if k not in ("step", "wall_s")]
    assert len(written) > 20
    for key, step, value in written:
        assert {e.step: e.value for e in events.Scalars(key)}[step] == pytest.approx(value, rel=1e-6), key
    csv_rows = (tmp_path / "mon" / "csv" / "train_loss.csv").read_text().split()
    assert csv_rows[0] == "step,loss" and len(csv_rows) == 3
    assert list((tmp_path / "mon" / "wandb").glob("offline-run-*/run-*.wandb"))

    # Export: the ZeRO-3 partitions joined = DeepSpeed's own fp32 reading of the checkpoint.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run = from_run(run_dir)
    reference = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag="step_00000004")
    ours = run.task.model.state_dict()
    assert set(ours) == set(reference) and all(torch.equal(ours[k], reference[k]) for k in reference)

    # transformers reads the export: same logits as ours, and its pipeline runs on an mp4 with our top-1.
    from transformers import VideoMAEForVideoClassification, pipeline

    write_export(run, tmp_path / "exp")
    clip = clips_from_shard(tiny_demo / "val" / "val-000001.tar", tmp_path / "videos", 1)[0]
    task = load_export(tmp_path / "exp")
    video = Clips(task)(clip.name, clip)
    hf = VideoMAEForVideoClassification.from_pretrained(tmp_path / "exp").eval()
    with torch.no_grad():
        assert torch.allclose(hf(pixel_values=video.transpose(1, 2)).logits, task.model(video), atol=1e-4)
    top = pipeline("video-classification", model=str(tmp_path / "exp"))(str(clip), top_k=1)[0]
    capsys.readouterr()
    assert predict(["--model", str(tmp_path / "exp"), "--json", str(clip)]) == 0
    ours_top = json.loads(capsys.readouterr().out)["top_k"][0]
    assert top["label"] == ours_top["label"] and top["score"] == pytest.approx(ours_top["score"], abs=1e-4)
