package sensors

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/thermofleet/thermo/hal"
	"periph.io/x/conn/v3/onewire"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/devices/v3/ds18b20"
)

// NewDS18B20 opens a Maxim DS18B20 on a periph 1-wire bus (a DS2482
// bridge, or the kernel's netlink bus) with resolutionBits 9..12
// (conversion 94..752 ms; 11 bits is 0.125 °C in 376 ms).
//
// Most Raspberry Pi builds use the kernel's w1-gpio driver instead: see
// NewW1.
func NewDS18B20(bus onewire.Bus, addr onewire.Address, resolutionBits int, o *Opts) (*Device, error) {
	opts := o.resolve(TypeDS18B20)
	if f := ds18b20.Family(addr & 0xff); f != ds18b20.DS18B20 {
		return nil, fmt.Errorf("ds18b20 %q: address %#016x has family %#02x, not a DS18B20 (0x28)", opts.Name, uint64(addr), byte(f))
	}
	dev, err := ds18b20.New(bus, addr, resolutionBits)
	if err != nil {
		return nil, fmt.Errorf("ds18b20 %q at %#016x: %w", opts.Name, uint64(addr), err)
	}
	return newDevice(TypeDS18B20, opts, dev, false, false), nil
}

// W1DevicesDir is where the kernel lists 1-wire devices, below the sysfs
// root.
const W1DevicesDir = "bus/w1/devices"

// W1 is a DS18B20 read through the kernel's 1-wire sysfs files
// (`dtoverlay=w1-gpio` on a Raspberry Pi), which handle the strong
// pull-up that parasite-powered sensors need.
type W1 struct {
	name  string
	dir   string
	clock hal.Clock
	mu    sync.Mutex
}

// NewW1 opens the DS18B20 with id ("28-0316a2791eff") below sysfsRoot
// ("/sys"; tests pass a fixture tree). An empty id picks the only 28-*
// device there is, and is an error when there are none or several.
func NewW1(sysfsRoot, id string, o *Opts) (*W1, error) {
	opts := o.resolve(TypeDS18B20)
	devs := filepath.Join(sysfsRoot, W1DevicesDir)
	if id == "" {
		found, err := W1Devices(sysfsRoot)
		if err != nil {
			return nil, fmt.Errorf("ds18b20 %q: %w", opts.Name, err)
		}
		switch len(found) {
		case 0:
			return nil, fmt.Errorf("ds18b20 %q: no 28-* device in %s (is dtoverlay=w1-gpio set and the sensor wired?): %w", opts.Name, devs, ErrAbsent)
		case 1:
			id = found[0]
		default:
			return nil, fmt.Errorf("ds18b20 %q: several sensors in %s (%s): set id", opts.Name, devs, strings.Join(found, ", "))
		}
	}
	if !strings.HasPrefix(id, "28-") || strings.ContainsAny(id, `/\`) {
		return nil, fmt.Errorf("ds18b20 %q: id %q is not a DS18B20 id like 28-0316a2791eff", opts.Name, id)
	}
	w := &W1{name: opts.Name, dir: filepath.Join(devs, id), clock: opts.Clock}
	if _, err := os.Stat(filepath.Join(w.dir, "w1_slave")); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("ds18b20 %q: %s missing (sensor unplugged, wrong id, or w1-gpio not loaded): %w", opts.Name, w.dir, ErrAbsent)
		}
		return nil, fmt.Errorf("ds18b20 %q: %w", opts.Name, err)
	}
	return w, nil
}

// W1Devices lists the DS18B20 ids (28-*) under sysfsRoot.
func W1Devices(sysfsRoot string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(sysfsRoot, W1DevicesDir, "28-*"))
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(m))
	for i, p := range m {
		ids[i] = filepath.Base(p)
	}
	sort.Strings(ids)
	return ids, nil
}

// Name is the configured name.
func (w *W1) Name() string { return w.name }

// String names the sensor and its sysfs directory.
func (w *W1) String() string { return fmt.Sprintf("ds18b20 %q (%s)", w.name, w.dir) }

// Read reads w1_slave, in which the kernel has just run a conversion:
//
//	72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
//	72 01 4b 46 7f ff 0e 10 57 t=23125
//
// A "NO" or a scratchpad whose CRC does not check is a CRC error; an
// all-zero scratchpad (data line shorted to ground) is refused too, since
// its CRC is zero and the kernel reports it as valid 0 °C.
func (w *W1) Read() hal.Reading {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := hal.Reading{Sensor: w.name}
	b, err := os.ReadFile(filepath.Join(w.dir, "w1_slave"))
	r.Time = w.clock.Now()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("%w: %w", ErrAbsent, err)
		}
		r.Err = fmt.Errorf("ds18b20 %q: %w", w.name, err)
		return r
	}
	t, err := parseW1Slave(b)
	r.Temperature = t
	if err != nil {
		r.Err = fmt.Errorf("ds18b20 %q: %s: %w", w.name, filepath.Join(w.dir, "w1_slave"), err)
		return r
	}
	return r
}

// ErrCRC is a 1-wire transfer whose checksum failed.
var ErrCRC = errors.New("1-wire CRC error")

func parseW1Slave(b []byte) (physic.Temperature, error) {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 {
		return 0, fmt.Errorf("want 2 lines, got %d: %q", len(lines), b)
	}
	head, status, ok := strings.Cut(lines[0], ":")
	if !ok {
		return 0, fmt.Errorf("no crc status in %q", lines[0])
	}
	if !strings.HasSuffix(strings.TrimSpace(status), "YES") {
		return 0, fmt.Errorf("%w (kernel says %q)", ErrCRC, strings.TrimSpace(status))
	}
	spad, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(head), " ", ""))
	if err != nil || len(spad) != 9 {
		return 0, fmt.Errorf("scratchpad %q is not 9 hex bytes", head)
	}
	if bytes.Equal(spad, make([]byte, 9)) {
		return 0, errors.New("scratchpad all zero: data line shorted or sensor not answering")
	}
	if !onewire.CheckCRC(spad) {
		return 0, fmt.Errorf("%w: scratchpad %x", ErrCRC, spad)
	}
	_, tv, ok := strings.Cut(lines[1], "t=")
	if !ok {
		return 0, fmt.Errorf("no t= in %q", lines[1])
	}
	milli, err := strconv.ParseInt(strings.TrimSpace(tv), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("t=%q: %w", tv, err)
	}
	return physic.ZeroCelsius + physic.Temperature(milli)*physic.MilliCelsius, nil
}

var _ hal.Sensor = (*W1)(nil)
