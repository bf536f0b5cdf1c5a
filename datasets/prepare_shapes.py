#!/usr/bin/env python
"""Generate d2dist's synthetic shapes dataset now, instead of on first use.

    python datasets/prepare_shapes.py                 # d2dist_shapes where d2dist reads it
    python datasets/prepare_shapes.py --tiny          # d2dist_shapes_tiny (smoke tests)
    python datasets/prepare_shapes.py --root /data --name my_shapes --num-train 5000 --seed 1

Regenerates only when the directory is missing or was made from another spec. Note that the
registered datasets ``d2dist_shapes*`` expect their built-in spec: a built-in name generated with
other options is regenerated (with the built-in spec) when it is next loaded.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

from d2dist.data.builtin import BUILTIN_SHAPES, datasets_root
from d2dist.data.shapes import MANIFEST, generate_shapes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=datasets_root(),
        help="datasets directory (default: where d2dist registers its built-in datasets: "
        "$DETECTRON2_DATASETS, or the checkout's datasets/; see d2dist/data/builtin.py)",
    )
    parser.add_argument(
        "--name", help="dataset name (default: d2dist_shapes, or d2dist_shapes_tiny with --tiny)"
    )
    parser.add_argument("--tiny", action="store_true", help="start from the tiny smoke-test spec")
    parser.add_argument("--image-size", type=int, help="image side in pixels")
    parser.add_argument("--num-train", type=int, help="number of training images")
    parser.add_argument("--num-val", type=int, help="number of validation images")
    parser.add_argument("--seed", type=int, help="random seed")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base = "d2dist_shapes_tiny" if args.tiny else "d2dist_shapes"
    name = args.name or base
    overrides = {
        field: value
        for field, value in (
            ("image_size", args.image_size),
            ("num_train", args.num_train),
            ("num_val", args.num_val),
            ("seed", args.seed),
        )
        if value is not None
    }
    try:
        spec = dataclasses.replace(BUILTIN_SHAPES[base], **overrides)
    except ValueError as e:
        print(f"prepare_shapes: {e}", file=sys.stderr)
        return 2
    if name in BUILTIN_SHAPES and spec != BUILTIN_SHAPES[name]:
        print(
            f"prepare_shapes: warning: {name} is a registered built-in dataset with another spec; "
            "loading it will regenerate it with its own. Pass --name to keep both.",
            file=sys.stderr,
        )
    start = time.perf_counter()
    try:
        path = generate_shapes(args.root, spec, name)
    except OSError as e:
        print(f"prepare_shapes: {e}", file=sys.stderr)
        return 1
    with open(os.path.join(path, MANIFEST)) as f:
        splits = json.load(f)["splits"]
    counts = ", ".join(
        f"{s}: {c['images']} images, {c['instances']} instances" for s, c in splits.items()
    )
    print(f"{name} at {path} ({counts}) ready in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
