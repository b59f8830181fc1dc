# spatialspec — make targets. `make help` lists them.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# DATA: dataset whose configs/<DATA>/ the train targets use.
# MANIFEST: optional manifest.csv overriding the config's.  ARGS: extra fit / evaluate arguments,
# e.g. ARGS="--trainer.max_epochs 3".  CKPT / PREDICTIONS: what `make evaluate` scores
# (default: the seg run's best checkpoint).  REPORT: where `make evaluate` writes its JSON.
DATA        ?= synthetic
CONFIGS     := configs/$(strip $(DATA))
MANIFEST    ?=
ARGS        ?=
CKPT        ?=
PREDICTIONS ?=
REPORT      ?= results/report.json
SWEEP_METHODS ?= binary,bbox,seg,seg_ssl,seg_spl
SWEEP_BUDGETS ?= 0,10%,all
SWEEP_SEEDS   ?= 1,2
SYNTH   := data/synthetic/manifest.csv
DEMO_RUNS   := runs/demo/runs
DEMO_BINARY := $(DEMO_RUNS)/binary/seed-0/checkpoints/best.ckpt
DEMO_SEG    := $(DEMO_RUNS)/seg/budget-all/seed-0/checkpoints/best.ckpt
DEMO_CKPTS  := $(DEMO_BINARY) $(DEMO_SEG)
# The demo's other seeds (saliency repeatability) and a resnet18 twin of each audited model
# (saliency reproducibility: another architecture on the same data, the demo's settings).
DEMO_REPLICATES := $(foreach s,1 2,$(DEMO_RUNS)/binary/seed-$(s)/checkpoints/best.ckpt \
                     $(DEMO_RUNS)/seg/budget-all/seed-$(s)/checkpoints/best.ckpt)
R18         := runs/demo-resnet18
R18_CKPTS   := $(R18)/binary/checkpoints/best.ckpt $(R18)/seg/checkpoints/best.ckpt
METHODS     := binary bbox seg seg_ssl seg_spl detect rrr gradmask actdiff groupdro jtt dfr
RIVALS      := binary,jtt,groupdro,dfr,seg,bbox,seg_ssl,seg_spl,actdiff,rrr,gradmask,detect

.PHONY: help install test test-fast demo prepare-synthetic evaluate sweep-budget sweep-rivals audit \
        benchmark gpu-benchmark lint format clean slurm-start slurm-stop $(addprefix train-,$(METHODS))

help:
	@echo "make install        create $(VENV) and install spatialspec with its dev extras"
	@echo "make demo           synthetic benchmark -> binary, bbox, seg x 3 seeds -> seed-aware robust AUROC (results/demo/)"
	@echo "make test           install if needed, then run the whole test suite"
	@echo "make train-seg      fit configs/\$$DATA/seg.yaml (DATA=synthetic; MANIFEST=..., ARGS=...)"
	@echo "make train-<method> the same for any method: $(METHODS)"
	@echo "make sweep-budget   robust AUROC vs number of masks (synthetic) -> results/sweep-budget/"
	@echo "make sweep-rivals   every method x 3 seeds at 10 % and all annotation, robust AUROC per annotation hour -> results/rivals/"
	@echo "make audit          masking, saliency, slice audits of the demo models -> results/audit/"
	@echo "make evaluate       report for CKPT=... or PREDICTIONS=... (+ MANIFEST=...) into REPORT=..."
	@echo "make benchmark      training-loop overhead vs bare PyTorch; loader images/s, cache, channels-last and DDP speed-ups"
	@echo "make gpu-benchmark  2-epoch SIIM-sized fit per precision on a GPU: images/s, loader wait (benchmarks/gpu_fit.py)"
	@echo "make slurm-start    a one-node SLURM cluster here (root; slurm-wlm + munge from apt) for --launcher slurm"
	@echo "make slurm-stop     stop it"
	@echo "make lint / format  ruff"

install: $(STAMP)

# torch/torchvision resolve as a matching pair from PyPI; constraints.txt pins the tested set.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

demo: install
	$(BIN)/spatialspec demo

prepare-synthetic: install
	$(BIN)/spatialspec prepare synthetic --out data/synthetic

$(SYNTH): | $(STAMP)
	$(BIN)/spatialspec prepare synthetic --out data/synthetic

# The synthetic benchmark is prepared on first use; other datasets need MANIFEST or their config's.
$(addprefix train-,$(METHODS)): train-%: install $(if $(filter synthetic,$(strip $(DATA))),$(SYNTH))
	$(BIN)/spatialspec fit --config $(CONFIGS)/$*.yaml $(if $(MANIFEST),--data.manifest $(MANIFEST)) $(ARGS)

evaluate: install
	$(BIN)/spatialspec evaluate \
	  $(if $(PREDICTIONS),--predictions $(PREDICTIONS),--checkpoint $(or $(CKPT),runs/$(strip $(DATA))/seg/checkpoints/best.ckpt)) \
	  $(if $(MANIFEST),--manifest $(MANIFEST)) --out $(REPORT) $(ARGS)

# Annotation-budget sweep on the synthetic benchmark (~15 min on 2 cores; resumable).
sweep-budget: install $(SYNTH)
	$(BIN)/spatialspec sweep --config configs/synthetic/seg.yaml --methods $(SWEEP_METHODS) \
	  --budgets $(SWEEP_BUDGETS) --seeds $(SWEEP_SEEDS) --jobs 2 --out results/sweep-budget $(ARGS)

# Every method on the demo's draw and settings: 3 seeds x {10 %, all} of its annotation
# (masks, boxes or attributes); ~21 min on 2 cores (66 fits); resumable.
sweep-rivals: install $(DEMO_CKPTS)
	$(BIN)/spatialspec sweep --fit-config configs/synthetic/seg.yaml --methods $(RIVALS) \
	  --budgets 10%,all --seeds 0,1,2 --jobs 2 --out results/rivals \
	  --set data.manifest=data/synthetic-demo/manifest.csv trainer.max_epochs=4 data.batch_size=16 $(ARGS)

# The audits on the demo's binary and seg models (trained by `make demo` if missing), with the
# demo's other seeds as saliency replicates and a resnet18 twin of each (reproducibility).
$(DEMO_CKPTS) $(DEMO_REPLICATES): | $(STAMP)
	$(BIN)/spatialspec demo

$(R18)/%/checkpoints/best.ckpt: | $(DEMO_CKPTS)
	$(BIN)/spatialspec fit --config configs/synthetic/$*.yaml \
	  --data.manifest data/synthetic-demo/manifest.csv --model.backbone.encoder_name resnet18 \
	  --trainer.max_epochs 4 --data.batch_size 16 --seed 0 --out_dir $(R18)/$* --overwrite true

audit: install $(DEMO_CKPTS) $(DEMO_REPLICATES) $(R18_CKPTS)
	$(BIN)/spatialspec audit all --out results/audit \
	  --model binary=$(DEMO_BINARY) --model seg=$(DEMO_SEG) \
	  $(foreach s,1 2,--replicate binary=$(DEMO_RUNS)/binary/seed-$(s)/checkpoints/best.ckpt \
	    --replicate seg=$(DEMO_RUNS)/seg/budget-all/seed-$(s)/checkpoints/best.ckpt) \
	  --other-architecture binary=$(R18)/binary/checkpoints/best.ckpt \
	  --other-architecture seg=$(R18)/seg/checkpoints/best.ckpt \
	  --masking-metadata-columns spurious --masking-metadata-columns view,age,sex $(ARGS)

benchmark: install
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/channels_last.py
	$(BIN)/python benchmarks/ddp_unused.py

# A real one-node SLURM cluster on this machine (tests/test_sweep_slurm.py starts it itself).
slurm-start:
	bash tools/slurm-local.sh start

slurm-stop:
	bash tools/slurm-local.sh stop

gpu-benchmark: install
	$(BIN)/python benchmarks/gpu_fit.py $(ARGS)

lint: install
	$(BIN)/ruff check spatialspec tests benchmarks
	$(BIN)/ruff format --check spatialspec tests benchmarks

format: install
	$(BIN)/ruff format spatialspec tests benchmarks
	$(BIN)/ruff check --fix spatialspec tests benchmarks

clean:
	rm -rf runs results .pytest_cache .ruff_cache
