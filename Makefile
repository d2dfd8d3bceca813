# porthole: `make demo` builds and runs the demo, `make test` runs every test.
BUN := node_modules/.bin/bun
SOURCES := $(shell find src proto -type f) package.json
# The native shim, one per architecture; every binary and the bundle embed both and load
# the one that matches the machine. On an x86-64 build machine the arm64 one is
# cross-compiled with Debian's gcc-aarch64-linux-gnu (and the other way round on arm64).
SHIM_X64 := native/build/porthole-shim-x64.so
SHIM_ARM64 := native/build/porthole-shim-arm64.so
SHIMS := $(SHIM_X64) $(SHIM_ARM64)
BUILD_ARCH := $(shell uname -m)
ifeq ($(BUILD_ARCH),aarch64)
CC_X64 ?= x86_64-linux-gnu-gcc
CC_ARM64 ?= cc
CROSS_DEPS := x86_64-linux-gnu-gcc:gcc-x86-64-linux-gnu /usr/x86_64-linux-gnu/include/stdio.h:libc6-dev-amd64-cross
else
CC_X64 ?= cc
CC_ARM64 ?= aarch64-linux-gnu-gcc
CROSS_DEPS := aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu /usr/aarch64-linux-gnu/include/stdio.h:libc6-dev-arm64-cross
endif
SHIM_CFLAGS := -O2 -Wall -Wextra -Werror -shared -fPIC
SHIM_SOURCES := $(wildcard native/*.c) native/shim.h native/bpf_asm.h
# Bun's arm64 runtime for cross-compiling, from the npm registry at the version (and
# integrity) package-lock.json pins (scripts/bun-runtime.mjs).
BUN_VERSION = $(shell node -p 'require("./package-lock.json").packages["node_modules/bun"].version')
BUN_ARM64 = node_modules/.cache/porthole/bun-linux-aarch64-$(BUN_VERSION)/bun

.PHONY: all build dist shim demo test test-unit test-e2e test-vm test-arm64 check deps system-deps arm64-deps bench bench-smoke clean

all: build

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

deps: node_modules/.installed

# The tools the build, the end-to-end tests and the demo run (compilers for both shims,
# ip netns, unshare, nsenter, sshd, QEMU for both architectures, python3 for the reset server
# of the stream-end tests and the web servers of the many-guests tests, curl as their client,
# pgrep), grpc C-core (python3-grpcio, with protoc for Lima's .proto) and grpc-go (Go with
# Debian's golang-google-grpc-dev: the stack Lima's agents run on), the independent gRPC peers,
# and bpftool (which lists the BPF programs the agent attaches).
system-deps:
	@missing=""; for tool in cc:gcc $(CROSS_DEPS) ip:iproute2 unshare:util-linux nsenter:util-linux /usr/sbin/sshd:openssh-server ssh-keygen:openssh-client ssh:openssh-client socat:socat iperf3:iperf3 qemu-system-x86_64:qemu-system-x86 qemu-system-aarch64:qemu-system-arm qemu-aarch64-static:qemu-user-static cpio:cpio protoc:protobuf-compiler go:golang-go bpftool:bpftool /usr/bin/python3:python3 curl:curl pgrep:procps strace:strace /usr/sbin/haproxy:haproxy; do \
	  { command -v $${tool%%:*} || [ -e $${tool%%:*} ]; } >/dev/null || missing="$$missing $${tool#*:}"; done; \
	/usr/bin/python3 -c 'import grpc, google.protobuf' 2>/dev/null || missing="$$missing python3-grpcio python3-protobuf"; \
	[ -d /usr/share/gocode/src/google.golang.org/grpc ] || missing="$$missing golang-google-grpc-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "please install:$$missing" >&2; exit 1; fi; fi

# The arm64 binary's run-time libraries for qemu-user (the arm64 tests): Debian's libc6:arm64
# through multiarch.
arm64-deps:
	@if [ ! -e /lib/ld-linux-aarch64.so.1 ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    dpkg --add-architecture arm64 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libc6:arm64; \
	  else echo "please install libc6:arm64 (dpkg --add-architecture arm64)" >&2; exit 1; fi; fi

# The native shim (AF_VSOCK, netlink sock_diag), embedded in the binary.
$(SHIM_X64): $(SHIM_SOURCES) | system-deps
	@mkdir -p native/build
	$(CC_X64) $(SHIM_CFLAGS) -o $@ $(filter %.c,$^)

$(SHIM_ARM64): $(SHIM_SOURCES) | system-deps
	@mkdir -p native/build
	$(CC_ARM64) $(SHIM_CFLAGS) -o $@ $(filter %.c,$^)

shim: $(SHIMS)

dist/porthole: node_modules/.installed $(SHIMS) $(SOURCES)
	$(BUN) build --compile --minify-syntax src/cli/main.ts --outfile dist/porthole

build: dist/porthole

# The esbuild bundle for Node and Deno.
dist/porthole.mjs: node_modules/.installed $(SHIMS) $(SOURCES) scripts/bundle.mjs
	node scripts/bundle.mjs

$(BUN_ARM64): package-lock.json scripts/bun-runtime.mjs | node_modules/.installed
	node scripts/bun-runtime.mjs linux-aarch64 $@

dist/porthole-linux-x64: node_modules/.installed $(SHIMS) $(SOURCES)
	$(BUN) build --compile --minify-syntax --target=bun-linux-x64 src/cli/main.ts --outfile $@

# Cross-compiled with Bun's arm64 runtime from npm: nothing is downloaded from elsewhere.
dist/porthole-linux-arm64: node_modules/.installed $(BUN_ARM64) $(SHIMS) $(SOURCES)
	$(BUN) build --compile --minify-syntax --target=bun-linux-arm64 --compile-executable-path=$(BUN_ARM64) src/cli/main.ts --outfile $@

# Release artefacts: one binary per platform, the bundle (with both shims), and SHA256SUMS.
dist: dist/porthole-linux-x64 dist/porthole-linux-arm64 dist/porthole.mjs
	cd dist && sha256sum porthole-linux-x64 porthole-linux-arm64 porthole.mjs porthole-shim-*.so > SHA256SUMS
	@cat dist/SHA256SUMS

demo: build system-deps
	dist/porthole demo

check: deps shim
	node_modules/.bin/tsc -p .

# Everything, the arm64 tests (test/arm64) included: they need the arm64 binary.
test: build dist/porthole.mjs dist/porthole-linux-arm64 dist/lima-go-peer system-deps arm64-deps check
	PORTHOLE_BIN=$(CURDIR)/dist/porthole PORTHOLE_ARM64_BIN=$(CURDIR)/dist/porthole-linux-arm64 $(BUN) test $(TEST_ARGS)

test-unit: deps shim
	$(BUN) test test/core test/host test/guest test/runtime test/transport

# The real-VM tests alone (QEMU, TCG; an x86-64 and an aarch64 guest): they also run, all of
# them, as part of make test.
test-vm: build dist/porthole-linux-arm64 system-deps arm64-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole PORTHOLE_ARM64_BIN=$(CURDIR)/dist/porthole-linux-arm64 $(BUN) test test/vm

# The arm64 binary under qemu-user, against the x86-64 one (also part of make test).
test-arm64: build dist/porthole-linux-arm64 dist/porthole.mjs dist/lima-go-peer system-deps arm64-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole PORTHOLE_ARM64_BIN=$(CURDIR)/dist/porthole-linux-arm64 $(BUN) test test/arm64

test-e2e: build dist/porthole.mjs dist/lima-go-peer system-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) test test/e2e

# Benchmarks (never timed tests): the full run, and the short smoke run CI does.
bench: build dist/rr system-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) bench/run.ts $(BENCH_ARGS)

bench-smoke: build dist/rr system-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) bench/run.ts --smoke --json dist/bench-smoke.json

# The benchmark's native round-trip client (bench/rr.c).
dist/rr: bench/rr.c | system-deps
	@mkdir -p dist
	cc -O2 -pthread -o $@ $<

# Lima's side on grpc-go, for the tests (test/fixtures/lima-go-peer): built offline against
# Debian's Go packages (GOPATH mode, no module download).
dist/lima-go-peer: test/fixtures/lima-go-peer/main.go | system-deps
	cd test/fixtures/lima-go-peer && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(CURDIR)/native/build/go-cache GOFLAGS= go build -o $(CURDIR)/$@ .

clean:
	rm -rf dist native/build
