package rpi

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/hal/haltest"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c/i2ctest"
)

// bmeRawFor finds the raw BME280 temperature bytes that read as c °C with
// the datasheet's calibration, using the datasheet's floating point
// formula (section 8.1).
func bmeRawFor(c float64) (byte, byte, byte) {
	const t1, t2, t3 = 27504.0, 26435.0, -1000.0
	temp := func(adc float64) float64 {
		v1 := (adc/16384.0 - t1/1024.0) * t2
		v2 := (adc/131072.0 - t1/8192.0) * (adc/131072.0 - t1/8192.0) * t3
		return (v1 + v2) / 5120.0
	}
	lo, hi := 0, 1<<20-1
	for lo < hi {
		m := (lo + hi) / 2
		if temp(float64(m)) < c {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return byte(lo >> 12), byte(lo >> 4), byte(lo<<4) & 0xf0
}

// TestControlLoopOnRpiBoard runs the firmware's control loop on the
// periph board, every part through periph's doubles: the BME280 on
// i2ctest.Playback, the DS18B20 on a sysfs fixture, relays and buttons on
// gpiotest pins. Time is a fake clock.
func TestControlLoopOnRpiBoard(t *testing.T) {
	msb, lsb, xlsb := bmeRawFor(18)
	ops := bmeOpen(0x76)
	for i := 0; i < 7; i++ { // start and six ticks at 18 °C
		ops = append(ops, bmeSenseRaw(0x76, msb, lsb, xlsb)...)
	}
	// Then the sensor is unplugged: no more exchanges scripted, every
	// transaction fails.
	bus := &i2ctest.Playback{Ops: ops, DontPanic: true}
	registerI2C(t, "pb-typical", bus)
	clk := haltest.NewClock(t0)
	setLevel("GPIO5", gpio.High)
	b, err := open(parse(t, typical), quiet(), clk, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	var mu sync.Mutex
	var locals []control.Settings
	cfg := control.Config{
		Interval:      10 * time.Second,
		SensorTimeout: 30 * time.Second,
		Heat:          control.OutputConfig{MinOn: time.Minute, MinOff: time.Minute, MaxRun: time.Hour},
		ButtonWindow:  2 * time.Second,
	}
	loop, err := control.New(cfg, b, control.WithClock(clk), control.WithLogger(quiet()),
		control.WithSettings(control.Settings{SetpointC: 21, Mode: control.ModeHeat}),
		control.OnLocalChange(func(s control.Settings) { mu.Lock(); locals = append(locals, s); mu.Unlock() }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- loop.Run(ctx) }()
	if !clk.WaitPending(1, 5*time.Second) {
		t.Fatal("loop did not start")
	}
	step := func(d time.Duration) {
		t.Helper()
		clk.Advance(d)
		if !clk.WaitPending(1, 5*time.Second) {
			t.Fatal("loop did not go back to waiting")
		}
	}
	heatOn := func() bool { return level("GPIO17") == gpio.Low } // active low

	for i := 0; i < 5; i++ {
		step(10 * time.Second)
		if heatOn() {
			t.Fatalf("heat on at +%ds, before min_off", (i+1)*10)
		}
	}
	step(10 * time.Second)
	if !heatOn() {
		t.Fatalf("heat off at 18 °C after min_off; snapshot %+v", loop.Snapshot())
	}
	s := loop.Snapshot()
	if !s.SensorOK || s.TempC() < 17.99 || s.TempC() > 18.01 || len(s.Sensors) != 2 || s.Sensors[1].Temperature.Celsius() != 23.125 {
		t.Fatalf("snapshot %+v", s)
	}

	// Unplugged: after the sensor timeout the heat goes off and sensor_ok
	// is false, with no network involved anywhere.
	for i := 0; i < 4; i++ {
		step(10 * time.Second)
	}
	if heatOn() || loop.Snapshot().SensorOK {
		t.Fatalf("heat %v sensor_ok %v after the sensor was unplugged", heatOn(), loop.Snapshot().SensorOK)
	}

	// A press of "up" and one of "mode", both bouncing, within the window:
	// one local change.
	press := func(pin string, want control.Settings) {
		t.Helper()
		ch := pins[pin].EdgesChan
		for _, l := range []gpio.Level{gpio.Low, gpio.High, gpio.Low} {
			ch <- l
		}
		deadline := time.Now().Add(5 * time.Second)
		for loop.Snapshot().Pending != want {
			if time.Now().After(deadline) {
				t.Fatalf("press on %s not seen; pending %+v", pin, loop.Snapshot().Pending)
			}
			clk.WaitPending(1, 10*time.Millisecond)
		}
		ch <- gpio.High
	}
	setLevel("GPIO13", gpio.High)
	press("GPIO5", control.Settings{SetpointC: 21.5, Mode: control.ModeHeat})
	press("GPIO13", control.Settings{SetpointC: 21.5, Mode: control.ModeCool})
	mu.Lock()
	n := len(locals)
	mu.Unlock()
	if n != 0 {
		t.Fatal("local change reported before the window ended")
	}
	step(2 * time.Second) // the burst window ends
	mu.Lock()
	got := append([]control.Settings(nil), locals...)
	mu.Unlock()
	if len(got) != 1 || got[0] != (control.Settings{SetpointC: 21.5, Mode: control.ModeCool}) {
		t.Fatalf("local changes %v, want one to 21.5 °C cool", got)
	}
	if s := loop.Settings(); s != got[0] {
		t.Fatalf("settings in force %+v", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if heatOn() {
		t.Fatal("heat on after the loop stopped")
	}
}
