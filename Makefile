# Thermostat firmware and controllerlite. `make demo` runs the main job,
# `make test` every test. See README.md.

GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo none)
DATE     ?= $(shell git log -1 --format=%cI 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
GOFLAGS_BUILD := -trimpath -ldflags "$(LDFLAGS)"

.PHONY: all build demo test test-short fuzz soak vet aedes clean

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

# Thirty days of simulated life of 20 thermostats at 10,000x real time
# (about 5 minutes here); see README "Thirty days of simulated life".
soak:
	$(GO) run ./soak --days 30 --devices 20 --speed 10000

fuzz:
	$(GO) test -run XXX -fuzz FuzzDecodeMessage -fuzztime 60s ./protocol

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

clean:
	rm -rf $(BIN) dist

# --- Release: cross builds, goreleaser snapshot, the suite on armv6 ---
# (systemd/, svcctl/, packaging/, .goreleaser.yaml; see docs/install.md)

GORELEASER ?= $(GO) run github.com/goreleaser/goreleaser/v2@v2.15.1
CROSS_DIR  := $(BIN)/cross
# NAME:GOARCH:GOARM. armv6 runs on every Pi (Zero/1 included); a GOARM=7
# binary dies with SIGILL on the Zero's ARM1176.
CROSS_TARGETS := armv6:arm:6 armv7:arm:7 arm64:arm64: amd64:amd64:
# The Pi Zero's flash and RAM budget for the armv6 thermostat.
ARMV6_MAX_BYTES := 15728640

.PHONY: cross release-snapshot test-arm

# Static, stripped, -trimpath thermostat binaries with version, commit and
# date stamped in, then their sizes.
cross:
	@set -e; for t in $(CROSS_TARGETS); do \
		name=$${t%%:*}; rest=$${t#*:}; arch=$${rest%%:*}; arm=$${rest#*:}; \
		echo "build $(CROSS_DIR)/thermostat-linux-$$name"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch GOARM=$$arm \
			$(GO) build $(GOFLAGS_BUILD) -o $(CROSS_DIR)/thermostat-linux-$$name ./firmware; \
	done
	@stat -c '%s %n' $(CROSS_DIR)/thermostat-linux-* | \
		awk '{ printf "  %-40s %10d bytes %6.1f MiB\n", $$2, $$1, $$1 / 1048576 }'
	@size=$$(stat -c %s $(CROSS_DIR)/thermostat-linux-armv6); \
		test $$size -le $(ARMV6_MAX_BYTES) || { echo "armv6 thermostat is $$size bytes, over $(ARMV6_MAX_BYTES)"; exit 1; }

# Archives, .debs and checksums for every target in dist/, offline (the
# goreleaser module comes from the Go module proxy; ~2 min the first time).
release-snapshot:
	THERMO_COMMIT=$(COMMIT) THERMO_DATE=$(DATE) THERMO_RELEASE_PUB=$(if $(RELEASE_PUB),$(abspath $(RELEASE_PUB))) \
		$(GORELEASER) release --snapshot --clean
	@ls -l dist/*.deb dist/*.tar.gz dist/checksums.txt

# The whole test suite built for armv6 and run under qemu-user as a Pi Zero
# (no -race there). Needs qemu-user (apt-get install qemu-user). The test
# binaries run emulated; GOARCH/GOARM are dropped from their environment,
# so helper binaries a test builds with `go build` are host binaries the
# kernel can start (there is no binfmt_misc for arm here). A test that
# re-executes its own (arm) binary cannot do that under qemu.
test-arm:
	CGO_ENABLED=0 GOARCH=arm GOARM=6 $(GO) test -count=1 -timeout 40m \
		-exec "env -u GOARCH -u GOARM qemu-arm -cpu arm1176" ./...

# --- mttr: the broker-fault harness (mttr/, docs/mttr.md) ---
# MTTR_BROKER picks mosquitto, aedes or embedded; results go to MTTR_OUT.

MTTR_BROKER ?= mosquitto
MTTR_OUT    ?= $(BIN)/mttr-out
MTTR        := $(BIN)/mttr

.PHONY: mttr mttr-short mttr-kill mttr-hang mttr-hang-seed mttr-broker mttr-long-outage mttr-partition mttr-scale mttr-scale-10k

mttr:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(MTTR) ./mttr

# The short run `make test` plays (TestShortRun in mttr/), as a command.
mttr-short: mttr aedes
	@mkdir -p $(MTTR_OUT)
	$(MTTR) --broker $(MTTR_BROKER) --fault kill:3,hang:2 --keep-alive 2s --keep-running 2s \
		--devices 10 --baseline-devices 2 --json $(MTTR_OUT)/short.json --svg $(MTTR_OUT)/short.svg

# The runs of docs/mttr.md and the README. 100 devices on our transport and,
# where said, 100 on plain paho defaults in the same run.
# Kill: the seed's 15 s keep-alive, broker down 15 s.
mttr-kill: mttr aedes
	@mkdir -p $(MTTR_OUT)
	$(MTTR) --broker $(MTTR_BROKER) --fault kill --restart-count 50 --devices 100 \
		--keep-alive 15s --factor-of-keep-alive 1 --keep-running 15s --max-recovery 20s \
		--json $(MTTR_OUT)/kill-$(MTTR_BROKER).json --svg $(MTTR_OUT)/kill-$(MTTR_BROKER).svg

# Hang: 5 s keep-alive (detection is judged against it), frozen 10 s.
mttr-hang: mttr aedes
	@mkdir -p $(MTTR_OUT)
	$(MTTR) --broker $(MTTR_BROKER) --fault hang --restart-count 50 --devices 100 \
		--keep-alive 5s --keep-dead 10s --keep-running 5s --max-recovery 15s \
		--json $(MTTR_OUT)/hang-$(MTTR_BROKER).json --svg $(MTTR_OUT)/hang-$(MTTR_BROKER).svg

# Hang at the seed's 15 s keep-alive, frozen 30 s, 10 cycles.
mttr-hang-seed: mttr aedes
	@mkdir -p $(MTTR_OUT)
	$(MTTR) --broker $(MTTR_BROKER) --fault hang --restart-count 10 --devices 100 \
		--keep-alive 15s --keep-dead 30s --keep-running 15s --max-recovery 20s \
		--json $(MTTR_OUT)/hang15-$(MTTR_BROKER).json --svg $(MTTR_OUT)/hang15-$(MTTR_BROKER).svg

# MTTR_CYCLES kill and as many hang cycles on one broker, ours only
# (make mttr-broker MTTR_BROKER=aedes).
MTTR_CYCLES ?= 20
mttr-broker: mttr aedes
	@mkdir -p $(MTTR_OUT)
	$(MTTR) --broker $(MTTR_BROKER) --fault kill:$(MTTR_CYCLES),hang:$(MTTR_CYCLES) --devices 100 --baseline-devices 0 \
		--keep-alive 5s --keep-dead 10s --keep-running 5s --max-recovery 15s \
		--json $(MTTR_OUT)/both-$(MTTR_BROKER).json --svg $(MTTR_OUT)/both-$(MTTR_BROKER).svg

# Ten minutes down (40 × the 15 s keep-alive), the longest the target covers.
mttr-long-outage: mttr aedes
	@mkdir -p $(MTTR_OUT)
	$(MTTR) --broker $(MTTR_BROKER) --fault kill --restart-count 1 --devices 100 \
		--keep-alive 15s --factor-of-keep-alive 40 --keep-running 15s --max-recovery 60s \
		--json $(MTTR_OUT)/long-$(MTTR_BROKER).json --svg $(MTTR_OUT)/long-$(MTTR_BROKER).svg

# Needs root and iproute2 (network namespaces); skipped with a message otherwise.
mttr-partition: mttr aedes
	@mkdir -p $(MTTR_OUT)
	$(MTTR) --broker $(MTTR_BROKER) --fault partition --restart-count 50 --devices 100 \
		--keep-alive 5s --keep-dead 10s --keep-running 5s --max-recovery 15s \
		--json $(MTTR_OUT)/partition-$(MTTR_BROKER).json --svg $(MTTR_OUT)/partition-$(MTTR_BROKER).svg

# Scale (docs/scale.md): a fleet returning to a restarted broker, ours
# only, the issue's settings; MTTR_SCALE devices (1000; 10000 for the
# 10k target, with the devices' state in memory: see --memory-state).
# On an external broker (Mosquitto, aedes) the controller runs as a process of
# its own, so that its CPU and memory are reported apart from the devices'
# (the steady-state targets; docs/mttr.md); the embedded broker has it inside.
MTTR_SCALE ?= 1000
MTTR_SCALE_CONTROLLER = $(if $(filter embedded,$(MTTR_BROKER)),,--controller-process)
mttr-scale: mttr
	@mkdir -p $(MTTR_OUT)
	$(MTTR) --broker $(MTTR_BROKER) $(MTTR_SCALE_CONTROLLER) --fault kill --restart-count 3 --devices $(MTTR_SCALE) --baseline-devices 0 \
		--keep-alive 15s --factor-of-keep-alive 0.34 --keep-running 20s --max-recovery 60s --memory-state \
		--json $(MTTR_OUT)/scale-$(MTTR_SCALE)-$(MTTR_BROKER).json --svg $(MTTR_OUT)/scale-$(MTTR_SCALE)-$(MTTR_BROKER).svg
mttr-scale-10k:
	$(MAKE) mttr-scale MTTR_SCALE=10000
