"""One-pass evaluation of SiamRPN checkpoints against OpenCV's trackers on two families of sequences, in one run.

    python scripts/track_benchmark.py --checkpoint demo=outputs/siamrpn_demo/last.pt shipped --out outputs/track_benchmark

Families (generated into ``--out`` unless given with ``--sequences``):

* ``train``: the training generator's own look (:func:`frcnn.tracking.sequences.generate_sequences`), held-out
  seed 1 (training uses seed 0);
* ``other``: the independent family (:mod:`frcnn.tracking.other_family`) that no training run draws: a model
  counts by this one.

Per family it prints the docs/tracking.md table (success AUC, precision at 20 px, normalized precision, fps)
and writes ``success_<family>.png``; then SiamRPN's size response on the train family
(:func:`frcnn.tracking.evaluate.size_response`) and ``scores.json``. ``--distractor-aware W`` adds each
checkpoint again with DaSiamRPN's distractor-aware selection at weight ``W``, ``--template-update RATE`` with the
linear template update at that rate. A checkpoint is ``path``,
``name=path`` or ``shipped`` (the tracker that comes with frcnn). OpenCV's KCF and CSRT need the contrib build
(installed by ``make``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from frcnn.cli import friendly_errors


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", nargs="+", required=True, help="[name=]path or 'shipped', one or more")
    parser.add_argument("--sequences", help="a folder of sequence folders: evaluate on it alone (family 'given')")
    parser.add_argument("--families", nargs="+", default=["train", "other"], choices=["train", "other"])
    parser.add_argument("--num-sequences", type=int, default=12)
    parser.add_argument("--length", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1, help="seed of the train family's held-out sequences (training: 0)")
    parser.add_argument("--distractor-aware", type=float, default=0.0, metavar="W",
                        help="also run each checkpoint with DaSiamRPN's distractor-aware selection at this weight")
    parser.add_argument("--template-update", type=float, default=0.0, metavar="RATE",
                        help="also run each checkpoint with the linear template update at this rate (tracker.template_rate)")
    parser.add_argument("--peers", nargs="*", default=["MIL", "KCF", "CSRT"])
    parser.add_argument("--out", default="outputs/track_benchmark")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from frcnn.tasks.load import load_tracker
    from frcnn.tracking.evaluate import (
        OpenCVTracker,
        evaluate_trackers,
        opencv_tracker_factory,
        plot_success,
        size_response,
    )
    from frcnn.tracking.other_family import generate_other_family
    from frcnn.tracking.sequences import generate_sequences, load_sequences

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sequences:
        roots = {"given": Path(args.sequences)}
    else:
        roots = {family: out / f"sequences_{family}" for family in args.families}
        for family, root in roots.items():
            if not (root / "READY").exists():
                if family == "train":
                    generate_sequences(root, num_sequences=args.num_sequences, length=args.length, seed=args.seed)
                else:
                    generate_other_family(root, num_sequences=args.num_sequences, length=args.length, seed=0)

    def trackers() -> dict[str, object]:
        """Fresh trackers for one family (each keeps no state across init, but OpenCV's are single-use)."""
        found: dict[str, object] = {}
        for spec in args.checkpoint:
            name, _, path = spec.rpartition("=")
            name = name or ("shipped" if path == "shipped" else Path(path).parent.name or path)
            found[f"SiamRPN {name}"] = load_tracker(path, args.device)
            if args.distractor_aware > 0:
                found[f"SiamRPN {name} + DaSiamRPN selection"] = load_tracker(path, args.device, {"distractor_weight": args.distractor_aware})
            if args.template_update > 0:
                found[f"SiamRPN {name} + template update"] = load_tracker(path, args.device, {"template_rate": args.template_update})
        for peer in args.peers:
            if opencv_tracker_factory(peer) is None:
                print(f"skipping OpenCV {peer}: this OpenCV build lacks it (opencv-contrib-python-headless has it)")
                continue
            found[f"OpenCV {peer}"] = OpenCVTracker(peer)
        return found

    device = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    report: dict = {"device": device, "date": time.strftime("%Y-%m-%d"), "families": {}}
    for family, root in roots.items():
        sequences = load_sequences(root)
        scores, _ = evaluate_trackers(trackers(), sequences)
        frames = sum(len(s) for s in sequences)
        print(f"\n{family} family: {len(sequences)} sequences, {frames} frames, {root}; {report['date']}, {device}\n")
        print("| tracker | success AUC | precision @20 px | norm. precision | fps |")
        print("|---|---|---|---|---|")
        for name, s in sorted(scores.items(), key=lambda kv: -kv[1].success_auc):
            print(f"| {name} | {s.success_auc:.3f} | {s.precision:.3f} | {s.norm_precision:.3f} | {s.fps:.1f} |")
        plot_success(scores, out / f"success_{family}.png", title=f"Success plot (OPE), {family} family")
        report["families"][family] = {"sequences": str(root), "frames": frames,
                                      "scores": {n: {k: v for k, v in vars(s).items() if k != "curve"} for n, s in scores.items()}}
    # How much of a wrong size the first checkpoint's proposals correct in one frame (1: all of it, 0: none)
    family = "train" if "train" in roots else next(iter(roots))
    try:
        response = size_response(load_tracker(args.checkpoint[0].rpartition("=")[2], args.device), load_sequences(roots[family]))
        print(f"\nSiamRPN ({args.checkpoint[0]}), share of a wrong believed size corrected in one frame, {family} family: "
              + ", ".join(f"x{f:g}: {v:.2f}" for f, v in response.items()) + f" (mean {sum(response.values()) / len(response):.2f})")
    except ValueError as err:  # sequences too short or too small to probe: the scores above still count
        response = {}
        print(f"\nSiamRPN size response not measured: {err}")
    report["siamrpn_size_response"] = {str(f): v for f, v in response.items()}
    (out / "scores.json").write_text(json.dumps(report, indent=1))
    print(f"\n-> {out / 'scores.json'}, " + ", ".join(str(out / f"success_{f}.png") for f in roots))


if __name__ == "__main__":
    main()
