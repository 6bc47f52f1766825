"""Write a small random-init CLIP folder (model + CLIP BPE tokenizer trained on the demo captions).

    python data_prep/make_demo_clip.py --out data/demo_clip [--captions data/demo/train]

CLIPModel.from_pretrained(OUT) and CLIPTokenizerFast.from_pretrained(OUT) load it; the
demo recipe configs/demo_clip_video_language.yaml starts both towers from it (and writes
it on first use). The defaults size it like the demo model (vision width 128, depth 4,
patch 8 at 64 px; text width 128, depth 2).
"""

import argparse
import sys
from pathlib import Path

from turbo_ds.prep.demo_clip import make_demo_clip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist)")
    p.add_argument("--captions", default="data/demo/train",
                   help="dataset folder (or quoted glob) of caption shards the tokenizer is trained on")
    p.add_argument("--width", type=int, default=128, help="vision width (model.width)")
    p.add_argument("--depth", type=int, default=4, help="vision blocks (model.depth)")
    p.add_argument("--heads", type=int, default=4, help="vision attention heads (model.heads)")
    p.add_argument("--patch-size", type=int, default=8, help="model.patch_size")
    p.add_argument("--image-size", type=int, default=64, help="model.img_size")
    p.add_argument("--text-width", type=int, default=128)
    p.add_argument("--text-depth", type=int, default=2)
    p.add_argument("--text-heads", type=int, default=4)
    p.add_argument("--text-positions", type=int, default=32, help="longest caption in tokens (text.max_length)")
    p.add_argument("--embed-dim", type=int, default=128, help="projection_dim (text.embed_dim)")
    p.add_argument("--vocab-size", type=int, default=1000, help="at most this many tokens (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.out.exists():
        print(f"make_demo_clip: error: {a.out} exists; remove it or choose another --out", file=sys.stderr)
        return 2
    try:
        make_demo_clip(a.out, a.captions, width=a.width, depth=a.depth, heads=a.heads, patch_size=a.patch_size,
                       image_size=a.image_size, text_width=a.text_width, text_depth=a.text_depth,
                       text_heads=a.text_heads, text_positions=a.text_positions, embed_dim=a.embed_dim,
                       vocab_size=a.vocab_size, seed=a.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"make_demo_clip: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
