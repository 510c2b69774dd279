# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv on first use; later runs reinstall only when pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    := runs/demo-$(shell date +%Y%m%d-%H%M%S)
PM     := $(BIN)/papermill --cwd notebooks --log-level WARNING

.PHONY: venv demo test lab bench strip clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

## make demo: demo data (once); notebook 01 inspects it and finds the training landmarks planted in the test set
## (exclusion file); the offline-pretrained and a random-init GeM/EfficientNet-Lite0 evaluated through notebook 03;
## the pretrained model fine-tuned on the cleaned demo training split through notebook 02 (mAP before and after);
## figures of the pretrained against the fine-tuned model (notebook 04) and the comparison table with provenance
## (notebook 05, LaTeX + Markdown in figures/); the pretrained model on the demo's UnED and ILIAS sets under their
## official protocols (notebook 03, dataset uned / ilias); all with papermill into runs/demo-<timestamp>/, printed
## side by side.
demo: $(STAMP)
	$(BIN)/python -m irlib make-demo-data --out data/demo
	@mkdir -p $(RUN)/inspection $(RUN)/pretrained $(RUN)/random-init $(RUN)/fine-tuned $(RUN)/figures $(RUN)/universal
	$(PM) notebooks/01_dataset_inspection.ipynb $(RUN)/inspection/01_dataset_inspection.ipynb -p out_dir ../$(RUN)/inspection
	$(PM) notebooks/03_evaluation.ipynb $(RUN)/pretrained/03_evaluation.ipynb -p pretrained True -p out_dir ../$(RUN)/pretrained
	$(PM) notebooks/03_evaluation.ipynb $(RUN)/random-init/03_evaluation.ipynb -p pretrained False -p out_dir ../$(RUN)/random-init
	$(PM) notebooks/02_training.ipynb $(RUN)/fine-tuned/02_training.ipynb -p out_dir ../$(RUN)/fine-tuned/run \
		-p exclude ../$(RUN)/inspection/exclusions_demo-train.txt
	$(PM) notebooks/04_visualization.ipynb $(RUN)/figures/04_visualization.ipynb \
		-p weights_b ../$(RUN)/fine-tuned/run/model.pth -p rerank_b "" -p name_b "GeM fine-tuned"
	$(PM) notebooks/05_comparison_table.ipynb $(RUN)/figures/05_comparison_table.ipynb -p runs_dir ../$(RUN)
	$(PM) notebooks/03_evaluation.ipynb $(RUN)/universal/03_uned.ipynb -p dataset uned -p out_dir ../$(RUN)/universal/uned
	$(PM) notebooks/03_evaluation.ipynb $(RUN)/universal/03_ilias.ipynb -p dataset ilias -p out_dir ../$(RUN)/universal/ilias
	$(BIN)/python -m irlib summarize $(RUN)

## make test: unit and integration tests, then every notebook executed with its default parameters (nbval).
test: $(STAMP)
	$(BIN)/python -m pytest tests
	$(BIN)/python -m pytest --nbval --nbval-current-env notebooks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_evaluator.py
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_datasets.py
	$(BIN)/python benchmarks/bench_rerank.py
	$(BIN)/python benchmarks/bench_shards.py
	$(BIN)/python benchmarks/bench_1m.py
	$(BIN)/python benchmarks/bench_universal.py
	$(BIN)/python benchmarks/bench_learned_rerank.py

## make strip: remove outputs from notebooks before committing (cell tags are kept).
strip: $(STAMP)
	$(BIN)/nbstripout notebooks/*.ipynb

clean:
	rm -rf $(VENV) .pytest_cache
