package sensors

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"periph.io/x/conn/v3/onewire"
	"periph.io/x/conn/v3/onewire/onewiretest"
	"periph.io/x/conn/v3/physic"
)

// A DS18B20's 64-bit ROM: family 0x28, serial, CRC (the address of
// periph's own tests).
const dsAddr onewire.Address = 0x740000070e41ac28

func matchROM(cmd byte) []byte {
	b := []byte{0x55} // Match ROM, then the address LSB first
	b = binary.LittleEndian.AppendUint64(b, uint64(dsAddr))
	return append(b, cmd)
}

// scratchpad builds the 9 bytes of a DS18B20 scratchpad (datasheet
// 19-7487, figure 9): temperature LSB/MSB, TH, TL, configuration (R1 R0 in
// bits 6..5: 00 is 9 bits), 3 reserved, CRC.
func scratchpad(raw uint16, config byte) []byte {
	b := []byte{byte(raw), byte(raw >> 8), 0x4b, 0x46, config, 0xff, 0x10, 0x10}
	return append(b, onewire.CalcCRC(b))
}

func TestDS18B20OneWire(t *testing.T) {
	// Datasheet table 1: 0x0191 is +25.0625 °C, 0xFF5E is -10.125 °C.
	for _, tc := range []struct {
		raw  uint16
		want physic.Temperature
	}{{0x0191, physic.ZeroCelsius + 25062500*physic.MicroKelvin}, {0xff5e, physic.ZeroCelsius - 10125*physic.MilliKelvin}} {
		bus := &onewiretest.Playback{Ops: []onewiretest.IO{
			{W: matchROM(0xbe), R: scratchpad(0x0550, 0x1f)}, // read scratchpad at open: already 9 bits
			{W: matchROM(0x44), Pull: onewire.StrongPullup},  // convert T, strong pull-up for parasite power
			{W: matchROM(0xbe), R: scratchpad(tc.raw, 0x1f)}, // read the result
		}}
		d, err := NewDS18B20(bus, dsAddr, 9, testOpts("floor"))
		if err != nil {
			t.Fatal(err)
		}
		r, err := read(d)
		if err != nil || r.Temperature != tc.want {
			t.Fatalf("Read = %v %v, want %v", r.Temperature, err, tc.want)
		}
		if err := bus.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDS18B20OneWireErrors(t *testing.T) {
	badCRC := scratchpad(0x0191, 0x1f)
	badCRC[8] ^= 0x01
	ff := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	open := onewiretest.IO{W: matchROM(0xbe), R: scratchpad(0x0550, 0x1f)}
	convert := onewiretest.IO{W: matchROM(0x44), Pull: onewire.StrongPullup}
	tests := []struct {
		name string
		ops  []onewiretest.IO
		want string
	}{
		{"unplugged at open", []onewiretest.IO{{W: matchROM(0xbe), R: ff}}, "did not respond"},
		{"bus error at open", nil, `ds18b20 "floor" at 0x740000070e41ac28`},
		{"CRC error", []onewiretest.IO{open, convert, {W: matchROM(0xbe), R: badCRC}}, "CRC"},
		{"unplugged later", []onewiretest.IO{open, convert, {W: matchROM(0xbe), R: ff}}, "did not respond"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bus := &onewiretest.Playback{Ops: tc.ops, DontPanic: true}
			d, err := NewDS18B20(bus, dsAddr, 9, testOpts("floor"))
			if err == nil {
				_, err = read(d)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := NewDS18B20(&onewiretest.Playback{}, 0x740000070e41ac10, 9, nil); err == nil || !strings.Contains(err.Error(), "not a DS18B20") {
		t.Fatalf("DS18S20 address accepted: %v", err)
	}
}

// periph's ds18b20 v3.7.4 means to refuse the 85 °C power-on value but
// compares it with 85 K, so the value comes through as a valid reading;
// Filter with DS18B20 set is what refuses it.
func TestDS18B20OneWirePowerOnValuePassesDriver(t *testing.T) {
	bus := &onewiretest.Playback{Ops: []onewiretest.IO{
		{W: matchROM(0xbe), R: scratchpad(0x0550, 0x1f)},
		{W: matchROM(0x44), Pull: onewire.StrongPullup},
		{W: matchROM(0xbe), R: scratchpad(0x0550, 0x1f)}, // 0x0550: +85 °C, the power-on value
	}}
	d, err := NewDS18B20(bus, dsAddr, 9, testOpts("floor"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := read(Filter(d, FilterOpts{DS18B20: true}))
	if !errors.Is(err, ErrImplausible) || r.OK() || r.Temperature != physic.ZeroCelsius+85*physic.Celsius {
		t.Fatalf("filtered Read = %+v, %v; want the 85 °C value rejected", r, err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestW1Sysfs(t *testing.T) {
	tests := []struct {
		id      string
		want    float64
		wantErr string
		crc     bool
	}{
		{id: "28-0316a2791eff", want: 23.125},
		{id: "28-03160000ff5e", want: -10.125},
		{id: "28-03160000085a", want: 85}, // parsed; the filter rejects it (see filter tests)
		{id: "28-0316a2790bad", wantErr: "kernel says", crc: true},
		{id: "28-03160000cafe", wantErr: "scratchpad", crc: true},
		{id: "28-031600000000", wantErr: "all zero"},
		{id: "28-03160000beef", wantErr: "want 2 lines"},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			w, err := NewW1("testdata/sys", tc.id, testOpts("floor"))
			if err != nil {
				t.Fatal(err)
			}
			r, err := read(w)
			if tc.wantErr != "" {
				if err == nil || r.OK() || !strings.Contains(err.Error(), tc.wantErr) || errors.Is(err, ErrCRC) != tc.crc {
					t.Fatalf("Read = %+v, %v; want error %q (CRC %v)", r, err, tc.wantErr, tc.crc)
				}
				return
			}
			if err != nil || !r.OK() || r.Temperature != physic.ZeroCelsius+physic.Temperature(tc.want*1000)*physic.MilliCelsius || !r.Time.Equal(t0) {
				t.Fatalf("Read = %+v, %v; want %v °C", r, err, tc.want)
			}
		})
	}
}

func TestW1SysfsDiscoveryAndAbsence(t *testing.T) {
	w, err := NewW1("testdata/one", "", nil)
	if err != nil || !strings.Contains(w.String(), "28-0316a2791eff") {
		t.Fatalf("auto id: %v %v", w, err)
	}
	if _, err := NewW1("testdata/none", "", nil); !errors.Is(err, ErrAbsent) || !strings.Contains(err.Error(), "w1-gpio") {
		t.Fatalf("no sensor: %v", err)
	}
	if _, err := NewW1("testdata/sys", "", nil); err == nil || !strings.Contains(err.Error(), "several sensors") {
		t.Fatalf("several sensors: %v", err)
	}
	if _, err := NewW1("testdata/sys", "28-0000deadbeef", nil); !errors.Is(err, ErrAbsent) {
		t.Fatalf("missing id: %v", err)
	}
	if _, err := NewW1("testdata/sys", "../../../etc", nil); err == nil {
		t.Fatal("id with a path accepted")
	}
	ids, err := W1Devices("testdata/sys")
	if err != nil || len(ids) != 7 || ids[0] != "28-031600000000" {
		t.Fatalf("W1Devices = %v, %v", ids, err)
	}

	// Unplugged while running: the kernel removes the directory.
	root := t.TempDir()
	dir := filepath.Join(root, W1DevicesDir, "28-0316a2791eff")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile("testdata/one/bus/w1/devices/28-0316a2791eff/w1_slave")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "w1_slave"), good, 0o644); err != nil {
		t.Fatal(err)
	}
	w, err = NewW1(root, "28-0316a2791eff", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := read(w); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if r, err := read(w); !errors.Is(err, ErrAbsent) || r.OK() {
		t.Fatalf("Read after unplug = %+v, %v", r, err)
	}
}
