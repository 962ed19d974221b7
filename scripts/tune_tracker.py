"""Tune a trained SiamRPN's proposal selection (penalty_k, window_influence, lr) on training sequences.

    python scripts/tune_tracker.py --checkpoint outputs/siamrpn_demo/last.pt --sequences data/tracking/randomized

Coordinate ascent on mean success AUC (:mod:`frcnn.tracking.tune`) over the first ``--num-sequences``
sequences; writes ``--out`` (default: ``tuned.pt`` beside the checkpoint), a copy of the checkpoint whose
``tracker`` config holds the best values, which ``scripts/track.py`` and ``scripts/track_benchmark.py``
then use. Tune on training sequences and report on held-out ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from frcnn.cli import friendly_errors


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sequences", required=True, help="a folder of training sequence folders")
    parser.add_argument("--num-sequences", type=int, default=12, help="tune on the first N sequences (sorted by name)")
    parser.add_argument("--rounds", type=int, default=1, help="coordinate-ascent passes")
    parser.add_argument("--out", default=None, help="the tuned checkpoint (default: tuned.pt beside --checkpoint)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.num_sequences < 1 or args.rounds < 1:
        parser.error("--num-sequences and --rounds must be at least 1")

    from frcnn.tasks.load import load_tracker
    from frcnn.tracking.sequences import load_sequences
    from frcnn.tracking.tune import tune_settings, tuned_checkpoint

    tracker = load_tracker(args.checkpoint, args.device)
    start = tracker.settings

    def with_settings(settings):  # one tracker: init() starts each sequence afresh
        tracker.settings = settings
        return tracker

    sequences = load_sequences(args.sequences)[: args.num_sequences]
    best, trials = tune_settings(with_settings, sequences, start, rounds=args.rounds)
    for t in trials:
        print(json.dumps(t.settings), f"AUC {t.success_auc:.3f}")
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("tuned.pt")
    tuned_checkpoint(args.checkpoint, out, best, trials)
    print(f"best on {len(sequences)} training sequences: penalty_k={best.penalty_k} window_influence={best.window_influence} "
          f"lr={best.lr} (AUC {max(t.success_auc for t in trials):.3f}, start {trials[0].success_auc:.3f}) -> {out}")


if __name__ == "__main__":
    main()
