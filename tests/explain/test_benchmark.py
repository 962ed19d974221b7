"""The explanation benchmark's table (frcnn/explain/benchmark.py)."""

from __future__ import annotations


def test_benchmark_table_lists_every_method_the_substrate_ranks_and_the_max_rois_agreement():
    from frcnn.explain.benchmark import SUBSTRATES, markdown_table

    row = {f"{kind}_{s}": 0.5 for kind in ("deletion", "insertion") for s in SUBSTRATES} | {
        "seconds": 1.0, "pointing": 1.0, "pointing_0px": 0.0, "sanity_spearman": 0.2}
    result = {"methods": {"gradcam": row, "drise": row}, "rank_by_substrate": {s: ["gradcam", "drise"] for s in SUBSTRATES},
              "max_rois": 16, "max_rois_agreement": {"drise": {"spearman_mean": 0.99, "spearman_min": 0.98, "n_detections": 2}}}
    lines = markdown_table(result).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| gradcam", "| drise"]
    assert "pointing game (15 px / 0 px)" in lines[0] and " | 1.00 / 0.00 | " in lines[2]
    assert "- blur: gradcam > drise" in lines
    assert lines[-1] == "- drise: mean 0.990, min 0.980 over 2 detections" and "16 nearest proposals" in lines[-2]

