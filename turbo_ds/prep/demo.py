"""Deterministic synthetic video datasets whose labels can only be read from motion.

Action demo (``generate_demo``): each clip shows 1-2 shapes (circle/square/triangle,
random colour and size) on a random static texture. All shapes share one motion, and the
class is that motion: 4 directions x 2 speeds. Shapes wrap around the frame edges, so
position, shape, colour and background in any single frame carry no information about
the label.

Long-video demo (``generate_long_demo``): longer videos in 4 phases; the shapes move in
a different direction in each phase (each of the 4 directions once), and the class is
the ORDER of the directions, one of 8 fixed orders. Every video contains the same 4
events, and every direction appears equally often in every phase across the classes, so
neither one short window nor the set of events tells the class: the model has to place
events in time over the whole video.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from turbo_ds.data.shards import shard_name, write_manifest, write_shard
from turbo_ds.prep.transcode import encode_mp4

DIRECTIONS = {"up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}
DIRECTION_WORDS = {"up": "up", "down": "down", "left": "to the left", "right": "to the right"}
SPEEDS = {"slow": 1.5, "fast": 3.5}  # pixels per frame at 64 px, scaled with the frame size
SPEED_WORDS = {"slow": "slowly", "fast": "quickly"}
CLASS_NAMES = [f"{d}_{s}" for d in DIRECTIONS for s in SPEEDS]
CLASS_TEXTS = [f"{DIRECTION_WORDS[d]} {SPEED_WORDS[s]}" for d in DIRECTIONS for s in SPEEDS]  # as captions say it
COLOURS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 220, 50),
    "magenta": (210, 50, 200), "cyan": (60, 210, 220), "white": (245, 245, 245), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class DemoSettings:
    """How the demo clips are rendered and encoded (stored in the manifest)."""

    seed: int = 0
    frames: int = 16
    size: int = 64
    fps: float = 8.0
    crf: int = 23


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random background: a coarse colour grid upsampled, plus fine grain."""
    coarse = rng.uniform(70, 150, (5, 5, 3))
    pos = np.linspace(0, 4, size)
    i0 = np.floor(pos).astype(int).clip(0, 3)
    frac = (pos - i0)[:, None]
    rows = coarse[i0] * (1 - frac[..., None]) + coarse[i0 + 1] * frac[..., None]  # (S, 5, 3)
    cols = rows[:, i0] * (1 - frac[None, :, :]) + rows[:, i0 + 1] * frac[None, :, :]  # (S, S, 3)
    return np.clip(cols + rng.normal(0, 3, cols.shape), 0, 255)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) <= 0.85 * r
    return (dy >= -r) & (dy <= 0.8 * r) & (abs(dx) <= 0.6 * (dy + r))  # triangle, apex up


def _draw(background: np.ndarray, objects: list[dict], offset: np.ndarray) -> np.ndarray:
    """Frames (F, S, S, 3) uint8: ``objects`` over ``background``, all shifted by ``offset[t]`` (F, 2) in frame t.

    Offsets wrap on a torus: shapes leaving one edge re-enter at the opposite one, so a
    shape's position carries no information, only its motion does.
    """
    size = background.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    frames = np.empty((len(offset), size, size, 3), np.uint8)
    for t, (ox, oy) in enumerate(offset):
        img = background.copy()
        for o in objects:
            dx = (xx - o["x"] - ox + size / 2) % size - size / 2
            dy = (yy - o["y"] - oy + size / 2) % size - size / 2
            img[_shape_mask(o["shape"], dx, dy, o["radius"])] = COLOURS[o["colour"]]
        frames[t] = img.astype(np.uint8)
    return frames


def render_clip(rng: np.random.Generator, label: int, s: DemoSettings) -> tuple[np.ndarray, str, dict]:
    """Render one clip of class ``label``: (T, S, S, 3) uint8 frames, a caption, metadata."""
    direction, speed = CLASS_NAMES[label].split("_")
    angle = np.deg2rad(rng.uniform(-12, 12))
    ux, uy = DIRECTIONS[direction]
    vx, vy = ux * np.cos(angle) - uy * np.sin(angle), ux * np.sin(angle) + uy * np.cos(angle)
    step = SPEEDS[speed] * rng.uniform(0.85, 1.15) * s.size / 64

    background = _texture(rng, s.size)
    objects = []
    for _ in range(rng.integers(1, 3)):
        colour = str(rng.choice(list(COLOURS)))
        objects.append(dict(shape=str(rng.choice(SHAPES)), colour=colour,
                            radius=float(rng.uniform(7, 13) * s.size / 64),
                            x=float(rng.uniform(0, s.size)), y=float(rng.uniform(0, s.size))))
    frames = _draw(background, objects, np.outer(np.arange(s.frames), (vx * step, vy * step)))

    nouns = [f"{'small' if o['radius'] < 10 * s.size / 64 else 'large'} {o['colour']} {o['shape']}" for o in objects]
    verb = "moves" if len(nouns) == 1 else "move"
    caption = f"a {' and a '.join(nouns)} {verb} {DIRECTION_WORDS[direction]} {SPEED_WORDS[speed]}"
    meta = {"direction": direction, "speed": speed, "pixels_per_frame": step, "objects": objects}
    return frames, caption, meta


def make_sample(split: str, index: int, s: DemoSettings) -> dict:
    """The sample ``index`` of ``split``: depends only on (seed, split, index)."""
    rng = np.random.default_rng([s.seed, {"train": 0, "val": 1}[split], index])
    label = index % len(CLASS_NAMES)  # balanced classes
    frames, caption, meta = render_clip(rng, label, s)
    info = {"fps": s.fps, "frames": s.frames, "width": s.size, "height": s.size,
            "duration": s.frames / s.fps, "source": "turbo_ds.demo", "label": CLASS_NAMES[label], **meta}
    return {"__key__": f"{split}{index:07d}", "mp4": encode_mp4(frames, s.fps, s.crf),
            "cls": label, "txt": caption, "json": info}


def _write_demo_shard(args: tuple) -> None:
    path, make, split, indices, settings = args
    write_shard(path, [make(split, i, settings) for i in indices])


def _generate(out: str | Path, num_train: int, num_val: int, settings, shard_size: int, workers: int, log,
              make, class_names: list[str], class_texts: list[str], task: str, build: dict) -> None:
    """Render ``make(split, index, settings)`` samples into ``out/train`` and ``out/val``; resumable."""
    jobs, manifests = [], {}
    for split, count in (("train", num_train), ("val", num_val)):
        folder = Path(out) / split
        folder.mkdir(parents=True, exist_ok=True)
        shards = []
        for k, start in enumerate(range(0, count, shard_size)):
            indices = list(range(start, min(start + shard_size, count)))
            name = shard_name(split, k)
            shards.append({"name": name, "num_samples": len(indices)})
            if not (folder / name).exists():  # shards are atomic, so an existing one is complete
                jobs.append((str(folder / name), make, split, indices, settings))
        manifests[split] = (folder, shards)
    log(f"demo data: rendering {sum(len(j[3]) for j in jobs)} clips into {out} with {workers} workers")
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_demo_shard, jobs))
    for split, (folder, shards) in manifests.items():  # manifests last: they mark the folder complete
        write_manifest(folder, task=task, shards=shards, class_names=class_names, class_texts=class_texts,
                       build={"tool": "turbo_ds.prep.demo", "settings": asdict(settings), "shard_size": shard_size,
                              **build})


def generate_demo(out: str | Path, num_train: int = 2048, num_val: int = 512, settings: DemoSettings = DemoSettings(),
                  shard_size: int = 128, workers: int = 2, log=print) -> None:
    """Write the action demo's ``out/train`` and ``out/val`` folders; rerunning resumes (complete shards are kept)."""
    _generate(out, num_train, num_val, settings, shard_size, workers, log, make_sample, CLASS_NAMES, CLASS_TEXTS,
              "action_cls", {})


# ------------------------------------------------------------------ long-video demo

# 8 orders of the 4 directions: the 4 rotations of a clockwise and of a counter-clockwise
# cycle, so every direction appears exactly twice at every phase position.
LONG_SEQUENCES = [("up", "right", "down", "left"), ("right", "down", "left", "up"),
                  ("down", "left", "up", "right"), ("left", "up", "right", "down"),
                  ("up", "left", "down", "right"), ("left", "down", "right", "up"),
                  ("down", "right", "up", "left"), ("right", "up", "left", "down")]
LONG_CLASS_NAMES = ["-".join(seq) for seq in LONG_SEQUENCES]
LONG_CLASS_TEXTS = [", then ".join(DIRECTION_WORDS[d] for d in seq) for seq in LONG_SEQUENCES]


@dataclass(frozen=True)
class LongDemoSettings(DemoSettings):
    """How the long-video demo is rendered and encoded (stored in the manifest)."""

    frames: int = 64
    boundary_jitter: float = 0.2
    "phase boundaries move by up to this fraction of a phase (so phases are not exactly equal)"


def long_demo_label(directions: tuple[str, ...] | list[str]) -> int:
    """The class of a video whose shapes move in ``directions``, phase after phase (order matters)."""
    try:
        return LONG_SEQUENCES.index(tuple(directions))
    except ValueError:
        raise ValueError(f"{list(directions)} is not one of the demo's orders {LONG_CLASS_NAMES}") from None


def phase_of_frames(rng: np.random.Generator, frames: int, phases: int, jitter: float) -> np.ndarray:
    """Phase index of every frame (F,) int: equal phases whose inner boundaries move by up to ``jitter`` of a phase."""
    length = frames / phases
    bounds = (np.arange(1, phases) + rng.uniform(-jitter, jitter, phases - 1)) * length  # (phases - 1,)
    return np.searchsorted(bounds, np.arange(frames), side="right")


def render_long_clip(rng: np.random.Generator, directions: tuple[str, ...], s: LongDemoSettings
                     ) -> tuple[np.ndarray, str, dict]:
    """Render one video whose shapes move in ``directions`` phase after phase: (F, S, S, 3) uint8, caption, meta."""
    phase = phase_of_frames(rng, s.frames, len(directions), s.boundary_jitter)  # (F,)
    velocity = []
    for d in directions:  # each phase: its direction (jittered by up to 12 degrees) and its own speed
        angle, ux, uy = np.deg2rad(rng.uniform(-12, 12)), *DIRECTIONS[d]
        speed = rng.uniform(1.5, 3.0) * s.size / 64
        velocity.append((speed * (ux * np.cos(angle) - uy * np.sin(angle)),
                         speed * (ux * np.sin(angle) + uy * np.cos(angle))))
    steps = np.asarray(velocity)[phase]  # (F, 2): displacement from frame t to t + 1
    offset = np.concatenate([np.zeros((1, 2)), np.cumsum(steps[:-1], axis=0)])  # (F, 2): shift since frame 0

    background = _texture(rng, s.size)
    objects = []
    for _ in range(rng.integers(1, 3)):  # drawn in another order than render_clip's: kept, so the data stays the same
        objects.append(dict(shape=str(rng.choice(SHAPES)), colour=str(rng.choice(list(COLOURS))),
                            radius=float(rng.uniform(7, 13) * s.size / 64),
                            x=float(rng.uniform(0, s.size)), y=float(rng.uniform(0, s.size))))
    frames = _draw(background, objects, offset)

    nouns = " and ".join(f"a {o['colour']} {o['shape']}" for o in objects)
    verb = "moves" if len(objects) == 1 else "move"
    caption = f"{nouns} {verb} " + ", then ".join(DIRECTION_WORDS[d] for d in directions)
    starts = [int(np.argmax(phase == k)) for k in range(len(directions))]
    meta = {"directions": list(directions), "phase_starts": starts, "velocities": [list(v) for v in velocity],
            "objects": objects, "segments": [{"start": a / s.fps, "end": b / s.fps, "label": d} for a, b, d in
                                             zip(starts, starts[1:] + [s.frames], directions)]}
    return frames, caption, meta


def make_long_sample(split: str, index: int, s: LongDemoSettings) -> dict:
    """The long-video sample ``index`` of ``split``: depends only on (seed, split, index)."""
    rng = np.random.default_rng([s.seed, {"train": 0, "val": 1}[split], index, 1])
    label = index % len(LONG_SEQUENCES)  # balanced classes
    frames, caption, meta = render_long_clip(rng, LONG_SEQUENCES[label], s)
    info = {"fps": s.fps, "frames": s.frames, "width": s.size, "height": s.size, "duration": s.frames / s.fps,
            "source": "turbo_ds.demo", "label": LONG_CLASS_NAMES[label], **meta}
    return {"__key__": f"{split}{index:07d}", "mp4": encode_mp4(frames, s.fps, s.crf),
            "cls": label, "txt": caption, "json": info}


def generate_long_demo(out: str | Path, num_train: int = 2048, num_val: int = 512,
                       settings: LongDemoSettings = LongDemoSettings(), shard_size: int = 128, workers: int = 2,
                       log=print) -> None:
    """Write the long-video demo's ``out/train`` and ``out/val`` dataset folders; rerunning resumes."""
    _generate(out, num_train, num_val, settings, shard_size, workers, log, make_long_sample, LONG_CLASS_NAMES,
              LONG_CLASS_TEXTS, "long_video", {"kind": "long"})
