"""Write synthetic tracking sequences (frames + groundtruth.txt), the layout every tracking command reads.

    python scripts/make_sequences.py --out data/sequences --num-sequences 5 --length 100 --seed 3
    python scripts/track.py checkpoint=outputs/siamrpn_demo/last.pt sequence=data/sequences/seq_000

Each ``seq_NNN/`` holds ``00000001.jpg ...``, ``groundtruth.txt`` (one ``x,y,w,h`` line per frame) and
``attributes.json`` (its challenges); ``READY`` beside the folders records the settings. The work is
:func:`frcnn.tracking.sequences.generate_sequences`.
"""

from __future__ import annotations

import argparse

from frcnn.cli import friendly_errors
from frcnn.errors import ConfigError


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the folder to write seq_000/, seq_001/, ... into")
    parser.add_argument("--num-sequences", type=int, default=5)
    parser.add_argument("--length", type=int, default=80, help="frames per sequence")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0, help="the training sequences of make track-demo use seed 0")
    args = parser.parse_args()
    for name in ("num_sequences", "length", "height", "width"):
        if getattr(args, name) < (2 if name == "length" else 1):
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)} is too small")
    if args.height < 64 or args.width < 64:
        raise ConfigError(f"--height/--width {args.height}x{args.width}: frames need at least 64x64 pixels")

    from frcnn.tracking.sequences import generate_sequences

    root = generate_sequences(args.out, num_sequences=args.num_sequences, length=args.length, height=args.height,
                              width=args.width, seed=args.seed)
    print(f"wrote {args.num_sequences} sequences of {args.length} frames into {root}: "
          f"track one with scripts/track.py checkpoint=... sequence={root / 'seq_000'}")


if __name__ == "__main__":
    main()
