# Two commands matter: `make demo` and `make test`. Everything else is what they need,
# each step idempotent and quick when already done (stamp files).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The development commands (devtools/, not in the wheel): the local broker, the producer, the demo.
DEV := $(PY) -m devtools
UV_VERSION := 0.13.9
MVN := mvn -q -B -s jvm/settings.xml -f jvm/pom.xml
JARS_STAMP := jvm/target/.resolved
# pyspark is published only as a source archive. uv rebuilds it whenever it judges its cached
# download stale, and keeps every build (about 1 GB each) in its cache: CI runs and test runs on
# one machine filled its disk that way. The wheel is built once per machine into a wheelhouse
# outside the checkout, shared by every clone, and every uv install here (the virtualenv,
# wheel-smoke, cluster-check) finds it there through UV_FIND_LINKS.
WHEELHOUSE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/billing-lakehouse/wheels
PYSPARK_VERSION := $(shell sed -n 's/^pyspark==//p' requirements.lock)
PYSPARK_WHEEL := $(WHEELHOUSE)/pyspark-$(PYSPARK_VERSION)-py2.py3-none-any.whl
export UV_FIND_LINKS := $(WHEELHOUSE)

.PHONY: setup venv jars localfs kafka-start kafka-stop test test-unit drill wheel-smoke demo bench lock clean docs

setup: venv jars localfs

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.lock pyproject.toml | $(PYSPARK_WHEEL)
	@echo ">> python virtualenv ($(VENV)) from requirements.lock"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	@$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.lock
	@$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

# Built in a folder of its own and moved into place, so two builds at once (a CI clone and a
# checkout) cannot leave a half-written wheel.
$(PYSPARK_WHEEL):
	@echo ">> pyspark $(PYSPARK_VERSION) wheel, built once per machine into $(WHEELHOUSE)"
	@mkdir -p "$(WHEELHOUSE)"
	@tmp=$$(mktemp -d "$(WHEELHOUSE)/.build.XXXXXX") && \
	  { $(PYTHON) -m pip wheel -q --no-deps --disable-pip-version-check "pyspark==$(PYSPARK_VERSION)" -w "$$tmp" && \
	    mv "$$tmp"/pyspark-$(PYSPARK_VERSION)-*.whl "$@"; rc=$$?; rm -rf "$$tmp"; exit $$rc; }

jars: $(JARS_STAMP)
$(JARS_STAMP): jvm/pom.xml jvm/settings.xml
	@command -v java >/dev/null || { echo "Java 17 is required (java not found on PATH)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required (mvn not found on PATH)"; exit 1; }
	@echo ">> JVM jars from Maven Central (Delta, Spark Kafka connector, Kafka broker)"
	@rm -rf jvm/target/spark-jars jvm/target/kafka-jars
	@$(MVN) -Pspark package
	@$(MVN) -Pkafka package
	@touch $@

# Hadoop's local file system forks `chmod` for every file it creates with a permission and
# `readlink` twice per rename (its native library is not on Maven Central): about 18
# processes a second, 16 ms each, in a local stream's Delta commits and checkpoints. One
# small jar of ours (jvm/localfs) does both in-process; pipelines/core/session.py puts it on
# the local session's class path when it is here. Compiled against the pyspark wheel's own
# Hadoop, so it needs no download.
LOCALFS_JAR := jvm/target/spark-jars/lakehouse-localfs.jar
LOCALFS_SRC := $(wildcard jvm/localfs/src/main/java/io/billing/localfs/*.java)
localfs: $(LOCALFS_JAR)
$(LOCALFS_JAR): $(LOCALFS_SRC) $(JARS_STAMP) $(VENV)/.installed
	@command -v javac >/dev/null || { echo "a Java 17 JDK is required (javac not found on PATH)"; exit 1; }
	@echo ">> jvm/localfs: Hadoop's local file system without a process per file operation"
	@rm -rf jvm/target/localfs-classes && mkdir -p jvm/target/localfs-classes
	@jars=$$($(PY) -c "import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), 'jars'))") && \
	  javac --release 17 -nowarn -cp "$$jars/*" -d jvm/target/localfs-classes $(LOCALFS_SRC)
	@jar cf $@ -C jvm/target/localfs-classes .

kafka-start: setup
	@$(DEV) kafka start

kafka-stop:
	@test -x $(PY) && $(DEV) kafka stop || true

# The Databricks CLI is built first so tests/unit/test_bundle.py runs the CLI's own `bundle
# validate` for dev and prod; LAKEHOUSE_REQUIRE_DATABRICKS_CLI=1 turns those tests' skip
# (no CLI) into a failure, so CI cannot pass without having validated the bundle.
test: setup kafka-start databricks-cli
	@LAKEHOUSE_REQUIRE_DATABRICKS_CLI=1 $(PY) -m pytest -q --durations=15

test-unit: setup
	@$(PY) -m pytest -q tests/unit

# The crash drill at CI size (SIGKILLs and a broker restart on the drill's own broker,
# port 19192): minutes of wall time, so it is a CI step of its own rather than part of
# `make test`. bench/drill_crash.py runs it at full size.
drill: setup
	@$(PY) -m pytest -q -m drill tests/integration/test_crash_drill.py

# The wheel as Databricks gets it: built as the bundle builds it, installed into a fresh
# virtualenv outside the checkout (the `local` extra, pinned by requirements.lock), every
# bundle entry point run from there against a small lake and the local broker. A few
# minutes; CI runs it after `make test`.
wheel-smoke: setup kafka-start
	@$(PY) scripts/wheel_smoke.py

# The pipeline on a real multi-executor Spark: a standalone cluster (master and two workers of
# 1 core and 2g, each its own JVM, on 127.0.0.1, from the installed wheel's pyspark) runs
# ingest, billing and export from the wheel; every table and export file must equal a
# local[*] run's over the same events, and both executors must have run tasks. A few
# minutes; CI runs it after `make wheel-smoke`, on the same broker.
.PHONY: cluster-check
cluster-check: setup kafka-start
	@$(PY) scripts/cluster_check.py

demo: setup
	@$(DEV) demo

bench: setup kafka-start
	@$(PY) -m bench.bench_ingest

# Re-pin requirements.lock from the ranges in pyproject.toml.
lock: venv
	@$(VENV)/bin/uv pip compile pyproject.toml --extra local --extra dev -o requirements.lock --python-version 3.11 -q

docs: venv
	@$(PY) -m devtools.docs

# The Databricks CLI (a Go module, pinned), to validate and deploy the bundle and to regenerate
# the bundle schema the tests validate against (tests/fixtures/databricks_bundle_schema.json).
# `go install ...@version` asks the proxy for the module's version list, which it refuses for
# this module, so the pinned version is downloaded and built from the module cache instead.
# The release's own flags (.goreleaser.yaml): no cgo, stripped, the version stamped in, so
# `databricks --version` says 0.298.0 rather than 0.0.0-dev. A cold build (empty ~/go and
# ~/.cache/go-build, as on a fresh CI machine: module download about 10 s, then the compile)
# took 2 min 48 s on the 2-core machine kind when quiet (measured before the release flags),
# 10 min 53 s with them and the Spark suites of other jobs loading it 20-deep: within CI's
# budget either way. The stamp names the version,
# so the target is a no-op once built and rebuilds only when the pin moves.
DATABRICKS_CLI_VERSION := v0.298.0
DATABRICKS := .local/bin/databricks
DATABRICKS_STAMP := .local/bin/.databricks-$(DATABRICKS_CLI_VERSION)
.PHONY: databricks-cli bundle-schema
databricks-cli: $(DATABRICKS_STAMP)
$(DATABRICKS_STAMP):
	@command -v go >/dev/null || { echo "Go >= 1.25 is required to build the Databricks CLI (go not found on PATH)"; exit 1; }
	@mkdir -p .local/bin
	@echo ">> Databricks CLI $(DATABRICKS_CLI_VERSION) (go build, about 3 minutes the first time)"
	@dir=$$(go mod download -json github.com/databricks/cli@$(DATABRICKS_CLI_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && \
	  cd "$$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
	    -X github.com/databricks/cli/internal/build.buildVersion=$(DATABRICKS_CLI_VERSION:v%=%)" \
	    -o "$(CURDIR)/$(DATABRICKS)" .
	@rm -f .local/bin/.databricks-* && touch $(DATABRICKS_STAMP)

bundle-schema: $(DATABRICKS_STAMP)
	@$(DATABRICKS) bundle schema > tests/fixtures/databricks_bundle_schema.json
	@echo ">> tests/fixtures/databricks_bundle_schema.json regenerated"

clean: kafka-stop
	rm -rf $(VENV) jvm/target .local lakehouse
