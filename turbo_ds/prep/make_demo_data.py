"""Generate a demo video dataset: motion-labelled clips, H.264 mp4 in WebDataset shards.

    python data_prep/make_demo_data.py --out data/demo [--seed 0 --train 2048 --val 512]
    python data_prep/make_demo_data.py --mode long --out data/demo_long

--mode action (default): 16-frame clips, class = direction x speed of the motion (8 classes).
--mode long: 64-frame videos in 4 phases, class = the order of the 4 motion directions
(8 classes); for the long_video task.

Writes OUT/train and OUT/val dataset folders (tar shards + manifest.json). Deterministic
for a given seed and settings; an interrupted run resumes where it stopped.
"""

import argparse
import time

from turbo_ds.prep.demo import DemoSettings, LongDemoSettings, generate_demo, generate_long_demo


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--mode", choices=["action", "long"], default="action",
                   help="action: short direction x speed clips; long: order of 4 motion phases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=2048, help="number of training clips")
    p.add_argument("--val", type=int, default=512, help="number of validation clips")
    p.add_argument("--frames", type=int, help="frames per clip (default: 16 action, 64 long)")
    p.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--shard-size", type=int, default=128, help="clips per tar shard")
    p.add_argument("--workers", type=int, default=2, help="parallel rendering processes")
    a = p.parse_args(argv)
    start = time.time()
    if a.mode == "long":
        settings = LongDemoSettings(seed=a.seed, frames=a.frames or 64, size=a.size, fps=a.fps)
        generate_long_demo(a.out, a.train, a.val, settings, shard_size=a.shard_size, workers=a.workers)
    else:
        settings = DemoSettings(seed=a.seed, frames=a.frames or 16, size=a.size, fps=a.fps)
        generate_demo(a.out, a.train, a.val, settings, shard_size=a.shard_size, workers=a.workers)
    print(f"demo data: {a.train} train + {a.val} val clips in {a.out} ({time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
