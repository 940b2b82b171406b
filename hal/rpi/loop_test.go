package rpi

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/haltest"
	"github.com/thermofleet/thermo/protocol"
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

// loopClock is the control loop's clock in TestControlLoopOnRpiBoard: the
// fake clock, counting the timers the loop arms. The loop arms one timer
// each time it goes back to waiting, so once a timer armed after an event
// is pending, the loop has handled the event and waits on the clock.
//
// Pending timers alone cannot tell that: a button press reaches the loop
// while it waits on a timer, and between handling the press and arming
// its next timer the old one is still counted. Advancing the fake clock in
// that gap fires nothing, and the loop then arms its timer relative to the
// advanced time, so the window of the press never ends.
type loopClock struct {
	*haltest.Clock
	armed  atomic.Int64
	notify chan struct{}
}

func newLoopClock(start time.Time) *loopClock {
	return &loopClock{Clock: haltest.NewClock(start), notify: make(chan struct{}, 1)}
}

func (c *loopClock) NewTimer(d time.Duration) hal.Timer {
	t := c.Clock.NewTimer(d) // pending before it is counted
	c.armed.Add(1)
	select {
	case c.notify <- struct{}{}:
	default:
	}
	return t
}

// settled reports whether the loop has armed a timer since armed was n0
// and waits on it.
func (c *loopClock) settled(n0 int64) bool {
	// Arming stops the previous timer first, so a pending timer once the
	// count moved is one armed after n0 (a timer of zero length is never
	// pending: the loop goes round again and arms another).
	return c.armed.Load() > n0 && c.Pending() == 1
}

// waitSettled waits until the loop has handled what happened after the
// count was n0 and is waiting on the clock again.
func (c *loopClock) waitSettled(t *testing.T, n0 int64, what string) {
	t.Helper()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for !c.settled(n0) {
		select {
		case <-c.notify:
		case <-deadline.C:
			t.Fatalf("%s: the loop did not go back to waiting (timers armed %d, before %d; pending %d)", what, c.armed.Load(), n0, c.Pending())
		}
	}
}

// TestControlLoopOnRpiBoard runs the firmware's control loop on the
// periph board, every part through periph's doubles: the BME280 on
// i2ctest.Playback, the DS18B20 on a sysfs fixture, relays and buttons on
// gpiotest pins. Time is a fake clock; the test moves it only while the
// loop waits on it.
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
	clk := newLoopClock(t0)
	setLevel("GPIO5", gpio.High)
	b, err := open(parse(t, typical), quiet(), clk.Clock, 50*time.Millisecond)
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
		control.WithSettings(control.Settings{SetpointC: 21, Mode: protocol.ModeHeat}))
	if err != nil {
		t.Fatal(err)
	}
	// Standing in for the agent: record what the buttons ask for and
	// give it back to the loop.
	loop.Notify(nil, func(s control.Settings) {
		mu.Lock()
		locals = append(locals, s)
		mu.Unlock()
		loop.SetSettings(s)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- loop.Run(ctx) }()
	clk.waitSettled(t, 0, "start")
	// step moves the time on by d, which must fire the loop's timer, and
	// waits for the loop to react.
	step := func(d time.Duration) {
		t.Helper()
		n0 := clk.armed.Load()
		clk.Advance(d)
		clk.waitSettled(t, n0, "step of "+d.String())
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
	// press presses the button on pin and waits until the loop has taken
	// the press (nothing else wakes it meanwhile: the clock stands still)
	// and waits on the clock again, then releases the button.
	// The mode button's press is reported at its release (a held one is
	// a long press), the others' at once.
	press := func(pin string, want control.Settings) {
		t.Helper()
		n0 := clk.armed.Load()
		ch := pins[pin].EdgesChan
		for _, l := range []gpio.Level{gpio.Low, gpio.High, gpio.Low} {
			ch <- l
		}
		if pin == "GPIO13" {
			// The watcher's debounce runs on the pin's real clock and
			// shows nothing to wait on: let it settle (the config's
			// 150ms), then release before the long-press time.
			time.Sleep(250 * time.Millisecond)
			ch <- gpio.High
		}
		clk.waitSettled(t, n0, "press on "+pin)
		if got := loop.Snapshot().Pending; got != want {
			t.Fatalf("after a press on %s: pending %+v, want %+v", pin, got, want)
		}
		if pin != "GPIO13" {
			ch <- gpio.High
		}
	}
	setLevel("GPIO13", gpio.High)
	press("GPIO5", control.Settings{SetpointC: 21.5, Mode: protocol.ModeHeat})
	press("GPIO13", control.Settings{SetpointC: 21.5, Mode: protocol.ModeCool})
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
	if len(got) != 1 || got[0] != (control.Settings{SetpointC: 21.5, Mode: protocol.ModeCool}) {
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
