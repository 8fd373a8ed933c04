# The two commands of the README (`make demo`, `make test`) and the pieces they are made of.
# Everything a fresh Debian machine with Rust, Java 17+ and Maven lacks is installed here or by
# scripts/services.sh.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Builds stay warm across clones (CI uses a fresh clone per run).
export CARGO_TARGET_DIR ?= $(HOME)/.cache/votes-target
export CARGO_TERM_COLOR ?= never
# Property tests draw from this seed, so a failure reproduces with the same command (proptest
# prints the minimal failing input); change it to explore other cases.
export PROPTEST_RNG_SEED ?= 20261125
VOTES := $(CARGO_TARGET_DIR)/debug/votes
SERVICES := scripts/services.sh
# CI passes a file in which `up` records what it started, so it can stop exactly that.
SESSION := $(if $(VOTES_SERVICES_SESSION),--session-file $(VOTES_SERVICES_SESSION),)

.PHONY: help
help:
	@echo "make demo    start the services and the appliance, open a demo election, send votes, print where to look"
	@echo "make test    install what is missing, start the services, fmt, clippy, every test"
	@echo "make deb     build the Debian package (binary, systemd units, /etc/votes, the votes user) into \$$CARGO_TARGET_DIR/deb"
	@echo "make perf    measure the appliance against its peers (Kafka floor, Kafka Streams, PostgreSQL, Redis): table + plot"
	@echo "make services-up | services-down | services-status | test-systemd | test-ops | deb | test-deb | test-browser | test-cluster | test-chaos | chaos | bench | fuzz | demo-stop"

.PHONY: prerequisites
prerequisites:
	@command -v cargo >/dev/null || { echo "error: cargo not found: install Rust with rustup" >&2; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
	@pkg-config --exists openssl 2>/dev/null || { echo "installing libssl-dev and pkg-config (librdkafka's TLS and SCRAM)"; apt-get install -y -q libssl-dev pkg-config >/dev/null; }

.PHONY: services-up services-down services-status
services-up:
	$(SERVICES) up $(SESSION)
services-down:
	$(SERVICES) down
services-status:
	$(SERVICES) status

.PHONY: build
build: prerequisites
	cargo build --workspace --all-targets

.PHONY: fmt-check clippy
fmt-check: prerequisites
	cargo fmt --all -- --check
clippy: prerequisites
	cargo clippy --workspace --all-targets -- -D warnings

# Unit, property and integration tests; the integration tests use the real services.
.PHONY: test-rust
test-rust: build services-up
	cargo test --workspace --all-targets
	cargo test --workspace --doc

# A 3-broker KRaft cluster on 9092-9094 (replication 3, min ISR 2) takes a replicated topic.
# It shares port 9092 with the single-node broker, so that one is stopped first and restarted
# after, leaving the services as the rest of `make test` expects them.
.PHONY: test-cluster
test-cluster: build
	scripts/test-cluster.sh

# The pages in Debian's Chromium (headless, Playwright): sign in, vote, receipt, live results
# over SSE, already voted, the dashboard. Installs chromium and playwright-core when missing.
# systemd-analyze verify of the unit files (with their drop-ins) against the built binary.
.PHONY: test-systemd
test-systemd: build
	scripts/verify-systemd.sh $(VOTES)

# The Debian package (scripts/package-deb.sh): binary, units, /etc/votes, the votes user.
.PHONY: deb test-deb
deb: prerequisites
	scripts/package-deb.sh
# Installs it here, verifies the installed units, runs `votes tune check` and `votes init` from
# it as the service user, purges it.
test-deb: services-up
	scripts/test-deb.sh

# promtool on the alerting rules (and their unit tests), the scrape configuration and every
# query of the Grafana dashboard (ops/); tests/ops.rs checks the series they read exist.
.PHONY: test-ops
test-ops:
	scripts/verify-ops.sh

.PHONY: test-browser
test-browser: build services-up
	tests/browser/run.sh

# One short seeded fault campaign (make chaos) on every run: the checker's verdict is the test.
# The seed is the day, so runs explore new schedules; CHAOS_SEED=S repeats one.
CHAOS_SEED ?= $(shell date -u +%Y%m%d)
.PHONY: test-chaos
test-chaos: build
	RUNS=1 SEED=$(CHAOS_SEED) DURATION=45s scripts/chaos.sh

.PHONY: test
test: fmt-check clippy test-ops test-rust test-systemd test-deb test-browser test-cluster test-chaos
	@echo "make test: all checks passed"

.PHONY: demo demo-stop
demo: prerequisites services-up
	scripts/demo.sh
demo-stop:
	scripts/demo-stop.sh

# Seeded fault-campaign runs against a 3-broker cluster, three nodes and two persisters, with an
# independent checker (perf/src/chaos.rs): make chaos [RUNS=N] [SEED=S] [DURATION=120s].
.PHONY: chaos
chaos: prerequisites
	RUNS=$(or $(RUNS),1) SEED=$(or $(SEED),1) DURATION=$(or $(DURATION),120s) scripts/chaos.sh

.PHONY: bench
bench: prerequisites
	cargo bench --workspace

# The appliance against its peers on this machine: table into perf/RESULTS.md, plot into
# perf/latency-vs-load.png (about 15-25 minutes; see perf/scripts/perf.sh for the knobs).
.PHONY: perf
perf: prerequisites
	perf/scripts/perf.sh

# Every cargo-fuzz target for FUZZ_SECONDS each (default 60); fails on the first crash and
# leaves the input in fuzz/artifacts/<target>/.
.PHONY: fuzz
fuzz: prerequisites
	fuzz/run.sh
