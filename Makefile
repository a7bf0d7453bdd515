# fedge: `make run` (default simulation) and `make test`; both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedge-installed

.PHONY: install run test bench protos clean

install: $(STAMP)

# torch is pinned to the CPU build that lies on these machines; a bare `torch` would
# pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,ray]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedge-sim

# mypy first: every fedge.* import must resolve and the package must type-check (config in pyproject.toml).
test: $(STAMP)
	$(BIN)/mypy -p fedge
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,ray]"
	$(BIN)/python -m bench.runner --clients 100 --local-steps 1 --rounds 5 --partition iid --fedge-workers 2 0 --flower-cpus-per-client 1
	$(BIN)/python -m bench.runner --clients 1000 --local-steps 1 --rounds 4 --partition iid --fedge-workers 2 0 --flower-cpus-per-client 1 --out bench/results/runner_1000.json
	$(BIN)/python -m bench.runner --task image-lr --clients 1000 --clients-per-round 10 --rounds 100 --local-epochs 1 --partition iid --fedge-workers 2 --flower-cpus-per-client 1 --out bench/results/runner_flute.json
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.compression
	$(BIN)/python -m bench.codec_speed
	$(BIN)/python -m bench.scale_outputs
	$(BIN)/python -m bench.startup
	$(BIN)/python -m bench.client
	$(BIN)/python -m bench.ceiling
	$(BIN)/python -m bench.client_install
	$(BIN)/python -m bench.devices
	$(BIN)/python -m bench.fleet
	$(BIN)/python -m bench.device --install
	nice -n 10 $(BIN)/python -m bench.secagg
	$(BIN)/python -m bench.async
	nice -n 10 $(BIN)/python -m bench.optimize
	$(BIN)/python -m bench.robustness

protos: $(STAMP)
	$(BIN)/python -m fedge.protos.generate

clean:
	rm -rf outputs multirun .pytest_cache
