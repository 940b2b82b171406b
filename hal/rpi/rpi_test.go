package rpi

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/haltest"
	"gopkg.in/yaml.v3"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/gpio/gpiotest"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/onewire"
	"periph.io/x/conn/v3/onewire/onewirereg"
	"periph.io/x/conn/v3/onewire/onewiretest"
)

var t0 = time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)

// pins are gpiotest doubles registered under the names a Pi has, as
// host.Init would register the real ones.
var pins = map[string]*gpiotest.Pin{}

func TestMain(m *testing.M) {
	for _, n := range []int{4, 5, 6, 13, 17, 22, 27} {
		p := &gpiotest.Pin{N: "GPIO" + itoa(n), Num: n, EdgesChan: make(chan gpio.Level)}
		if err := gpioreg.Register(p); err != nil {
			panic(err)
		}
		pins[p.N] = p
	}
	os.Exit(m.Run())
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func level(name string) gpio.Level {
	p := pins[name]
	p.Lock()
	defer p.Unlock()
	return p.L
}

func setLevel(name string, l gpio.Level) {
	p := pins[name]
	p.Lock()
	p.L = l
	p.Unlock()
}

// registerI2C makes bus openable as name for the test's duration.
func registerI2C(t *testing.T, name string, bus *i2ctest.Playback) {
	t.Helper()
	if err := i2creg.Register(name, nil, -1, func() (i2c.BusCloser, error) { return bus, nil }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = i2creg.Unregister(name) })
}

func registerOneWire(t *testing.T, name string, bus *onewiretest.Playback) {
	t.Helper()
	if err := onewirereg.Register(name, nil, -1, func() (onewire.BusCloser, error) { return bus, nil }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = onewirereg.Unregister(name) })
}

func quiet() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func parse(t *testing.T, src string) Config {
	t.Helper()
	var f struct {
		Hardware Config `yaml:"hardware"`
	}
	if err := yaml.Unmarshal([]byte(src), &f); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	return f.Hardware
}

// The typical build of the example config: a BME280 on I²C-1, a DS18B20
// through w1-gpio, an active-low heat relay board, buttons to ground.
const typical = `
hardware:
  i2c_bus: pb-typical
  sysfs: testdata/sys
  sensors:
    - name: room
      type: bme280
      address: 0x76
    - name: floor
      type: ds18b20
      id: 28-0316a2791eff
  relays:
    heat: {pin: GPIO17, active_low: true}
    cool: {pin: GPIO27}
  buttons:
    up:   {pin: GPIO5}
    down: {pin: GPIO6}
    mode: {pin: GPIO13}
    debounce: 150ms
`

func openTypical(t *testing.T, bus *i2ctest.Playback) *Board {
	t.Helper()
	registerI2C(t, "pb-typical", bus)
	// A crash left the heat relay on (active low: pin low).
	setLevel("GPIO17", gpio.Low)
	setLevel("GPIO27", gpio.High)
	b, err := open(parse(t, typical), quiet(), haltest.NewClock(t0), 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestOpenSafeStateRelaysAndClose(t *testing.T) {
	bus := &i2ctest.Playback{Ops: append(bmeOpen(0x76), bmeSense(0x76)...)}
	b := openTypical(t, bus)
	if level("GPIO17") != gpio.High || level("GPIO27") != gpio.Low {
		t.Fatalf("after Open heat pin %v cool pin %v, want both off (high, low)", level("GPIO17"), level("GPIO27"))
	}
	if w := b.Wired(); w != (hal.Outputs{Heat: true, Cool: true}) {
		t.Fatalf("Wired = %v", w)
	}
	steps := []struct {
		set        hal.Outputs
		err        error
		heat, cool gpio.Level
	}{
		{hal.Outputs{Heat: true}, nil, gpio.Low, gpio.Low},
		{hal.Outputs{Cool: true, Fan: true}, nil, gpio.High, gpio.High}, // no fan fitted: ignored
		{hal.Outputs{Heat: true, Cool: true}, hal.ErrHeatAndCool, gpio.High, gpio.Low},
		{hal.Outputs{}, nil, gpio.High, gpio.Low},
	}
	for i, s := range steps {
		if err := b.SetOutputs(s.set); !errors.Is(err, s.err) {
			t.Fatalf("step %d: SetOutputs(%v) = %v, want %v", i, s.set, err, s.err)
		}
		if level("GPIO17") != s.heat || level("GPIO27") != s.cool {
			t.Fatalf("step %d: heat pin %v cool pin %v, want %v %v", i, level("GPIO17"), level("GPIO27"), s.heat, s.cool)
		}
	}
	// Sensors come in config order, read through the filter.
	ss := b.Sensors()
	if len(ss) != 2 || ss[0].Name() != "room" || ss[1].Name() != "floor" {
		t.Fatalf("sensors %v", ss)
	}
	r, err := read(ss[0])
	if err != nil || !r.HasHumidity || r.Temperature.Celsius() < 25 || r.Temperature.Celsius() > 25.1 || !r.Time.Equal(t0) {
		t.Fatalf("room = %+v, %v", r, err)
	}
	if r, err := read(ss[1]); err != nil || r.Temperature.Celsius() != 23.125 {
		t.Fatalf("floor = %+v, %v", r, err)
	}
	if err := b.SetOutputs(hal.Outputs{Heat: true}); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil { // also checks every I²C exchange was used
		t.Fatal(err)
	}
	if level("GPIO17") != gpio.High {
		t.Fatal("heat relay on after Close")
	}
	if _, ok := <-b.Buttons(); ok {
		t.Fatal("buttons channel open after Close")
	}
	if err := b.SetOutputs(hal.Outputs{Heat: true}); err == nil || level("GPIO17") != gpio.High {
		t.Fatal("SetOutputs after Close switched the heat on")
	}
}

func waitPress(t *testing.T, b *Board, want hal.Button) hal.ButtonEvent {
	t.Helper()
	select {
	case ev := <-b.Buttons():
		if ev.Button != want || !ev.Time.Equal(t0) {
			t.Fatalf("press %+v, want %v", ev, want)
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("no %v press", want)
	}
	return hal.ButtonEvent{}
}

func noPress(t *testing.T, b *Board, within time.Duration) {
	t.Helper()
	select {
	case ev := <-b.Buttons():
		t.Fatalf("unexpected press %+v", ev)
	case <-time.After(within):
	}
}

func TestButtonsDebounced(t *testing.T) {
	bus := &i2ctest.Playback{Ops: bmeOpen(0x76)}
	setLevel("GPIO5", gpio.High)
	b := openTypical(t, bus)
	if p := pins["GPIO5"]; p.P != gpio.PullUp {
		t.Fatalf("up button pull %v, want PullUp", p.P)
	}
	up := pins["GPIO5"].EdgesChan
	// A press that bounces: high-low-high-low, then settles low.
	for _, l := range []gpio.Level{gpio.Low, gpio.High, gpio.Low, gpio.High, gpio.Low} {
		up <- l
	}
	waitPress(t, b, hal.ButtonUp)
	// The release bounces too, and is not a press.
	for _, l := range []gpio.Level{gpio.High, gpio.Low, gpio.High} {
		up <- l
	}
	noPress(t, b, 400*time.Millisecond)
	// A second press is a second event; the mode button its own.
	up <- gpio.Low
	waitPress(t, b, hal.ButtonUp)
	up <- gpio.High
	// The mode button: a short press is reported at its release; one held
	// for the long-press time (1 s by default) at once, as a long press,
	// and its release is nothing more.
	mode := pins["GPIO13"].EdgesChan
	mode <- gpio.Low
	noPress(t, b, 300*time.Millisecond) // past the 150ms debounce, not a long press yet
	mode <- gpio.High
	if ev := waitPress(t, b, hal.ButtonMode); ev.Long {
		t.Error("a short press of the mode button reported as long")
	}
	start := time.Now()
	mode <- gpio.Low
	if ev := waitPress(t, b, hal.ButtonMode); !ev.Long || time.Since(start) < DefaultLongPress {
		t.Errorf("held mode button: %+v after %v, want a long press after %v", ev, time.Since(start), DefaultLongPress)
	}
	mode <- gpio.High
	noPress(t, b, 300*time.Millisecond)
}

func TestOpenRefusesBadWiringWithLine(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"pin that does not exist", strings.Replace(typical, "GPIO27}", "GPIO71}", 1), `line 14: hardware.relays.cool.pin: no GPIO pin named "GPIO71"`},
		{"button pin that does not exist", strings.Replace(typical, "{pin: GPIO6}", "{pin: GPIO99}", 1), `line 17: hardware.buttons.down.pin: no GPIO pin named "GPIO99"`},
		{"I2C bus that does not exist", strings.Replace(typical, "pb-typical", "pb-nope", 1), `line 3: hardware.i2c_bus: open I²C bus "pb-nope"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			registerI2C(t, "pb-typical", &i2ctest.Playback{DontPanic: true})
			setLevel("GPIO17", gpio.Low)
			_, err := open(parse(t, tc.yaml), quiet(), haltest.NewClock(t0), 50*time.Millisecond)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("open = %v, want %q", err, tc.want)
			}
			if level("GPIO17") != gpio.High {
				t.Fatal("heat relay left on by a failed Open")
			}
		})
	}
}

// TestOpenErrorIsNilBoard: every error of Open comes with a nil hal.Board,
// not a nil *Board in a non-nil interface, so the firmware's cleanup
// (if board != nil { board.Close() }) prints the error instead of
// panicking. Open is the exported entry (host.Init does nothing here).
func TestOpenErrorIsNilBoard(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"config error", strings.Replace(typical, "type: bme280", "type: bme999", 1), `unknown sensor type "bme999"`},
		{"relay pin that does not exist", strings.Replace(typical, "GPIO27}", "GPIO71}", 1), `no GPIO pin named "GPIO71"`},
		{"I2C bus that does not exist", strings.Replace(typical, "pb-typical", "pb-nope", 1), `open I²C bus "pb-nope"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			registerI2C(t, "pb-typical", &i2ctest.Playback{DontPanic: true})
			b, err := Open(parse(t, tc.yaml), quiet())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %v, want %q", err, tc.want)
			}
			if b != nil {
				t.Fatalf("Open returned %#v with its error: a non-nil hal.Board", b)
			}
		})
	}
}

func TestUnpluggedSensorDoesNotStopTheBoard(t *testing.T) {
	// Nothing answers on the bus: Open succeeds, reads fail until the
	// chip answers, then it is opened and read.
	bus := &i2ctest.Playback{DontPanic: true}
	registerI2C(t, "pb-unplugged", bus)
	cfg := parse(t, `
hardware:
  i2c_bus: pb-unplugged
  sensors: [{name: room, type: bme280}]
  relays: {heat: {pin: GPIO22}}
`)
	b, err := open(cfg, quiet(), haltest.NewClock(t0), 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if r, err := read(b.Sensors()[0]); err == nil || r.OK() {
		t.Fatalf("Read of an unplugged sensor = %+v, %v", r, err)
	}
	// Plugged in.
	bus.Lock()
	bus.Ops = append(bmeOpen(0x76), bmeSense(0x76)...)
	bus.Count = 0
	bus.Unlock()
	if r, err := read(b.Sensors()[0]); err != nil || !r.OK() {
		t.Fatalf("Read after plugging in = %+v, %v", r, err)
	}
}

func TestDS18B20OverPeriphOneWire(t *testing.T) {
	// 28-0000070e41ac is the sysfs id of ROM 0x740000070e41ac28 (CRC 0x74).
	rom := []byte{0x55, 0x28, 0xac, 0x41, 0x0e, 0x07, 0x00, 0x00, 0x74}
	spad := func(raw uint16) []byte {
		b := []byte{byte(raw), byte(raw >> 8), 0x4b, 0x46, 0x5f, 0xff, 0x10, 0x10} // config 0x5f: 11 bits
		return append(b, onewire.CalcCRC(b))
	}
	bus := &onewiretest.Playback{Ops: []onewiretest.IO{
		{W: append(append([]byte{}, rom...), 0xbe), R: spad(0x0550)},
		{W: append(append([]byte{}, rom...), 0x44), Pull: onewire.StrongPullup},
		{W: append(append([]byte{}, rom...), 0xbe), R: spad(0x0150)}, // 21 °C
	}}
	registerOneWire(t, "ow-test", bus)
	cfg := parse(t, `
hardware:
  sensors: [{name: floor, type: ds18b20, via: onewire, bus: ow-test, id: 28-0000070e41ac}]
  relays: {heat: {pin: GPIO22}}
`)
	b, err := open(cfg, quiet(), haltest.NewClock(t0), 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	r, err := read(b.Sensors()[0])
	if err != nil || r.Temperature.Celsius() != 21 {
		t.Fatalf("Read = %+v, %v", r, err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

// BME280 exchanges; see sensors/i2c_test.go for where the bytes come from
// (BMP280 datasheet compensation example: 25.08 °C).
func bmeOpen(addr uint16) []i2ctest.IO {
	return []i2ctest.IO{
		{Addr: addr, W: []byte{0xd0}, R: []byte{0x60}},
		{Addr: addr, W: []byte{0x88}, R: []byte{0x70, 0x6b, 0x43, 0x67, 0x18, 0xfc, 0x7d, 0x8e, 0x41, 0xd6, 0xd0, 0x0b, 0x27, 0x0b, 0x8c, 0x00, 0xf9, 0xff, 0x8c, 0x3c, 0xf8, 0xc6, 0x70, 0x17, 0x00, 0x4b}},
		{Addr: addr, W: []byte{0xe1}, R: []byte{0x6e, 0x01, 0x00, 0x13, 0x05, 0x00, 0x1e}},
		{Addr: addr, W: []byte{0xf4, 0x6c, 0xf2, 0x03, 0xf5, 0xa0, 0xf4, 0x6c}},
	}
}

func bmeSense(addr uint16) []i2ctest.IO {
	return bmeSenseRaw(addr, 0x7e, 0xed, 0x00)
}

// bmeSenseRaw reads a temperature given as its three raw bytes.
func bmeSenseRaw(addr uint16, msb, lsb, xlsb byte) []i2ctest.IO {
	return []i2ctest.IO{
		{Addr: addr, W: []byte{0xf4, 0x6d}},
		{Addr: addr, W: []byte{0xf3}, R: []byte{0x00}},
		{Addr: addr, W: []byte{0xf7}, R: []byte{0x65, 0x5a, 0xc0, msb, lsb, xlsb, 0x6a, 0x2b}},
	}
}
