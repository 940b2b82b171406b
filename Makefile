# Thermostat firmware and controllerlite. `make demo` runs the main job,
# `make test` every test. See README.md.

GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo none)
DATE     ?= $(shell git log -1 --format=%cI 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
GOFLAGS_BUILD := -trimpath -ldflags "$(LDFLAGS)"

.PHONY: all build demo test test-short fuzz vet aedes clean

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/thermostat ./firmware
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/controllerlite ./controllerlite

# The node aedes broker used by the interop tests and the mttr harness.
aedes: brokers/aedes/node_modules/.package-lock.json
brokers/aedes/node_modules/.package-lock.json: brokers/aedes/package-lock.json
	cd brokers/aedes && npm ci --no-audit --no-fund

# The main job: a throwaway PKI, controllerlite with its embedded broker and
# three simulated thermostats, the worked example's conflict played on one.
demo: build
	$(GO) run ./demo --bin $(BIN)

test: aedes
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 12m ./...

test-short:
	$(GO) test -short -count=1 ./...

fuzz:
	$(GO) test -run XXX -fuzz FuzzDecodeMessage -fuzztime 60s ./protocol

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

clean:
	rm -rf $(BIN) dist
