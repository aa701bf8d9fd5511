"""Benchmark: the val/test scene selection of `leccr data synth`, scanning vs indexed.

    python benchmarks/bench_synth.py [--held-out 1000] [--seed 0] [--build IMAGES]

Held-out scenes are grown one by one; each new scene needs a caption that fits no earlier
scene and must fit no earlier caption. The first version scanned every earlier scene and
caption for each candidate (`consistent` on each pair), so a split took time quadratic in
its size. Now every scene's fitting captions are integer codes in a set, so each check is a
lookup. Both run here on the same seed, one after the other, must return the same scenes,
captions and singled-out flags, and the speed ratio is printed.

`--held-out 2500` is one held-out split of `leccr data synth --images 20000` (the scan takes
minutes there). `--build N` also times a whole `build_synthetic` of N images (indexed only).
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
from pathlib import Path

from leccr_cli.corpus.synthetic.grammar import Mention, Shape, consistent
from leccr_cli.corpus.synthetic.image import build_synthetic, held_out_scenes, random_scene


def _object_mentions(obj: Shape) -> list[Mention]:
    return [
        Mention(obj.shape, color, size, place)
        for color in (None, obj.color)
        for size in (None, obj.size)
        for place in (None, *obj.places)
    ]


def _scanning_distinctive(scene: tuple[Shape, ...], others: list, rng: random.Random) -> tuple[Mention, ...] | None:
    singles = [(m,) for obj in scene for m in _object_mentions(obj)]
    pairs = [
        (a, b)
        for first, second in itertools.combinations(scene, 2)
        for a in _object_mentions(first)
        for b in _object_mentions(second)
    ]
    candidates = [c for c in singles + pairs if sum(m.weight for m in c) >= 2 + len(c)]
    keys = {c: sum(m.weight for m in c) + (rng.random() < 0.3) + rng.random() for c in candidates}
    for mentions in sorted(candidates, key=keys.__getitem__):
        if not any(consistent(mentions, other) for other in others):
            return mentions
    return None


def scanning_held_out_scenes(count: int, rng: random.Random, tries: int = 30):
    """The first version of `held_out_scenes`: every check scans all earlier scenes and captions."""
    scenes: list[tuple[Shape, ...]] = []
    captions: list[tuple[Mention, ...]] = []
    population = [random_scene(rng) for _ in range(count)]
    for _ in range(count):
        for _attempt in range(tries):
            scene = random_scene(rng)
            if any(consistent(caption, scene) for caption in captions):
                continue
            mentions = _scanning_distinctive(scene, scenes + population, rng)
            if mentions is not None:
                break
        else:
            objects = sorted(scene, key=lambda o: o.size)[:2]
            mentions = tuple(Mention(o.shape, o.color, o.size, o.places[0]) for o in objects)
        scenes.append(scene)
        captions.append(mentions)
    singled = [
        not any(consistent(caption, other) for j, other in enumerate(scenes) if j != i)
        for i, caption in enumerate(captions)
    ]
    return scenes, captions, singled


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", type=int, default=1000, help="scenes in the held-out split (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build", type=int, default=0, help="also time a whole build of this many images")
    args = parser.parse_args()

    indexed, indexed_s = timed(held_out_scenes, args.held_out, random.Random(args.seed))
    scanning, scanning_s = timed(scanning_held_out_scenes, args.held_out, random.Random(args.seed))
    if indexed != scanning:
        print("the indexed selection differs from the scanning one", file=sys.stderr)
        return 1
    share = 100.0 * sum(indexed[2]) / args.held_out
    print(f"held-out split of {args.held_out} scenes (seed {args.seed}), identical results, ceiling {share:.1f}%")
    print(f"  scanning {scanning_s:8.2f} s")
    print(f"  indexed  {indexed_s:8.2f} s")
    print(f"  speed-up {scanning_s / indexed_s:8.1f}x")
    if args.build:
        with tempfile.TemporaryDirectory() as folder:
            _, build_s = timed(lambda: build_synthetic(Path(folder) / "corpus", images=args.build, seed=args.seed))
        print(f"build_synthetic(images={args.build}): {build_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
