"""data_prep/train_tokenizer.py and turbo_ds.data.tokenizer: training on captions, encoding,
a local transformers tokenizer folder, and the missing-file error."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from conftest import REPO
from turbo_ds.data.shards import write_shard
from turbo_ds.data.tokenizer import load_tokenizer

TRAIN = str(REPO / "data_prep" / "train_tokenizer.py")
COLOURS = ["red", "green", "blue", "yellow", "white", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
MOTIONS = ["moves up", "moves down", "moves to the left", "moves to the right", "spins", "stays still"]
CAPTIONS = [f"a {size} {c} {s} {m} {speed}" for size, c, s, m, speed in
            itertools.product(["small", "large"], COLOURS, SHAPES, MOTIONS, ["slowly", "quickly"])]  # 576


def train(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, TRAIN, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("spm")
    manifest = folder / "captions.csv"
    manifest.write_text("path,caption\n" + "".join(f"v{i % 200}.mp4,{c}\n" for i, c in enumerate(CAPTIONS)))
    proc = train("--out", folder / "tok", "--manifest", manifest, "--vocab-size", 40)
    assert "40 pieces" in proc.stdout and "576 captions" in proc.stdout and not proc.stderr
    return folder / "tok.model"


@pytest.mark.unit
def test_sentencepiece_encode_decode_round_trip(spm_model):
    tok = load_tokenizer(spm_model)
    assert tok.vocab_size == 40 and tok.pad_id == 0
    texts = ["a small red circle moves up slowly", "a large blue star spins quickly"]
    ids, mask, truncated = tok.encode(texts, max_length=32)
    assert ids.shape == mask.shape == (2, 32) and ids.dtype == mask.dtype == torch.long and truncated == 0
    for row, m, text in zip(ids, mask, texts):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any() and (row[n:] == 0).all()  # pad id 0 after the text
        assert row[0] == 2 and row[n - 1] == 3  # bos ... eos
        assert tok.decode(row[:n].tolist()) == text
    assert 1 not in ids[mask.bool()].tolist()  # no unk for in-vocabulary text
    assert load_tokenizer(spm_model.with_suffix("")).vocab_size == 40  # the PREFIX works too


@pytest.mark.unit
def test_truncation_keeps_eos_and_is_counted(spm_model):
    tok = load_tokenizer(spm_model)
    long = " ".join(CAPTIONS[:5])
    ids, mask, truncated = tok.encode([long, "a red star"], max_length=16)
    assert truncated == 1 and mask[0].all() and ids[0, 0] == 2 and ids[0, -1] == 3
    with pytest.raises(ValueError, match="max_length"):
        tok.encode(["x"], max_length=2)


@pytest.mark.e2e
def test_too_small_corpus_shrinks_the_vocabulary(tmp_path):
    manifest = tmp_path / "few.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"{i}.mp4", "caption": [c, c.upper()]}) + "\n"
                                for i, c in enumerate(CAPTIONS[:20])))
    proc = train("--out", tmp_path / "small", "--manifest", manifest, "--model-type", "bpe")  # default 8000
    assert "warning" in proc.stderr and "--vocab-size" in proc.stderr
    tok = load_tokenizer(tmp_path / "small.model")
    assert 4 < tok.vocab_size < 8000
    assert tok.decode(tok.encode([CAPTIONS[3]], 40)[0][0].tolist()) == CAPTIONS[3]


@pytest.mark.e2e
def test_train_from_shards_reads_txt_and_caption_lists(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    samples = [{"__key__": f"{i:09d}", "mp4": b"\0", "txt": c, "json": {"captions": [c, f"another view {i}"]}}
               for i, c in enumerate(CAPTIONS[:300])]
    write_shard(shards / "shard-000000.tar", samples[:150])
    write_shard(shards / "shard-000001.tar", samples[150:])
    proc = train("--out", tmp_path / "from_shards", "--shards", shards, "--vocab-size", 80, "--model-type", "unigram")
    assert "600 captions" in proc.stdout
    assert load_tokenizer(tmp_path / "from_shards.model").vocab_size == 80


@pytest.mark.unit
def test_transformers_tokenizer_folder(tmp_path):
    from transformers import BertTokenizerFast

    words = sorted({w for c in CAPTIONS for w in c.split()})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    # transformers 5 takes the vocabulary file as vocab=, 4.x as vocab_file=
    key = "vocab" if int(transformers.__version__.split(".")[0]) >= 5 else "vocab_file"
    BertTokenizerFast(**{key: str(vocab)}).save_pretrained(tmp_path / "bert")
    tok = load_tokenizer(tmp_path / "bert")
    assert tok.vocab_size == 5 + len(words) and tok.pad_id == 0
    ids, mask, truncated = tok.encode(["a red star spins", CAPTIONS[0] + " " + CAPTIONS[1]], max_length=10)
    assert ids.shape == (2, 10) and truncated == 1
    assert ids[0, :6].tolist() == [2, *(5 + words.index(w) for w in "a red star spins".split()), 3]
    assert mask[0].tolist() == [1] * 6 + [0] * 4 and ids[1, -1] == 3  # [SEP] kept when cut
    assert tok.decode(ids[0].tolist()) == "a red star spins"


@pytest.mark.unit
def test_missing_tokenizer_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tokenizer.py") as err:
        load_tokenizer(tmp_path / "nope.model")
    assert str(tmp_path / "nope.model") in str(err.value)
    not_a_model = tmp_path / "bad.model"
    not_a_model.write_text("hello")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        load_tokenizer(not_a_model)


@pytest.mark.e2e
def test_manifest_without_captions_is_a_clear_error(tmp_path):
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\na.mp4,run\n")
    proc = train("--out", tmp_path / "x", "--manifest", manifest, check=False)
    assert proc.returncode == 2 and "no 'caption' column" in proc.stderr
