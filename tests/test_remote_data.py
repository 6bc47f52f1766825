"""Shards read from URLs: nginx (http), moto's S3 server (s3://) and pipe: commands, all real.

Faults come from what nginx and the OS give: ``return 500`` on a path, a shard the manifest
lists but the server lacks (404), ``limit_rate`` plus a killed worker (a connection cut
mid-transfer), a stopped worker (a stall: no bytes), and the server stopped and started again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, free_port, read_metrics, resumed, run_train, tiny_overrides
from servers import NGINX_INSTALL, S3_INSTALL, MotoS3, Nginx
from turbo_ds.config import ConfigError, DataConfig, ModelConfig, load_config
from turbo_ds.data.datasets import open_datasets
from turbo_ds.data.locations import join, redact, redacted
from turbo_ds.data.position import StreamPosition
from turbo_ds.data.source import ShardReadError, ShardSource, SourceError
from turbo_ds.data.stages import run, shuffled
from turbo_ds.data.streams import TrainStream, make_loader
from turbo_ds.data.transport import ReadPolicy, read_with_retries

MODEL = ModelConfig()
SECRET = "s3cr3t-pw"
FAST = {"read_retries": 2, "read_backoff_s": 0.05, "read_timeout_s": 2.0}  # fail fast where a failure is the point


def data_config(train: str, val: str, **kw) -> DataConfig:
    return DataConfig(train=train, val=val, shuffle_buffer=8, hflip_prob=0.0, **kw)


def keys_and_positions(cfg: DataConfig, rank: int = 0, world: int = 2, batches: int = 4, resume=None):
    loader = make_loader(resumed(TrainStream.from_config(cfg, MODEL, rank, world, 4, seed=1), resume or {}),
                         cfg.num_workers)
    return [b for _, b in zip(range(batches), loader)]


# ------------------------------------------------------------------ unit: no server


@pytest.mark.unit
def test_redact_hides_passwords_signatures_and_secret_assignments():
    assert redact(f"http://ann:{SECRET}@h:8/p/x.tar") == "http://ann:***@h:8/p/x.tar"
    assert redact("see https://h/a.tar?X-Amz-Signature=abc&X-Amz-Date=2 now") == \
        "see https://h/a.tar?X-Amz-Signature=***&X-Amz-Date=*** now"
    assert redact(f"pipe:AWS_SECRET_ACCESS_KEY={SECRET} aws s3 cp s3://b/x -") == \
        "pipe:AWS_SECRET_ACCESS_KEY=*** aws s3 cp s3://b/x -"
    line = "step 4/8 | loss 2.0 | tokens 128/512 | data/demo/train"
    assert redact(line) == line
    tree = {"data": {"train": f"https://u:{SECRET}@h/t/", "val": "data/v", "crop_scale": [0.7, 1.0]}}
    assert SECRET not in json.dumps(redacted(tree)) and redacted(tree)["data"]["crop_scale"] == [0.7, 1.0]
    assert join("https://h/a/b?sig=1", "manifest.json") == "https://h/a/b/manifest.json?sig=1"
    assert join("s3://bucket", "x.tar") == "s3://bucket/x.tar"


@pytest.mark.unit
@pytest.mark.parametrize("override, key", [
    ("data.read_timeout_s=0", "data.read_timeout_s"), ("data.read_retries=-1", "data.read_retries"),
    ("data.max_skipped_shard_fraction=1.5", "data.max_skipped_shard_fraction"),
    ("data.prefetch_shards=-1", "data.prefetch_shards"), ("data.read_backoff_s=-1", "data.read_backoff_s"),
])
def test_config_checks_read_keys(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("configs/demo_action_cls.yaml", [override])


@pytest.mark.unit
def test_a_read_policy_slower_than_the_collective_timeout_is_a_start_up_error():
    """A store that accepts and never answers must be given up on (the shard skipped, counted) before the other
    ranks give up on this one: 6 attempts x 60 s + 31 s of backoff do not fit in a 300 s collective timeout."""
    slow = data_config("https://store.invalid/train", "https://store.invalid/val", read_timeout_s=60.0)
    with pytest.raises(ConfigError, match=r"^data\.read_timeout_s=60 x \(data\.read_retries=5 \+ 1\) \+ backoff "
                                          r"\(data\.read_backoff_s=1, doubling\) = 391 s .* train\.collective_timeout_s=300"):
        open_datasets(slow, world=1, collective_timeout_s=300)  # refused before any read
    assert ReadPolicy.from_config(DataConfig()).stalled_s == 211  # the defaults fit in the default 300 s


@pytest.mark.unit
def test_pipe_source_equals_local_and_needs_a_manifest(tiny_demo):
    local = data_config(str(tiny_demo / "train"), str(tiny_demo / "val"))
    pattern = f"pipe:cat {tiny_demo}/train/train-{{000000..000003}}.tar"
    with pytest.raises(SourceError, match="data.train_manifest=PATH_OR_URL"):
        ShardSource.from_config(dataclasses.replace(local, train=pattern), "train")
    piped = dataclasses.replace(local, train=pattern, train_manifest=str(tiny_demo / "train" / "manifest.json"))
    with pytest.raises(SourceError, match="expands to 3 shards, its manifest lists 4"):
        ShardSource.from_config(dataclasses.replace(piped, train=pattern.replace("000003", "000002")), "train")
    expected, got = keys_and_positions(local, world=4, batches=2), keys_and_positions(piped, world=4, batches=2)
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert torch.equal(got[-1]["video"], expected[-1]["video"])


# ------------------------------------------------------------------ nginx


@pytest.fixture(scope="module")
def web(tiny_demo, tmp_path_factory):
    """nginx on 127.0.0.1 serving the tiny demo, plus paths that fail in known ways."""
    if shutil.which("nginx") is None:
        pytest.skip(f"nginx is not installed: {NGINX_INSTALL}")
    root = tmp_path_factory.mktemp("www")
    for split in ("train", "val"):
        shutil.copytree(tiny_demo / split, root / split)
    # "gappy": its manifest lists train-000002.tar, which the server does not have
    shutil.copytree(root / "train", root / "gappy" / "train", ignore=shutil.ignore_patterns("train-000002.tar"))
    shutil.copytree(root / "val", root / "gappy" / "val")
    (root / "upload").mkdir()
    htpasswd = root.parent / "htpasswd"
    htpasswd.write_text(f"ann:{{PLAIN}}{SECRET}\n")
    locations = f"""
        location /flaky/ {{ alias {root}/; }}
        location = /flaky/train/train-000001.tar {{ return 500; }}
        location /slow/ {{ alias {root}/; limit_rate 64k; }}
        location /private/ {{ alias {root}/gappy/; limit_rate 64k;
                              auth_basic "turbo_ds"; auth_basic_user_file {htpasswd}; }}
        location /upload/ {{ dav_methods PUT DELETE; create_full_put_path on; client_max_body_size 0; }}
        location /readonly/ {{ alias {root}/upload/; }}
    """
    with Nginx(root, tmp_path_factory.mktemp("nginx"), locations) as server:
        server.root_dir = root
        yield server


def raw_epoch(cfg: DataConfig, rank: int, world: int = 2) -> tuple[list[str], StreamPosition]:
    """The keys of a rank's epoch 0 as read (undecoded, placeholders included) and its position."""
    pos = StreamPosition()
    return [s["__key__"] for s in TrainStream.from_config(cfg, MODEL, rank, world, 4, seed=1).epoch_samples(0, 0, 1, pos)], pos


@pytest.mark.e2e
def test_http_stream_equals_local_and_resumes_exactly(web, tiny_demo):
    local = data_config(str(tiny_demo / "train"), str(tiny_demo / "val"))
    http = data_config(f"{web.url}/train", f"{web.url}/val")
    # 4 ranks: one 16-clip shard, 4 batches, an epoch each
    expected, got = keys_and_positions(local, world=4, batches=5), keys_and_positions(http, world=4, batches=5)
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert all(torch.equal(g["video"], e["video"]) for g, e in zip(got, expected))
    assert got[-1]["position"]["epoch"] == 1 and got[-1]["position"]["skipped_shards"] == 0
    # positions name shards as the manifest does (what an elastic resume regroups), not by URL
    assert [b["position"] for b in got] == [b["position"] for b in expected]
    resumed = keys_and_positions(http, world=4, batches=2, resume={got[2]["stream"]: got[2]["position"]})
    assert [b["key"] for b in resumed] == [b["key"] for b in got[3:5]]  # across the epoch boundary


@pytest.mark.e2e
def test_failing_and_missing_shards_are_skipped_counted_and_keep_positions(web, tiny_demo):
    local = data_config(str(tiny_demo / "train"), str(tiny_demo / "val"))
    shards = TrainStream.from_config(local, MODEL, 0, 2, 4, seed=1).shards

    def reader(shard: int) -> int:
        """The rank that reads ``shards[shard]`` in epoch 0."""
        return next(r for r in range(2) if shards[shard] in shuffled(shards, "1-0")[r::2])

    rank = reader(1)  # train-000001.tar: clips 16..31
    expected, _ = raw_epoch(local, rank)

    # HTTP 500 on train-000001.tar: retried, then skipped; its 16 samples become placeholders, counted
    flaky = data_config(f"{web.url}/flaky/train", f"{web.url}/val", max_skipped_shard_fraction=0.5, **FAST)
    got = keys_and_positions(flaky, rank=rank, batches=4)
    assert len(web.requests("/flaky/train/train-000001.tar")) == 3  # the first try and 2 retries
    lost = [e for b in got for e in b["events"] if "skipped" in e]
    assert len(lost) == 1 and "flaky/train/train-000001.tar skipped: HTTP 500" in lost[0], lost
    assert "after 2 retries" in lost[0] and "its 16 samples are lost for epoch 0" in lost[0]
    assert got[-1]["position"]["skipped_shards"] == 1 and got[-1]["position"]["read_retries"] == 2
    # the placeholders held the lost samples' places: the other samples come in the order they do from disk
    raw, _ = raw_epoch(flaky, rank)
    assert len(raw) == 32 and [k for k in raw if not k.startswith("lost-")] == \
        [k for k in expected if not 16 <= int(k[5:]) < 32]
    assert [k for b in got for k in b["key"]] == [k for k in expected if not 16 <= int(k[5:]) < 32]
    # the placeholders are numbered in their shard: the whole epoch is recorded as done, the lost shard too
    pos = StreamPosition()
    assert len(list(run(TrainStream.from_config(flaky, MODEL, rank, 2, 4, seed=1).stages(0, 0, 1, pos)))) == 16
    assert pos.state()["done"] == {f"train-{s:06d}.tar": "0:16" for s in range(4) if reader(s) == rank}
    assert pos.skipped == 16 and pos.skipped_shards == 1

    # A shard in the manifest that the server lacks (404): not retried, skipped, named
    gappy = data_config(f"{web.url}/gappy/train", f"{web.url}/val", max_skipped_shard_fraction=0.5, **FAST)
    _, pos = raw_epoch(gappy, reader(2))
    assert pos.skipped_shards == 1 and pos.read_retries == 0, pos.events
    assert "gappy/train/train-000002.tar skipped (listed in the manifest, missing in the store): not found " \
           "(HTTP 404); its 16 samples are lost for epoch 0" in pos.events[0]

    # The budget is the dataset's, over every stream of every rank (the trainer sums it in its per-step
    # all-reduce): a stream alone never stops, it counts what it lost in its epoch, by name
    _, pos = raw_epoch(dataclasses.replace(flaky, max_skipped_shard_fraction=0.0), rank)
    assert pos.lost_in_epoch == 1 and pos.lost == ["train-000001.tar"]
    source = ShardSource.from_config(dataclasses.replace(flaky, max_skipped_shard_fraction=0.25), "train")
    source.check_lost(1, "epoch 0")  # 1 of 4 shards: within 0.25
    with pytest.raises(ShardReadError, match=r"^data\.train: 2 of its 4 shards could not be read in epoch 0, over all "
                                             r"ranks \(more than data\.max_skipped_shard_fraction=0\.25"):
        source.check_lost(2, "epoch 0")


@pytest.mark.e2e
def test_cut_and_stalled_connections_are_retried_and_resumed(web, tiny_demo):
    name = "train/train-000002.tar"
    want = (tiny_demo / name).read_bytes()

    # /slow/ sends 64 kB at once, then 64 kB/s: killing the worker cuts the 130 kB shard; nginx starts
    # a new worker and the retry asks for the rest only (HTTP 206)
    def cut_when_sending() -> None:  # once the reader's connection is up (a loaded machine may start it late)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not subprocess.run(
                ["ss", "-tnH", "state", "established", f"( sport = :{web.port} )"],
                capture_output=True, text=True).stdout.strip():
            time.sleep(0.02)
        time.sleep(0.4)  # the first 64 kB are out, the rest trickles
        for pid in web.workers():
            os.kill(pid, signal.SIGKILL)

    threading.Thread(target=cut_when_sending).start()
    read = read_with_retries(f"{web.url}/slow/{name}", ReadPolicy(timeout_s=2.5, retries=4, backoff_s=0.1))
    assert read.error is None and read.retries >= 1 and read.data.getvalue() == want
    assert any('" 206 ' in line for line in web.requests(f"/slow/{name}"))

    # a stopped worker accepts nothing and sends nothing: the read times out (read_timeout_s) and the
    # retry succeeds once the worker runs again
    workers = web.workers()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    threading.Timer(1.5, lambda: [os.kill(pid, signal.SIGCONT) for pid in workers]).start()
    read = read_with_retries(f"{web.url}/{name}", ReadPolicy(timeout_s=1.0, retries=4, backoff_s=0.1))
    assert read.error is None and read.retries >= 1 and read.data.getvalue() == want


@pytest.mark.e2e
def test_server_stopped_mid_epoch_and_started_again(web, tiny_demo):
    """The server stops while the epoch's first shard downloads (/slow/: ~1 s) and is back 1.5 s later:
    the read is retried until it is, resumes where it stopped, and the epoch is the one from disk."""
    http = data_config(f"{web.url}/slow/train", f"{web.url}/val", read_retries=6, read_backoff_s=0.2,
                       read_timeout_s=3.0, prefetch_shards=1)
    threading.Timer(0.4, web.stop).start()
    restart = threading.Timer(1.9, web.start)
    restart.start()
    got = keys_and_positions(http, world=4, batches=4)  # rank 0's whole epoch: one shard
    restart.join()
    expected = keys_and_positions(data_config(str(tiny_demo / "train"), str(tiny_demo / "val")), world=4, batches=4)
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert got[-1]["position"]["read_retries"] >= 1 and got[-1]["position"]["skipped_shards"] == 0
    assert any("read after" in e and "retries" in e for b in got for e in b["events"])


@pytest.mark.e2e
def test_credentials_from_netrc_and_bad_locations_at_start_up(web, tmp_path, monkeypatch, capsys):
    private = f"{web.url}/private/train"
    read = read_with_retries(f"{private}/manifest.json", ReadPolicy(retries=0))
    assert read.error.reason.startswith("access denied (HTTP 401)")
    (tmp_path / "netrc").write_text(f"machine 127.0.0.1 login ann password {SECRET}\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert read_with_retries(f"{private}/manifest.json", ReadPolicy(retries=0)).error is None

    from turbo_ds.train import main

    def start(*sets: str) -> str:
        args = ["--config", "configs/demo_action_cls.yaml", "--ds_config", "ds_configs/zero0_bf16.json",
                "--set", "data.read_retries=1", "--set", "data.read_backoff_s=0.1", "--set", "data.generate_demo=false"]
        assert main([*args, *(a for s in sets for a in ("--set", s))]) == 2  # stops before any engine starts
        return capsys.readouterr().err

    err = start(f"data.train={web.url}/nothing/train", f"data.val={web.url}/val")
    assert "config error: data.train=" in err and "no manifest.json at" in err and "data.train_manifest" in err
    closed = web.url.rsplit(":", 1)[0] + f":{web.port + 1 if web.port < 65535 else 1}"
    err = start(f"data.train=http://ann:{SECRET}@{closed.removeprefix('http://')}/train", f"data.val={web.url}/val")
    assert "cannot read" in err and "refused" in err and "after 2 attempts" in err and SECRET not in err


# ------------------------------------------------------------------ data_prep tools against real stores


def tool(capsys, name: str, *args: str) -> tuple[int, str, str]:
    """A data_prep tool's main (what data_prep/<name>.py runs), in this process: (status, stdout, stderr)."""
    from turbo_ds.prep import build_shards, inspect_shards

    status = {"build_shards": build_shards, "inspect_shards": inspect_shards}[name].main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def build_args(tiny_demo: Path, out: str, staging: Path) -> list[str]:
    return ["--task", "action_cls", "--input-shards", f"{tiny_demo}/val/*.tar", "--no-transcode", "--shard-size",
            "10", "--workers", "1", "--out", out, "--staging", str(staging)]


@pytest.mark.e2e
def test_build_shards_uploads_over_http_put_and_refuses_clearly(web, tiny_demo, tmp_path, capsys):
    status, out, err = tool(capsys, "build_shards", *build_args(tiny_demo, f"{web.url}/upload/val", tmp_path / "a"))
    assert status == 0 and f"uploaded 6 files to {web.url}/upload/val" in out, err
    served = web.root_dir / "upload" / "val"
    assert sorted(p.name for p in served.iterdir()) == ["errors.jsonl", "manifest.json",
                                                         *(f"shard-{k:06d}.tar" for k in range(4))]
    assert (served / "manifest.json").read_bytes() == (tmp_path / "a" / "manifest.json").read_bytes()
    status, out, err = tool(capsys, "inspect_shards", f"{web.url}/upload/val", "--no-decode")
    assert status == 0 and "total: 32 samples in 4 shards" in out, err

    status, out, err = tool(capsys, "build_shards", *build_args(tiny_demo, f"{web.url}/readonly/val", tmp_path / "b"))
    assert status == 2 and "does not accept uploads (HTTP 405 on PUT)" in err
    assert not (tmp_path / "b").exists()  # refused before building


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("s3fs", reason=S3_INSTALL)
    pytest.importorskip("moto.server", reason=S3_INSTALL)
    import boto3

    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="turbo")
        yield server


@pytest.mark.e2e
def test_s3_build_inspect_and_stream_through_moto(s3, tiny_demo, tmp_path, monkeypatch, capsys):
    for key, value in s3.env.items():  # credentials and endpoint from the environment, as for a real store
        monkeypatch.setenv(key, value)
    status, out, err = tool(capsys, "build_shards", *build_args(tiny_demo, "s3://turbo/demo/val", tmp_path / "a"))
    assert status == 0 and "uploaded 6 files to s3://turbo/demo/val" in out, err
    status, out, err = tool(capsys, "inspect_shards", "s3://turbo/demo/val", "--no-decode")
    assert status == 0 and "total: 32 samples in 4 shards" in out, err

    # through a loader worker process: fsspec's S3 client must work in a forked child
    s3_data = data_config("s3://turbo/demo/val", "s3://turbo/demo/val", num_workers=1)
    local = data_config(str(tmp_path / "a"), str(tmp_path / "a"), num_workers=1)
    got, expected = keys_and_positions(s3_data, world=4, batches=3), keys_and_positions(local, world=4, batches=3)
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert torch.equal(got[-1]["video"], expected[-1]["video"])


# ------------------------------------------------------------------ training over nginx


@pytest.mark.e2e
def test_training_over_http_survives_an_outage_and_reports_skipped_shards(web, tmp_path):
    """2 ranks train from a password-protected URL whose server lacks one listed shard, with the
    server stopped for a few seconds mid-run: the run finishes, counts and names what it lost,
    and the password is nowhere in the run dir or the log."""
    url = web.url.replace("http://", f"http://ann:{SECRET}@") + "/private"
    run_dir = tmp_path / "run"
    sets = tiny_overrides(tmp_path, run_dir, f"data.train={url}/train", f"data.val={url}/val",
                          "data.max_skipped_shard_fraction=0.5", "data.read_retries=6", "data.read_backoff_s=0.25",
                          "data.read_timeout_s=5")  # 4 steps: 2 epochs of 2 shards on each of the 2 ranks

    def outage() -> None:
        """Right after step 2 (the end of the first epoch), while the next epoch's shards download
        (64 kB/s: about 2 s each), stop the server for 3 s."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (run_dir / "metrics.jsonl").is_file() and '"step": 2' in (run_dir / "metrics.jsonl").read_text():
                break
            time.sleep(0.05)
        web.stop()
        time.sleep(3)
        web.start()

    watcher = threading.Thread(target=outage)
    watcher.start()
    proc = run_train(sets)
    watcher.join()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_metrics(run_dir)
    last = [r for r in records if "data/skipped_shards" in r][-1]
    assert last["step"] == 4 and last["data/skipped_shards"] >= 1 and last["data/read_retries"] >= 1
    log = (run_dir / "train.log").read_text()
    assert "train-000002.tar skipped (listed in the manifest, missing in the store)" in log
    assert "read after" in log and "shards unreadable, skipped" in log
    assert [r["eval/num_clips"] for r in records if "eval/top1" in r] == [32]
    for path in [run_dir / "config.yaml", run_dir / "train.log", run_dir / "metrics.jsonl",
                 *run_dir.glob("checkpoints/*/trainer_state.json")]:
        assert SECRET not in path.read_text(), path
    assert "ann:***@" in (run_dir / "config.yaml").read_text()
    # only the deepspeed launcher's echo of its own command line shows it (README: prefer ~/.netrc)
    launcher = ("[launch.py:", "[runner.py:")  # deepspeed's launcher logs its command line
    leaked = [line for line in (proc.stdout + proc.stderr).splitlines()
              if SECRET in line and not any(name in line for name in launcher)]
    assert not leaked, leaked


def spawn_ranks(args: list[str], world: int = 2) -> list[subprocess.Popen]:
    """``world`` train.py processes wired by hand (no launcher that would kill the others once one exits)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "turbo_ds/train.py", "--ds_config", "ds_configs/zero2_bf16.json",
                                       "--config", "configs/demo_action_cls.yaml", *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.e2e
def test_a_shard_lost_on_one_rank_stops_every_rank_at_the_same_step(web, tmp_path):
    """gappy/train lacks one of its 4 shards, read by one of the 2 ranks; with no lost shard allowed
    (data.max_skipped_shard_fraction=0) both ranks stop together, exit 3, with the same one-line error
    (before: the reading rank left alone and the other waited in a collective until its timeout)."""
    run_dir = tmp_path / "run"
    sets = tiny_overrides(tmp_path, run_dir, f"data.train={web.url}/gappy/train", f"data.val={web.url}/gappy/val",
                          "data.max_skipped_shard_fraction=0", "train.collective_timeout_s=120",
                          *(f"data.{key}={value}" for key, value in FAST.items()))
    procs = spawn_ranks(sets)
    ended = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        ended.append((time.monotonic(), proc.returncode, err))
    assert [code for _, code, _ in ended] == [3, 3], [err[-2000:] for _, _, err in ended]
    assert abs(ended[0][0] - ended[1][0]) < 10  # together, not one of them at the collective timeout
    lines = [[line for line in err.splitlines() if line.startswith("data error")] for _, _, err in ended]
    assert [len(found) for found in lines] == [1, 1], lines
    messages = {line.split(": ", 1)[1] for found in lines for line in found}
    assert len(messages) == 1, messages
    assert messages.pop().startswith("data.train: 1 of its 4 shards could not be read in one epoch, over all ranks "
                                     "(more than data.max_skipped_shard_fraction=0")
    assert "train-000002.tar skipped (listed in the manifest, missing in the store)" in (run_dir / "train.log").read_text()


@pytest.mark.e2e
def test_an_evaluation_reads_the_validation_set_once_however_many_readers(web, tmp_path):
    """2 ranks x 2 loader workers evaluate 8 validation shards over HTTP: nginx serves each shard once (each of the
    4 readers used to read all 8), and the metrics are those of the same run reading the shards from disk."""
    data = web.root_dir / "many"
    subprocess.run([sys.executable, "data_prep/make_demo_data.py", "--out", str(data), "--train", "64", "--val", "64",
                    "--shard-size", "8"], cwd=REPO, check=True, capture_output=True)

    def evaluate(location: str, name: str) -> dict:
        run_dir = tmp_path / name
        sets = tiny_overrides(tmp_path, run_dir, f"data.train={location}/train", f"data.val={location}/val",
                              "data.num_workers=2", "train.steps=2", "train.eval_every=2", "train.ckpt_every=2")
        proc = run_train(sets)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return next(r for r in read_metrics(run_dir) if "eval/top1" in r)

    over_http = evaluate(f"{web.url}/many", "http")
    served = web.requests("/many/val/val-")
    shards = sorted((data / "val").glob("*.tar"))
    assert sorted(line.split()[6] for line in served) == [f"/many/val/{p.name}" for p in shards]  # each once
    assert sum(int(line.split()[9]) for line in served) == sum(p.stat().st_size for p in shards)
    from_disk = evaluate(str(data), "disk")
    keys = ("eval/top1", "eval/top5", "eval/num_clips", "eval/skipped_samples", "eval/skipped_shards")
    assert {k: over_http[k] for k in keys} == {k: from_disk[k] for k in keys} and over_http["eval/num_clips"] == 64
