"""One-pass evaluation of a SiamRPN checkpoint against OpenCV's trackers on the same sequences, in one run.

    python scripts/track_benchmark.py --checkpoint outputs/siamrpn_demo/last.pt --out outputs/track_benchmark

Without ``--sequences`` it generates held-out synthetic sequences (seed 1; training used seed 0). Prints
the docs/tracking.md table (success AUC, precision at 20 px, normalized precision, fps) and SiamRPN's size
response (:func:`frcnn.tracking.evaluate.size_response`), and writes ``scores.json`` and ``success.png``.
OpenCV's KCF and CSRT need the contrib build (installed by ``make``).
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
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sequences", help="a folder of sequence folders; default: generate held-out synthetic ones")
    parser.add_argument("--num-sequences", type=int, default=12)
    parser.add_argument("--length", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1, help="generator seed of the held-out sequences")
    parser.add_argument("--peers", nargs="*", default=["MIL", "KCF", "CSRT"])
    parser.add_argument("--out", default="outputs/track_benchmark")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from frcnn.tracking.evaluate import (
        OpenCVTracker,
        evaluate_trackers,
        opencv_tracker_factory,
        plot_success,
        size_response,
    )
    from frcnn.tracking.sequences import generate_sequences, load_sequences
    from frcnn.tracking.training import load_tracker

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.sequences) if args.sequences else out / "sequences"
    if not args.sequences and not (root / "READY").exists():
        generate_sequences(root, num_sequences=args.num_sequences, length=args.length, seed=args.seed)
    sequences = load_sequences(root)
    siamrpn = load_tracker(args.checkpoint, args.device)
    trackers: dict[str, object] = {"SiamRPN (frcnn)": siamrpn}
    for name in args.peers:
        if opencv_tracker_factory(name) is None:
            print(f"skipping OpenCV {name}: this OpenCV build lacks it (opencv-contrib-python-headless has it)")
            continue
        trackers[f"OpenCV {name}"] = OpenCVTracker(name)
    scores, _ = evaluate_trackers(trackers, sequences)
    device = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    frames = sum(len(s) for s in sequences)
    print(f"\n{len(sequences)} sequences, {frames} frames, {root}; {time.strftime('%Y-%m-%d')}, {device}\n")
    print("| tracker | success AUC | precision @20 px | norm. precision | fps |")
    print("|---|---|---|---|---|")
    for name, s in sorted(scores.items(), key=lambda kv: -kv[1].success_auc):
        print(f"| {name} | {s.success_auc:.3f} | {s.precision:.3f} | {s.norm_precision:.3f} | {s.fps:.1f} |")
    # How much of a wrong size SiamRPN's proposals correct in one frame (1: all of it, 0: none; docs/tracking.md)
    try:
        response = size_response(siamrpn, sequences)  # after the OPE: the probes leave the tracker's state moved
        print("\nSiamRPN, share of a wrong believed size corrected in one frame: "
              + ", ".join(f"x{f:g}: {v:.2f}" for f, v in response.items()) + f" (mean {sum(response.values()) / len(response):.2f})")
    except ValueError as err:  # sequences too short or too small to probe: the scores above still count
        response = {}
        print(f"\nSiamRPN size response not measured: {err}")
    plot_success(scores, out / "success.png")
    (out / "scores.json").write_text(json.dumps(
        {"sequences": str(root), "frames": frames, "device": device, "date": time.strftime("%Y-%m-%d"),
         "scores": {n: {k: v for k, v in vars(s).items() if k != "curve"} for n, s in scores.items()},
         "siamrpn_size_response": {str(f): v for f, v in response.items()}}, indent=1))
    print(f"\n-> {out / 'scores.json'}, {out / 'success.png'}")


if __name__ == "__main__":
    main()
