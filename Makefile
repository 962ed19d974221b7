# Two commands on a fresh machine with python3 and make:
#   make demo   install everything, then train ResNet-18-FPN -> evaluate -> infer on the built-in synthetic data
#   make test   install everything, then run the test suite
#   make track-demo   SiamRPN: generate sequences, train 8 minutes, evaluate it and the shipped tracker against
#                     OpenCV's trackers on held-out sequences of two families, track one sequence
#   make shipped-tracker   rebuild the shipped tracker (frcnn/tracking/weights/) from its recipe: the demo's
#                          detector (make demo, if outputs/demo/best.pt is missing), then 30-45 minutes of SiamRPN
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV_PY := .venv/bin/python
DEMO_DIR ?= outputs/demo
# make demo DEMO_EXPERIMENT=demo: the ResNet-18-C4 demo instead (docs/benchmarks.md compares them)
DEMO_EXPERIMENT ?= demo_fpn
TRACK_DIR ?= outputs/siamrpn_demo

.PHONY: install demo track-demo shipped-tracker test clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# uv installs torch and torchvision together from the package registry (matching builds), exactly as
# pinned in uv.lock; it ignores pip's local wheel folder, whose torch does not match torchvision.
.venv/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras --python $(PYTHON)
	touch $@

install: .venv/.installed

demo: install
	$(VENV_PY) scripts/train.py experiment=$(DEMO_EXPERIMENT) hydra.run.dir=$(DEMO_DIR)
	$(VENV_PY) scripts/evaluate.py checkpoint=$(DEMO_DIR)/best.pt analyze=true hydra.run.dir=$(DEMO_DIR)/evaluate
	$(VENV_PY) scripts/infer.py checkpoint=$(DEMO_DIR)/best.pt image=$${FRCNN_DATA:-data}/synthetic/val/000000.png score_thresh=0.5 hydra.run.dir=$(DEMO_DIR)/infer
	@$(VENV_PY) -c "import json; s=json.load(open('$(DEMO_DIR)/evaluate/metrics.json'))['stats']; print(f\"\nCOCO AP@[.5:.95] on the synthetic val split: {s['AP']:.4f} (AP50 {s['AP50']:.4f})\nannotated image: $(DEMO_DIR)/infer/000000.png\nerror analysis: $(DEMO_DIR)/evaluate/report.html\")"

track-demo: install
	$(VENV_PY) scripts/train_tracker.py experiment=siamrpn_demo hydra.run.dir=$(TRACK_DIR)
	$(VENV_PY) scripts/track_benchmark.py --checkpoint demo=$(TRACK_DIR)/last.pt shipped --out $(TRACK_DIR)/benchmark
	$(VENV_PY) scripts/track.py checkpoint=shipped sequence=$(TRACK_DIR)/benchmark/sequences_other/seq_000 hydra.run.dir=$(TRACK_DIR)/track
	@echo "success plots: $(TRACK_DIR)/benchmark/success_train.png, success_other.png; track: $(TRACK_DIR)/track/track.gif"

# The tracker's ResNet-18 starts from the trunk of the demo's detector (ResNet-18-FPN): nothing is downloaded.
shipped-tracker: install
	test -f $(DEMO_DIR)/best.pt || $(MAKE) demo
	$(VENV_PY) scripts/train_tracker.py experiment=siamrpn_r18_shipped model.backbone.init_from=$(DEMO_DIR)/best.pt hydra.run.dir=outputs/siamrpn_shipped
	$(VENV_PY) -c "from frcnn.tracking.training import SHIPPED_TRACKER, slim_checkpoint; print(slim_checkpoint('outputs/siamrpn_shipped/last.pt', SHIPPED_TRACKER, recipe='make shipped-tracker (make demo, then scripts/train_tracker.py experiment=siamrpn_r18_shipped model.backbone.init_from=$(DEMO_DIR)/best.pt; 1500 steps)'))"

test: install
	$(VENV_PY) -m pytest -q -n 2 --dist loadfile --durations=20

clean:
	rm -rf $(TOOLS) .venv outputs multirun
