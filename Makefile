# porthole: `make demo` builds and runs the demo, `make test` runs every test.
BUN := node_modules/.bin/bun
SOURCES := $(shell find src proto -type f) package.json
SHIM := native/build/porthole-shim.so
CC ?= cc

.PHONY: all build dist shim demo test test-unit test-e2e test-vm check deps system-deps bench bench-smoke clean

all: build

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

deps: node_modules/.installed

# The tools the end-to-end tests and the demo run (ip netns, unshare, nsenter, sshd).
system-deps:
	@missing=""; for tool in cc:gcc ip:iproute2 unshare:util-linux nsenter:util-linux /usr/sbin/sshd:openssh-server ssh-keygen:openssh-client ssh:openssh-client socat:socat iperf3:iperf3 qemu-system-x86_64:qemu-system-x86 cpio:cpio /usr/bin/python3:python3; do \
	  command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "please install:$$missing" >&2; exit 1; fi; fi

# The native shim (AF_VSOCK, netlink sock_diag), embedded in the binary.
$(SHIM): native/porthole_shim.c | system-deps
	@mkdir -p native/build
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<

shim: $(SHIM)

dist/porthole: node_modules/.installed $(SHIM) $(SOURCES)
	$(BUN) build --compile --minify-syntax src/cli/main.ts --outfile dist/porthole

build: dist/porthole

# The esbuild bundle for Node and Deno.
dist/porthole.mjs: node_modules/.installed $(SHIM) $(SOURCES) scripts/bundle.mjs
	node scripts/bundle.mjs

# Release artefacts: single binaries per platform, and the bundle. arm64 needs Bun's arm64
# runtime, which `bun build --compile` downloads: where that cannot happen, it is skipped.
dist: dist/porthole.mjs
	$(BUN) build --compile --minify-syntax --target=bun-linux-x64 src/cli/main.ts --outfile dist/porthole-linux-x64
	@$(BUN) build --compile --minify-syntax --target=bun-linux-arm64 src/cli/main.ts --outfile dist/porthole-linux-arm64 >/dev/null 2>&1 \
	  && echo "built dist/porthole-linux-arm64" \
	  || echo "skipped dist/porthole-linux-arm64: Bun's arm64 runtime is not available offline (and the shim would need an arm64 compiler)"

demo: build system-deps
	dist/porthole demo

check: deps shim
	node_modules/.bin/tsc -p .

test: build dist/porthole.mjs system-deps check
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) test $(TEST_ARGS)

test-unit: deps shim
	$(BUN) test test/core test/unit

# The real-VM tests alone (QEMU, TCG): they also run as part of make test.
test-vm: build system-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) test test/vm

test-e2e: build dist/porthole.mjs system-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) test test/e2e

# Benchmarks (never timed tests): the full run, and the short smoke run CI does.
bench: build system-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) bench/run.ts $(BENCH_ARGS)

bench-smoke: build system-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) bench/run.ts --smoke --json dist/bench-smoke.json

clean:
	rm -rf dist native/build
