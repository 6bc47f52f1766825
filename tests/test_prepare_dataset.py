"""data_prep/prepare_dataset.py: each dataset's annotation files, written here in its documented
format (a few rows, real-looking ids, names with commas and quotes, videos missing on disk), real
videos encoded here with PyAV, real shards read back with plain webdataset; then a Kinetics-format
folder trains the K400 recipe for 2 steps."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_metrics, run_train
from test_build_shards import make_video, read_samples
from turbo_ds.prep.datasets import DATASETS, AnnotationError, VideoIndex
from turbo_ds.prep.prepare_dataset import main as prepare

PREPARE = str(REPO / "data_prep" / "prepare_dataset.py")
# (container, codec) per extension: each dataset's videos in the format it distributes
FORMATS = {"mp4": ("mp4", "libx264"), "webm": ("webm", "libvpx-vp9"), "avi": ("avi", "mpeg4")}


def videos(root: Path, *names: str, frames: int = 12, fps: int = 10) -> Path:
    """Tiny real videos at root/<name> (sub-folders made), a different texture each."""
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt, codec = FORMATS[name.rsplit(".", 1)[1]]
        make_video(path, fmt, codec, size=(36, 28), frames=frames, fps=fps, texture=i)
    return root


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV as the datasets ship them: quoted only where needed (commas, quotes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    path.write_text(buf.getvalue())
    return path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


def run(capsys, name: str, annotations: Path, root: Path, split: str, out: Path, *extra: str) -> tuple[int, str]:
    status = prepare([name, "--annotations", str(annotations), "--video-root", str(root), "--split", split,
                      "--out", str(out), "--workers", "1", "--short-side", "0", *extra])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def built(out: Path) -> tuple[dict, list[dict], list[dict]]:
    """(manifest.json, samples in order, errors.jsonl records)."""
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    return json.loads((out / "manifest.json").read_text()), read_samples(out), errors


# ---------------------------------------------------------------- fixtures in each documented format

K400_HEADER = ["label", "youtube_id", "time_start", "time_end", "split"]
K400_TRAIN = [
    ["abseiling", "--33Lscn6sk", 4, 14, "train"],                          # clip, flat (CVDF archives)
    ["passing American football (in game)", "-5KQ66BBWC4", 100, 110, "train"],  # clip in its label folder
    ['playing "kickball", badly', "0RZeA0-Q3gA", 1, 2, "train"],          # full video: cut to [1, 2]
    ["massaging person's head", "zZ9x_y-8Ab0", 30, 40, "train"],          # not on disk
    ["abseiling", "Dp1JmC7yrJQ", 0, 10, "train"],
]
K400_VAL = [["abseiling", "_x4Pqwmy-kE", 12, 22, "val"], ["massaging person's head", "Ni0BDYqh_7M", 3, 13, "val"],
            ['playing "kickball", badly', "kZbmKhRz2sE", 0, 10, "val"]]
K400_CLASSES = ["abseiling", "massaging person's head", "passing American football (in game)",
                'playing "kickball", badly']


def kinetics_fixture(tmp: Path) -> tuple[Path, Path, Path]:
    """(annotations folder, train video root, val video root) as the CVDF release lays them out."""
    ann = tmp / "kinetics400"
    write_csv(ann / "train.csv", K400_HEADER, K400_TRAIN)
    write_csv(ann / "validate.csv", K400_HEADER, K400_VAL)
    train = videos(tmp / "train", "--33Lscn6sk_000004_000014.mp4",
                   "passing American football (in game)/-5KQ66BBWC4_000100_000110.mp4",
                   "Dp1JmC7yrJQ_000000_000010.mp4")
    videos(train, "0RZeA0-Q3gA.mp4", frames=30)  # 3 s full video
    val = videos(tmp / "val", "_x4Pqwmy-kE_000012_000022.mp4", "Ni0BDYqh_7M_000003_000013.mp4",
                 "kZbmKhRz2sE_000000_000010.mp4")
    return ann, train, val


# ---------------------------------------------------------------- one test per adapter

@pytest.mark.e2e
def test_kinetics_clips_full_videos_missing_and_official_class_order(tmp_path, capsys):
    ann, train, _ = kinetics_fixture(tmp_path)
    out = tmp_path / "k400_train"
    status, log = run(capsys, "kinetics400", ann / "train.csv", train, "train", out, "--fps", "10")
    assert status == 0, log
    assert "kinetics400 train: 5 listed / 4 found / 4 written (1 not found on disk" in log
    assert "names 4 classes, not Kinetics-400's 400" in log  # a partial class list warns
    manifest, samples, errors = built(out)
    assert manifest["class_names"] == K400_CLASSES == json.loads((out / "class_names.json").read_text())["class_names"]
    assert [s["json"]["source"] for s in samples] == [
        "--33Lscn6sk_000004_000014.mp4", "passing American football (in game)/-5KQ66BBWC4_000100_000110.mp4",
        "0RZeA0-Q3gA.mp4", "Dp1JmC7yrJQ_000000_000010.mp4"]
    assert [s["cls"] for s in samples] == [0, 2, 3, 0]
    cut = samples[2]["json"]
    assert cut["source_start"] == 1.0 and cut["frames"] == 10  # [1, 2) s of the full video at 10 fps
    assert errors == [{"path": "zZ9x_y-8Ab0_000030_000040.mp4", "reason": "file not found: "
                       "zZ9x_y-8Ab0_000030_000040.mp4", "row": 4}]
    # the same command again resumes (nothing to do) and reports the same counts
    status, log = run(capsys, "kinetics400", ann / "train.csv", train, "train", out, "--fps", "10")
    assert status == 0 and "5 listed / 4 found / 4 written" in log
    # a video added since: the folder's build manifest is not overwritten, the error says what to do
    videos(train, "zZ9x_y-8Ab0_000030_000040.mp4")
    status, log = run(capsys, "kinetics400", ann / "train.csv", train, "train", out, "--fps", "10")
    assert status == 2 and "was built from another listing" in log and "use a new --out" in log
    # full videos must be cut: --no-transcode cannot
    status, log = run(capsys, "kinetics400", ann, train, "train", tmp_path / "raw", "--no-transcode")
    assert status == 2 and "1 videos are full source videos" in log and "drop --no-transcode" in log


@pytest.mark.e2e
def test_a_dataset_built_in_parts_is_the_one_built_at_once(tmp_path, capsys):
    """--part/--parts pass through to the builder (a Slurm array task's defaults too); the last part merges."""
    ann, train, _ = kinetics_fixture(tmp_path)
    status, log = run(capsys, "kinetics400", ann, train, "train", tmp_path / "one", "--shard-size", "1")
    assert status == 0 and "5 listed / 4 found / 4 written" in log
    status, log = run(capsys, "kinetics400", ann, train, "train", tmp_path / "parts", "--shard-size", "1",
                      "--part", "1", "--parts", "2")
    assert status == 0 and "part 1 of 2 (shards 2-4 of 5)" in log and "written count comes with the merge" in log
    status, log = run(capsys, "kinetics400", ann, train, "train", tmp_path / "parts", "--shard-size", "1",
                      "--part", "0", "--parts", "2")
    assert status == 0 and "all 2 parts done, merged: 4 written, 1 skipped" in log and "4 found / 4 written" in log
    for name in ("errors.jsonl", *(f"shard-{k:06d}.tar" for k in range(5) if k != 3)):  # row 4 is not on disk
        assert (tmp_path / "parts" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    manifests = [built(tmp_path / out)[0] for out in ("one", "parts")]
    for manifest in manifests:  # the one difference: where each build manifest was written (OUT/...)
        assert manifest["build"]["settings"].pop("manifest").endswith("build_manifest.jsonl")
    assert manifests[0] == manifests[1]


@pytest.mark.e2e
def test_ssv2_ids_from_the_labels_json(tmp_path, capsys):
    ann = tmp_path / "labels"
    # the file's key order is not the id order: ids come from the values
    write_json(ann / "something-something-v2-labels.json", {
        "Putting something into something": "1", "Approaching something with your camera": "0",
        "Pushing something from left to right": "2"})
    write_json(ann / "something-something-v2-validation.json", [
        {"id": "74225", "label": 'putting "pen", eraser into box', "template": "Putting [something] into [something]",
         "placeholders": ['"pen", eraser', "box"]},
        {"id": "116154", "label": "approaching a cup with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a cup"]},
        {"id": "198186", "label": "pushing a ball from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a ball"]},
        {"id": "3451", "label": "tearing paper", "template": "Tearing [something] into two pieces",
         "placeholders": ["paper"]},  # a template the labels JSON does not know
    ])
    root = videos(tmp_path / "20bn-something-something-v2", "74225.webm", "116154.webm", "3451.webm")
    out = tmp_path / "val"
    status, log = run(capsys, "ssv2", ann, root, "val", out)
    assert status == 0, log
    assert "ssv2 val: 4 listed / 3 found / 2 written (1 not found on disk, 1 found but unusable" in log
    manifest, samples, errors = built(out)
    assert manifest["class_names"] == ["Approaching something with your camera", "Putting something into something",
                                       "Pushing something from left to right"]
    assert [(s["json"]["source"], s["cls"]) for s in samples] == [("74225.webm", 1), ("116154.webm", 0)]
    assert [(e["path"], e["reason"]) for e in errors] == [
        ("198186.webm", "file not found: 198186.webm"),
        ("3451.webm", "label 'Tearing something into two pieces' is not in the class list")]


@pytest.mark.e2e
def test_ucf101_classind_ids_and_test_labels_from_folders(tmp_path, capsys):
    ann = tmp_path / "ucfTrainTestlist"
    ann.mkdir()
    (ann / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")  # CRLF, as shipped
    (ann / "trainlist01.txt").write_bytes(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                                          b"YoYo/v_YoYo_g25_c05.avi 3\r\n")
    (ann / "testlist01.txt").write_bytes(b"HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n"
                                         b"YoYo/v_YoYo_g01_c01.avi\r\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi\r\n")
    root = videos(tmp_path / "UCF-101", "HandstandPushups/v_HandStandPushups_g01_c01.avi",
                  "YoYo/v_YoYo_g01_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi")
    out = tmp_path / "test1"
    status, log = run(capsys, "ucf101", ann, root, "test1", out)
    assert status == 0, log
    assert "ucf101 test1: 3 listed / 2 found / 2 written (1 not found on disk" in log
    manifest, samples, errors = built(out)
    assert manifest["class_names"] == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert [(s["json"]["source"], s["cls"]) for s in samples] == [
        ("HandstandPushups/v_HandStandPushups_g01_c01.avi", 1), ("YoYo/v_YoYo_g01_c01.avi", 2)]
    assert errors[0]["path"] == "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi"


@pytest.mark.e2e
def test_hmdb51_split_files_sorted_classes(tmp_path, capsys):
    ann = tmp_path / "testTrainMulti_7030_splits"
    ann.mkdir()
    odd = "Bob's_Tricks,_Part_2_cartwheel_f_cm_np1_ba_med_0.avi"
    (ann / "cartwheel_test_split1.txt").write_text(f"{odd} 1 \nCartwheel_Training_cartwheel_f_cm_np1_fr_med_1.avi 2 \n")
    (ann / "cartwheel_test_split2.txt").write_text(f"{odd} 2 \n")
    (ann / "brush_hair_test_split1.txt").write_text("April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
                                                    "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 0 \n"
                                                    "#20_Rhythm_clap_brush_hair_u_nm_np1_fr_goo_2.avi 1 \n")
    root = videos(tmp_path / "hmdb51", f"cartwheel/{odd}", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi")
    out = tmp_path / "train1"
    status, log = run(capsys, "hmdb51", ann, root, "train1", out)
    assert status == 0, log
    assert "hmdb51 train1: 3 listed / 2 found / 2 written (1 not found on disk" in log
    manifest, samples, errors = built(out)
    assert manifest["class_names"] == ["brush_hair", "cartwheel"]
    assert [(s["json"]["source"], s["cls"]) for s in samples] == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0), (f"cartwheel/{odd}", 1)]
    assert errors[0]["path"] == "brush_hair/#20_Rhythm_clap_brush_hair_u_nm_np1_fr_goo_2.avi"


@pytest.mark.e2e
def test_msrvtt_9k_train_captions_and_1ka_test(tmp_path, capsys):
    ann = tmp_path / "msrvtt_data"
    write_json(ann / "MSRVTT_data.json", {
        "videos": [{"video_id": f"video{i}", "split": "train" if i < 3 else "test", "category": 9} for i in range(4)],
        "sentences": [{"video_id": f"video{i % 4}", "sen_id": i, "caption": f'caption {i}, "quoted"'}
                      for i in range(8)]})
    write_csv(ann / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video1"], ["video2"]])
    write_csv(ann / "MSRVTT_JSFUSION_test.csv", ["", "key", "vid_key", "video_id", "sentence"],
              [[0, "ret0", "msr7579", "video7579", 'a girl, wearing "red", sings'],
               [1, "ret1", "msr7725", "video7725", "a man talks"]])
    root = videos(tmp_path / "MSRVTT" / "videos" / "all", "video0.mp4", "video2.mp4", "video7579.mp4")
    status, log = run(capsys, "msrvtt", ann, root, "train9k", tmp_path / "train9k")
    assert status == 0, log
    assert "msrvtt train9k: 3 listed / 2 found / 2 written (1 not found on disk" in log
    manifest, samples, _ = built(tmp_path / "train9k")
    assert manifest["task"] == "video_language" and manifest["class_names"] is None
    assert [s["json"]["captions"] for s in samples] == [['caption 0, "quoted"', 'caption 4, "quoted"'],
                                                        ['caption 2, "quoted"', 'caption 6, "quoted"']]
    status, log = run(capsys, "msrvtt", ann, root, "test1k", tmp_path / "test1k")
    assert status == 0 and "msrvtt test1k: 2 listed / 1 found / 1 written" in log, log
    [sample] = built(tmp_path / "test1k")[1]
    assert sample["txt"] == 'a girl, wearing "red", sings' and sample["json"]["captions"] == [sample["txt"]]


@pytest.mark.e2e
def test_webvid_results_csv_page_dir_layout(tmp_path, capsys):
    ann = write_csv(tmp_path / "results_2M_val.csv", ["videoid", "contentUrl", "duration", "page_dir", "name"], [
        [1053841541, "https://ak.picdn.net/shutterstock/videos/1053841541/preview/stock-footage.mp4", "PT00H00M30S",
         "1027059_1027060", 'Travel blogger shoot a story on top of mountains, young man holds "camera"'],
        [21179416, "https://ak.picdn.net/shutterstock/videos/21179416/preview/stock-footage.mp4", "PT00H00M09S",
         "006001_006050", "Aerial shot of winter forest"],
        [1015861789, "https://ak.picdn.net/shutterstock/videos/1015861789/preview/stock-footage.mp4", "PT00H00M11S",
         "018101_018150", "Pan of a city at night"]])
    root = videos(tmp_path / "webvid", "1027059_1027060/1053841541.mp4", "006001_006050/21179416.mp4")
    status, log = run(capsys, "webvid", ann, root, "val", tmp_path / "val")
    assert status == 0, log
    assert "webvid val: 3 listed / 2 found / 2 written (1 not found on disk" in log
    _, samples, errors = built(tmp_path / "val")
    assert [s["txt"] for s in samples] == ['Travel blogger shoot a story on top of mountains, young man holds "camera"',
                                           "Aerial shot of winter forest"]
    assert errors[0]["path"] == "018101_018150/1015861789.mp4"


@pytest.mark.e2e
def test_breakfast_segments_in_seconds_and_person_splits(tmp_path, capsys):
    ann = tmp_path / "segmentation_coarse"
    gt = "1-10 SIL  \n11-25 take_bowl\n26-30 SIL\n"
    for stem in ("P03_cam01_P03_cereals", "P16_webcam01_P16_tea", "P20_stereo01_P20_coffee", "P40_cam02_P40_milk"):
        (ann / stem.rsplit("_", 1)[1]).mkdir(parents=True, exist_ok=True)
        (ann / stem.rsplit("_", 1)[1] / f"{stem}.txt").write_text(gt)
    root = videos(tmp_path / "BreakfastII_15fps_qvga_sync", "P03/cam01/P03_cereals.avi", "P16/webcam01/P16_tea.avi",
                  "P20/stereo/P20_coffee_ch0.avi", "P20/stereo/P20_coffee_ch1.avi", frames=30, fps=15)
    status, log = run(capsys, "breakfast", ann, root, "train1", tmp_path / "train1", "--fps", "15")
    assert status == 0, log
    assert "breakfast train1: 3 listed / 2 found / 2 written (1 not found on disk" in log
    manifest, samples, errors = built(tmp_path / "train1")
    assert manifest["task"] == "long_video" and manifest["class_names"] == ["cereals", "coffee", "milk", "tea"]
    assert [(s["json"]["source"], s["cls"]) for s in samples] == [("P20/stereo/P20_coffee_ch0.avi", 1),
                                                                  ("P16/webcam01/P16_tea.avi", 3)]
    seconds = [(round(first / 15, 6), round(last / 15, 6), label)  # frames 1-10 are [0, 10/15) s
               for first, last, label in ((0, 10, "SIL"), (10, 25, "take_bowl"), (25, 30, "SIL"))]
    assert [(s["start"], s["end"], s["label"]) for s in samples[0]["json"]["segments"]] == seconds
    assert errors[0]["path"] == "P40/cam02/P40_milk.avi"
    status, log = run(capsys, "breakfast", ann, root, "test1", tmp_path / "test1", "--fps", "15")
    assert status == 0 and "breakfast test1: 1 listed / 1 found / 1 written" in log, log


@pytest.mark.e2e
def test_coin_tasks_by_recipe_type_with_step_segments(tmp_path, capsys):
    def entry(recipe_type: int, cls: str, subset: str, steps: list) -> dict:
        return {"recipe_type": recipe_type, "class": cls, "subset": subset, "start": 0.0, "end": 1.2,
                "duration": 1.2, "video_url": "https://www.youtube.com/embed/x",
                "annotation": [{"id": str(i), "segment": seg, "label": label} for i, (seg, label) in enumerate(steps)]}
    database = {
        "-0og5HCz5sM": entry(1, "ReplaceMobileScreenProtector", "training",
                             [([0.2, 0.6], "remove the old film, carefully"), ([0.6, 1.0], 'stick the "new" one')]),
        "4Uf2z2cL8Hw": entry(0, "AssembleBed", "training", [([0.1, 0.9], "put the bed board together")]),
        "IWtQ0pTyvT4": entry(2, "MakeSandwich", "training", [([0.0, 1.0], "spread the sauce")]),
        "z8FNPm7fJ2I": entry(0, "AssembleBed", "testing", []),
    }
    ann = write_json(tmp_path / "COIN.json", {"database": database})
    root = videos(tmp_path / "coin_videos", "1/-0og5HCz5sM.mp4", "0/4Uf2z2cL8Hw.mp4", "0/z8FNPm7fJ2I.mp4")
    status, log = run(capsys, "coin", ann, root, "train", tmp_path / "train")
    assert status == 0, log
    assert "coin train: 3 listed / 2 found / 2 written (1 not found on disk" in log
    manifest, samples, _ = built(tmp_path / "train")
    assert manifest["class_names"] == ["AssembleBed", "ReplaceMobileScreenProtector", "MakeSandwich"]
    assert [s["cls"] for s in samples] == [1, 0]
    assert samples[0]["json"]["segments"] == [{"start": 0.2, "end": 0.6, "label": "remove the old film, carefully"},
                                              {"start": 0.6, "end": 1.0, "label": 'stick the "new" one'}]


# ---------------------------------------------------------------- bad input

@pytest.mark.unit
def test_another_datasets_file_names_columns_found_and_expected(tmp_path, capsys):
    webvid = write_csv(tmp_path / "results_2M_train.csv", ["videoid", "contentUrl", "duration", "page_dir", "name"],
                       [[1, "u", "PT00H00M09S", "0_1", "a cat"]])
    status, log = run(capsys, "kinetics400", webvid, tmp_path, "train", tmp_path / "out")
    assert status == 2 and "is not an official Kinetics CSV" in log
    assert "found columns videoid, contentUrl, duration, page_dir, name" in log
    assert "expected columns label, youtube_id, time_start, time_end" in log
    assert not (tmp_path / "out").exists()  # nothing written

    coin = write_json(tmp_path / "coin" / "COIN.json", {"database": {"x": {"recipe_type": 0, "class": "A"}}})
    with pytest.raises(AnnotationError, match=r"found keys class, recipe_type; expected keys annotation, class, "
                                              r"recipe_type, subset"):
        DATASETS["coin"].read(coin, "train")
    with pytest.raises(AnnotationError, match=r"not the Something-Something v2 labels JSON .*found list"):
        write_json(tmp_path / "ssv2" / "labels.json", [{"id": "1"}])
        write_json(tmp_path / "ssv2" / "train.json", [])
        DATASETS["ssv2"].read(tmp_path / "ssv2", "train")
    (tmp_path / "ucf").mkdir()
    (tmp_path / "ucf" / "classInd.txt").write_text("ApplyEyeMakeup 1\n")
    with pytest.raises(AnnotationError, match=r"found line 1 'ApplyEyeMakeup 1'; expected '<id> <ClassName>'"):
        DATASETS["ucf101"].read(tmp_path / "ucf", "train1")


@pytest.mark.unit
def test_another_version_or_an_unlabelled_test_set_is_refused(tmp_path, capsys):
    k600 = write_csv(tmp_path / "k600" / "train.csv", K400_HEADER,
                     [[f"class {i:03d}", f"id{i:08d}xx", 0, 10, "train"] for i in range(600)])
    status, log = run(capsys, "kinetics400", k600, tmp_path, "train", tmp_path / "out")
    assert status == 2 and "names 600 classes, but Kinetics-400 has 400" in log and "another dataset or version" in log
    test = write_csv(tmp_path / "k600" / "test.csv", ["youtube_id", "time_start", "time_end", "split"],
                     [["id00000000x", 0, 10, "test"]])
    status, log = run(capsys, "kinetics600", test, tmp_path, "test", tmp_path / "out")
    assert status == 2 and "has no label column" in log and "unlabelled test set" in log
    status, log = run(capsys, "kinetics400", k600, tmp_path, "val", tmp_path / "out")  # a file of another split
    assert status == 2 and "has no rows of split 'val' (its split column holds train)" in log


@pytest.mark.unit
def test_unknown_split_lists_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare(["ucf101", "--annotations", str(tmp_path), "--video-root", str(tmp_path), "--split", "train",
                 "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "--split train: ucf101 has the splits train1, test1, train2, test2, train3, test3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare(["kinetics400", "--annotations", str(tmp_path), "--video-root", str(tmp_path), "--split", "val",
                 "--out", str(tmp_path / "out"), "--task", "long_video"])
    assert "--task: set by prepare_dataset" in capsys.readouterr().err


@pytest.mark.unit
def test_video_index_by_path_and_by_stem(tmp_path):
    for name in ("a/x.webm", "a/x.mp4", "b/y.avi", "c/y.mkv", "z.mp4", ".build/z2.mp4", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    index = VideoIndex(tmp_path)
    assert index.find("a/x") == index.find("x") == "a/x.mp4"  # mp4 preferred over webm in one folder
    assert index.find("b/y") == "b/y.avi" and index.find("y") is None  # a stem in two folders is ambiguous
    assert index.ambiguous == {"y": ["b/y.avi", "c/y.mkv"]}
    assert index.find("z") == "z.mp4" and index.find("z2") is None and index.find("notes") is None


# ---------------------------------------------------------------- the K400 recipe on a Kinetics-format folder

@pytest.mark.e2e
def test_k400_recipe_trains_two_steps_on_a_prepared_kinetics_folder(tmp_path):
    ann, train, val = kinetics_fixture(tmp_path)
    def prepare_cli(root: Path, split: str, *extra: str) -> str:
        proc = subprocess.run([sys.executable, PREPARE, "kinetics400", "--annotations", str(ann), "--video-root",
                               str(root), "--split", split, "--out", str(tmp_path / "k400" / split), "--workers", "1",
                               "--short-side", "32", "--fps", "10", *extra], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    assert "kinetics400 train: 5 listed / 4 found / 4 written" in prepare_cli(train, "train")
    assert "kinetics400 val: 3 listed / 3 found / 3 written" in prepare_cli(
        val, "val", "--class-names", str(tmp_path / "k400/train"))
    ds = json.loads((REPO / "ds_configs" / "zero0_bf16.json").read_text())
    ds_path = write_json(tmp_path / "ds.json", {**ds, "train_micro_batch_size_per_gpu": 2})  # 4 clips per epoch
    run_dir = tmp_path / "run"
    sets = [f"run_dir={run_dir}", f"data.train={tmp_path}/k400/train", f"data.val={tmp_path}/k400/val",
            "model.pretrained=null", "model.num_frames=4", "model.img_size=32", "model.width=32", "model.depth=2",
            "model.heads=2", "data.num_workers=0", "data.shuffle_buffer=4", "train.steps=2", "train.warmup_steps=1",
            "train.log_every=1", "train.eval_every=2", "train.ckpt_every=2", "turbo.full_token_steps=1",
            "eval.batch_size=2"]
    proc = run_train([arg for s in sets for arg in ("--set", s)], ranks=None, ds_config=str(ds_path),
                     config="configs/k400_vitb.yaml", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_metrics(run_dir)
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
    [evaluation] = [r for r in records if "eval/top1" in r]
    assert evaluation["num_classes"] == 4 and evaluation["eval/num_clips"] == 3
