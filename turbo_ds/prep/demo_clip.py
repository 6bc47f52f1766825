"""A small random-init CLIP folder for the demo recipes: the library behind data_prep/make_demo_clip.py.

``make_demo_clip`` writes what ``CLIPModel.save_pretrained`` and ``CLIPTokenizer.save_pretrained``
write (``CLIPModel.from_pretrained`` and ``CLIPTokenizerFast.from_pretrained`` load it): both
towers sized like the demo model, and a CLIP-style byte-level BPE tokenizer (CLIP's
normalisation, pre-tokenisation, ``</w>`` word ends and ``<|startoftext|>``/``<|endoftext|>``)
trained on the demo captions, so that the demo exercises the same loading path as
``openai/clip-vit-base-patch16``. The weights are random: it stands in for a real CLIP folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def make_demo_clip(out: str | Path, captions_from: str | Path, *, width: int = 128, depth: int = 4, heads: int = 4,
                   mlp_ratio: float = 4.0, patch_size: int = 8, image_size: int = 64, text_width: int = 128,
                   text_depth: int = 2, text_heads: int = 4, text_positions: int = 32, embed_dim: int = 128,
                   vocab_size: int = 1000, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Write the folder ``out`` (atomically: it appears complete or not at all) from the captions of the
    shards in ``captions_from``; ``vocab_size`` is an upper bound (BPE stops when no pair is left to merge)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from turbo_ds.models.text import quiet_transformers
    from turbo_ds.prep.tokenizer_trainer import read_captions

    out = Path(out)
    if not Path(captions_from).exists():
        raise FileNotFoundError(f"no captions at {captions_from}: generate the demo data first (python "
                                "data_prep/make_demo_data.py --out data/demo) or pass a folder of caption shards")
    captions = read_captions(None, str(captions_from))
    tokenizer = CLIPTokenizer().train_new_from_iterator(captions, vocab_size=vocab_size,  # CLIP's BPE pipeline
                                                        show_progress=False)
    text = dict(vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=4 * text_width,
                num_hidden_layers=text_depth, num_attention_heads=text_heads, max_position_embeddings=text_positions,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=width, intermediate_size=int(width * mlp_ratio), num_hidden_layers=depth,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim))
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    log(f"demo CLIP folder {out}: random-init CLIPModel (vision {width}x{depth}, patch {patch_size}, image "
        f"{image_size}; text {text_width}x{text_depth}, {text_positions} positions; projection {embed_dim}) and a "
        f"CLIP BPE tokenizer of {len(tokenizer)} tokens trained on {len(captions)} captions of {captions_from}")
    return out
