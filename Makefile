# porthole: `make demo` builds and runs the demo, `make test` runs every test.
BUN := node_modules/.bin/bun
SOURCES := $(shell find src proto -type f) package.json
SHIM := native/build/porthole-shim.so
CC ?= cc

.PHONY: all build shim demo test test-unit test-e2e check deps system-deps clean

all: build

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

deps: node_modules/.installed

# The tools the end-to-end tests and the demo run (ip netns, unshare, nsenter, sshd).
system-deps:
	@missing=""; for tool in ip:iproute2 unshare:util-linux nsenter:util-linux /usr/sbin/sshd:openssh-server ssh-keygen:openssh-client socat:socat; do \
	  command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "please install:$$missing" >&2; exit 1; fi; fi

# The native shim (AF_VSOCK, netlink sock_diag), embedded in the binary.
$(SHIM): native/porthole_shim.c
	@mkdir -p native/build
	$(CC) -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<

shim: $(SHIM)

dist/porthole: node_modules/.installed $(SHIM) $(SOURCES)
	$(BUN) build --compile --minify-syntax src/cli/main.ts --outfile dist/porthole

build: dist/porthole

demo: build system-deps
	dist/porthole demo

check: deps shim
	node_modules/.bin/tsc -p .

test: build system-deps check
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) test $(TEST_ARGS)

test-unit: deps shim
	$(BUN) test test/core test/unit

test-e2e: build system-deps
	PORTHOLE_BIN=$(CURDIR)/dist/porthole $(BUN) test test/e2e

clean:
	rm -rf dist native/build
