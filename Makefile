# Ferry build, test and benchmark entry points. See README.md.

GO        ?= go
BIN       := bin
PKGS      := ./...

# Go as the README installs it, in /usr/local/go, is found without the
# caller putting it on PATH (a fresh machine's root has not).
ifneq ($(wildcard /usr/local/go/bin/go),)
export PATH := /usr/local/go/bin:$(PATH)
endif
# As root, Go's caches, modules and telemetry counters default to
# FERRY_CACHE, outside /root: the tests must leave /root as they found it
# (.ci/run checks), and the go command would otherwise write there. Go's
# settings file is still read where it is (GOENV, resolved as the go
# command does before XDG_CONFIG_HOME moves). A variable set by the caller wins.
FERRY_CACHE ?= /var/cache/ferry
ifeq ($(shell id -u),0)
ifeq ($(origin GOENV),undefined)
export GOENV := $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/go/env
endif
ifeq ($(origin GOPATH),undefined)
export GOPATH := $(FERRY_CACHE)/go
endif
ifeq ($(origin GOCACHE),undefined)
export GOCACHE := $(FERRY_CACHE)/go-build
endif
ifeq ($(origin GOMODCACHE),undefined)
export GOMODCACHE := $(GOPATH)/pkg/mod
endif
ifeq ($(origin XDG_CONFIG_HOME),undefined)
export XDG_CONFIG_HOME := $(FERRY_CACHE)/config
endif
endif

# go-dqlite (host/cluster) links Debian's libdqlite and, with this tag, the
# system SQLite instead of compiling the bundled one (much faster builds).
export GOFLAGS := -tags=libsqlite3
# go-dqlite v1.11.5, the version Debian's libdqlite 1.11.1 takes, races on
# its own node store (YamlNodeStore.Get hands out the slice its connectors
# sort concurrently), so the race detector would flag dqlite, not Ferry:
# the packages that run dqlite in their own process are tested without
# -race.
NORACE    := ./host/cluster/... ./host/catalog/...
FUZZTIME  ?= 60s
BENCHTIME ?= 2s

.PHONY: all build deps debtools gocheck goenv test test-only bench fuzz fmt vet lint demo rootfs rootfs-aleph deb clean

all: build

## build: static bin/init (CGO_ENABLED=0) and bin/host-agent
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/init ./cmd/init
	$(GO) build -trimpath -o $(BIN)/host-agent ./cmd/host-agent

## deps: the Debian packages the tests need (installed when missing, as
## root; .ci/deps)
deps:
	@.ci/deps

## gocheck: Go is there (make cannot install it: Debian's is too old)
gocheck:
	@command -v $(GO) >/dev/null || { echo "make: no Go toolchain: install Go (go.mod's version or newer) in /usr/local/go, see README.md" >&2; exit 1; }
	@$(GO) version

## goenv: where Go and its caches are for this make (a test checks /root
## is not among them)
goenv:
	@echo "go=$$(command -v $(GO))"
	@$(GO) env GOROOT GOPATH GOCACHE GOMODCACHE GOENV GOTELEMETRYDIR | sed 's/^/env=/'

## test: the test command, alone: installs the Debian packages the tests
## need when missing (as root), builds nfpm, vets, then runs every test
## (test-only) and, as root, checks they left the host as they found it
## (.ci/host-state). The Go modules are fetched as the build needs them.
test: gocheck deps debtools vet
	@.ci/host-state around $(MAKE) --no-print-directory test-only

## test-only: every test with the race detector (the VM tests build the
## root image with make rootfs on first use, as root), nothing installed
## first
test-only:
	$(GO) test -race -count=1 -timeout 45m $$($(GO) list $(PKGS) | grep -v -e '/host/cluster' -e '/host/catalog')
	$(GO) test -count=1 -timeout 10m $(NORACE)

## bench: Ferry against uvicorn, nginx in front of uvicorn and the
## per-request msgpack design (BENCHMARKS.md; writes bench/results.md), then
## the Go benchmarks of the protocol and the relay hot path. Installs the
## tests' Debian packages (nginx-light among them; as root).
BENCH_FLAGS ?=
bench: deps build
	$(GO) build -o $(BIN)/ferry-bench ./cmd/ferry-bench
	$(BIN)/ferry-bench -out bench/results.md $(BENCH_FLAGS)
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./protocol/...
	$(GO) test -run '^$$' -bench ServeHello -benchmem -benchtime $(BENCHTIME) ./host/relay/
	$(GO) test -run '^$$' -bench RelayASGIHello -benchmem -benchtime $(BENCHTIME) ./tests/

## fuzz: run every fuzz target for FUZZTIME each (default 60s)
fuzz:
	@set -e; for pkg in ./protocol/frame ./protocol/message ./protocol/mux; do \
		for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

fmt:
	gofmt -w .

vet:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed on:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)

lint: vet

## demo: serve examples/hello (FastAPI) through the host agent; prints a curl
## command (installs the Debian packages it needs first, as root)
demo:
	@examples/demo-deps.sh
	@$(MAKE) --no-print-directory build
	@examples/demo.sh

## deb: the Debian package of bin/init, bin/host-agent, the ferry-agent
## systemd service, its default configuration and the root image builder
## (packaging/nfpm.yaml), as DEB_DIR/ferry_VERSION_amd64.deb, with nfpm
## (debtools)
DEB_DIR     ?= build
DEB_VERSION ?= 0.0~git$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d 2>/dev/null || echo 0)
deb: build debtools
	@mkdir -p $(DEB_DIR)
	FERRY_VERSION='$(DEB_VERSION)' $(NFPM) package --config packaging/nfpm.yaml --packager deb --target $(DEB_DIR)/ferry_$(DEB_VERSION)_amd64.deb

## debtools: nfpm, the packager, at its pinned version, built into bin/ by
## go install (a tool, not a dependency of Ferry's module); make test
## builds it so that the package's test downloads nothing
NFPM_VERSION := v2.45.2
NFPM         := $(BIN)/nfpm-$(NFPM_VERSION)
debtools: $(NFPM)
$(NFPM):
	@mkdir -p $(BIN)
	GOBIN=$(abspath $(BIN)) $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	mv $(BIN)/nfpm $@

## rootfs: bootable image for the qemu backend in build/rootfs (root; cached)
rootfs: build
	rootfs/build.sh $(BIN)/init build/rootfs

## rootfs-aleph: the same image in the reference runtime's layout, for
## aleph-vm's supervisor (build/rootfs/rootfs-aleph.squashfs; root; cached)
rootfs-aleph: build
	FERRY_LAYOUT=aleph rootfs/build.sh $(BIN)/init build/rootfs

clean:
	rm -rf $(BIN)
