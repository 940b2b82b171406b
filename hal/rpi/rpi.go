// Package rpi is the Raspberry Pi board: relays and buttons on GPIO and
// sensors on I²C and 1-wire, all through periph.io, wired as the
// `hardware:` section of the config says.
//
// Open switches every relay off before anything else, and Close does it
// again, so the thermostat starts and stops with the heating off. The
// firmware's `--hal rpi` calls Open and hands the board to the control
// loop.
package rpi

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/sensors"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/conn/v3/onewire"
	"periph.io/x/conn/v3/onewire/onewirereg"
	"periph.io/x/host/v3"
)

var pulls = map[string]gpio.Pull{"up": gpio.PullUp, "down": gpio.PullDown, "none": gpio.Float}

// Board is a Raspberry Pi (or any periph-supported board) wired as the
// config says.
type Board struct {
	log     *slog.Logger
	clock   hal.Clock
	sensors []hal.Sensor
	relays  [3]*relay // heat, cool, fan; nil when not fitted
	buttons chan hal.ButtonEvent
	buses   []io.Closer
	stop    chan struct{}
	wg      sync.WaitGroup

	watching bool // button watchers run; Close closes buttons after them

	mu     sync.Mutex // serialises relay writes and Close
	closed bool
}

type relay struct {
	name      string
	pin       gpio.PinIO
	activeLow bool
}

func (r *relay) set(on bool) error {
	lvl := gpio.Level(on != r.activeLow) // high when on, unless active low
	if err := r.pin.Out(lvl); err != nil {
		return fmt.Errorf("%s relay on %s: %w", r.name, r.pin.Name(), err)
	}
	return nil
}

// Open initialises periph's host drivers, finds every pin and bus of cfg,
// switches every relay off, and starts watching the buttons. A sensor that
// does not answer is logged and retried at each read (the control loop
// keeps the outputs off meanwhile); a pin or bus that does not exist, or
// a config error, is refused with its line.
//
// On error the board is a nil interface, never a nil *Board inside a
// non-nil hal.Board: a caller's "if b != nil { b.Close() }" cleanup would
// otherwise call Close on nil and panic instead of printing the error.
func Open(cfg Config, log *slog.Logger) (hal.Board, error) {
	if _, err := host.Init(); err != nil {
		return nil, fmt.Errorf("periph host init: %w", err)
	}
	b, err := open(cfg, log, hal.SystemClock{}, 500*time.Millisecond)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// open is Open after host.Init, with the clock and the idle wake-up of
// the button watchers (how soon Close is noticed) as parameters for tests.
func open(cfg Config, log *slog.Logger, clock hal.Clock, idle time.Duration) (_ *Board, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := cfg.lines
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.Default()
	}
	b := &Board{
		log:     log.With("component", "board"),
		clock:   clock,
		buttons: make(chan hal.ButtonEvent, 16),
		stop:    make(chan struct{}),
	}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()

	// Relays first, and off at once: whatever state a crash left them in.
	for i, x := range []struct {
		name string
		r    *RelayConfig
	}{{"heat", cfg.Relays.Heat}, {"cool", cfg.Relays.Cool}, {"fan", cfg.Relays.Fan}} {
		if x.r == nil {
			continue
		}
		path := "relays." + x.name + ".pin"
		p, err := findPin(x.r.Pin)
		if err != nil {
			return nil, l.Errorf(path, "%v", err)
		}
		r := &relay{name: x.name, pin: p, activeLow: x.r.ActiveLow}
		if err := r.set(false); err != nil {
			return nil, l.Errorf(path, "switch off: %v", err)
		}
		b.relays[i] = r
	}

	// Buttons: inputs with edge detection, checked before any goroutine.
	type watch struct {
		btn     hal.Button
		pin     gpio.PinIO
		pressed gpio.Level
	}
	var watches []watch
	for _, x := range []struct {
		name string
		btn  hal.Button
		c    *ButtonConfig
	}{{"up", hal.ButtonUp, cfg.Buttons.Up}, {"down", hal.ButtonDown, cfg.Buttons.Down}, {"mode", hal.ButtonMode, cfg.Buttons.Mode}} {
		if x.c == nil {
			continue
		}
		path := "buttons." + x.name + ".pin"
		p, err := findPin(x.c.Pin)
		if err != nil {
			return nil, l.Errorf(path, "%v", err)
		}
		if err := p.In(pulls[x.c.Pull], gpio.BothEdges); err != nil {
			return nil, l.Errorf(path, "input with edge detection on %s: %v", x.c.Pin, err)
		}
		watches = append(watches, watch{x.btn, p, gpio.Level(x.c.Pressed == "high")})
	}

	// Sensors.
	i2cBuses := map[string]i2c.Bus{}
	owBuses := map[string]onewire.Bus{}
	for i, sc := range cfg.Sensors {
		path := fmt.Sprintf("sensors[%d]", i)
		opts := &sensors.Opts{Name: sc.Name, Clock: clock}
		var openSensor func() (hal.Sensor, error)
		switch {
		case sc.Type == sensors.TypeDS18B20 && sc.Via == ViaSysfs:
			root, id := cfg.Sysfs, sc.ID
			openSensor = func() (hal.Sensor, error) { return sensors.NewW1(root, id, opts) }
		case sc.Type == sensors.TypeDS18B20:
			bus, ok := owBuses[sc.Bus]
			if !ok {
				bc, err := onewirereg.Open(sc.Bus)
				if err != nil {
					return nil, l.Errorf(path+".bus", "open 1-wire bus %q: %v", sc.Bus, err)
				}
				b.buses = append(b.buses, bc)
				bus, owBuses[sc.Bus] = bc, bc
			}
			id, bits := sc.ID, sc.ResolutionBits
			openSensor = func() (hal.Sensor, error) {
				addr, err := oneWireAddr(bus, id)
				if err != nil {
					return nil, fmt.Errorf("ds18b20 %q: %w", opts.Name, err)
				}
				return sensors.NewDS18B20(bus, addr, bits, opts)
			}
		default:
			bus, ok := i2cBuses[sc.Bus]
			if !ok {
				bc, err := i2creg.Open(sc.Bus)
				if err != nil {
					where := path + ".bus"
					if _, own := l.Exact(where); !own {
						where = "i2c_bus"
					}
					return nil, l.Errorf(where, "open I²C bus %q: %v (is I2C enabled? raspi-config, Interface Options, I2C)", sc.Bus, err)
				}
				b.buses = append(b.buses, bc)
				bus, i2cBuses[sc.Bus] = bc, bc
			}
			typ, addr := sc.Type, sc.Address
			openSensor = func() (hal.Sensor, error) {
				switch typ {
				case sensors.TypeMCP9808:
					return sensors.NewMCP9808(bus, addr, opts)
				case sensors.TypeTMP102:
					return sensors.NewTMP102(bus, addr, opts)
				case sensors.TypeAHT20:
					return sensors.NewAHT20(bus, opts)
				default:
					return sensors.NewBMxx80(bus, addr, typ, opts)
				}
			}
		}
		re := sensors.NewReopen(sc.Name, openSensor, b.log)
		if err := re.Probe(); err != nil {
			b.log.Warn("sensor not answering at start; the control loop keeps outputs off until it does",
				"sensor", sc.Name, "line", l.Line(path), "err", err)
		}
		b.sensors = append(b.sensors, sensors.Filter(re, sc.Filter.opts(sc.Type == sensors.TypeDS18B20)))
	}

	for _, w := range watches {
		b.wg.Add(1)
		go b.watch(w.btn, w.pin, w.pressed, cfg.Buttons.Debounce, cfg.Buttons.LongPress, idle)
	}
	if len(watches) == 0 {
		close(b.buttons)
	}
	b.watching = len(watches) > 0
	b.log.Info("board ready", "sensors", len(b.sensors), "buttons", len(watches), "wired", b.Wired().String())
	return b, nil
}

// findPin resolves a GPIO name; gpioreg returns nil for a pin the board
// does not have.
func findPin(name string) (gpio.PinIO, error) {
	p := gpioreg.ByName(name)
	if p == nil {
		hint := ""
		if len(gpioreg.All()) == 0 {
			hint = " (this host has no GPIO at all: is this a Raspberry Pi, and is the firmware allowed to use /dev/gpiochip*?)"
		}
		return nil, fmt.Errorf("no GPIO pin named %q on this board%s", name, hint)
	}
	return p, nil
}

// oneWireAddr turns a sysfs-style id (28-<48-bit serial>) into the 64-bit
// ROM address, or finds the only DS18B20 on the bus when id is empty.
func oneWireAddr(bus onewire.Bus, id string) (onewire.Address, error) {
	if id == "" {
		found, err := bus.Search(false)
		if err != nil {
			return 0, fmt.Errorf("search 1-wire bus: %w", err)
		}
		var ds []onewire.Address
		for _, a := range found {
			if a&0xff == 0x28 {
				ds = append(ds, a)
			}
		}
		switch len(ds) {
		case 0:
			return 0, fmt.Errorf("no DS18B20 on the 1-wire bus: %w", sensors.ErrAbsent)
		case 1:
			return ds[0], nil
		}
		return 0, fmt.Errorf("%d DS18B20 on the 1-wire bus: set id", len(ds))
	}
	serial, err := strconv.ParseUint(strings.TrimPrefix(id, "28-"), 16, 48)
	if err != nil {
		return 0, fmt.Errorf("id %q: %w", id, err)
	}
	var rom [8]byte
	rom[0] = 0x28
	for i := 0; i < 6; i++ {
		rom[1+i] = byte(serial >> (8 * i))
	}
	rom[7] = onewire.CalcCRC(rom[:7])
	var a onewire.Address
	for i := 7; i >= 0; i-- {
		a = a<<8 | onewire.Address(rom[i])
	}
	return a, nil
}

// Sensors lists the sensors in config order, each behind the plausibility
// filter.
func (b *Board) Sensors() []hal.Sensor { return b.sensors }

// Wired reports which relays are fitted.
func (b *Board) Wired() hal.Outputs {
	return hal.Outputs{Heat: b.relays[0] != nil, Cool: b.relays[1] != nil, Fan: b.relays[2] != nil}
}

// Buttons delivers debounced presses.
func (b *Board) Buttons() <-chan hal.ButtonEvent { return b.buttons }

// SetOutputs drives the relays, switching off before switching on (break
// before make), and refuses heat with cool. On any error it tries to
// switch everything off.
func (b *Board) SetOutputs(o hal.Outputs) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("rpi: board closed")
	}
	var refused error
	if o.Heat && o.Cool {
		o, refused = hal.Outputs{}, hal.ErrHeatAndCool
	}
	want := [3]bool{o.Heat, o.Cool, o.Fan}
	var errs []error
	for pass := 0; pass < 2; pass++ { // offs, then ons
		for i, r := range b.relays {
			if r == nil || want[i] != (pass == 1) {
				continue
			}
			if err := r.set(want[i]); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			break
		}
	}
	if len(errs) > 0 {
		errs = append(errs, b.allOffLocked())
		return fmt.Errorf("rpi: set outputs: %w", errors.Join(errs...))
	}
	return refused
}

func (b *Board) allOffLocked() error {
	var errs []error
	for _, r := range b.relays {
		if r != nil {
			if err := r.set(false); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Close switches every relay off (the pins stay outputs driven to "off":
// released to inputs, an active-low relay board could switch on), stops
// the button watchers and closes the buses.
func (b *Board) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	err := b.allOffLocked()
	b.mu.Unlock()
	close(b.stop)
	b.wg.Wait()
	if b.watching {
		close(b.buttons)
	}
	for _, c := range b.buses {
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}
	if err != nil {
		return fmt.Errorf("rpi: close: %w", err)
	}
	return nil
}

// held waits while a pressed button stays pressed, up to longPress: it
// reports whether it was held that long, and the settled level it left.
func held(p gpio.PinIO, pressed gpio.Level, debounce, longPress time.Duration) (bool, gpio.Level) {
	deadline := time.Now().Add(longPress)
	for {
		left := time.Until(deadline)
		if left <= 0 || !p.WaitForEdge(left) {
			return true, pressed
		}
		for p.WaitForEdge(debounce) { // bouncing: wait until quiet
		}
		if lvl := p.Read(); lvl != pressed {
			return false, lvl
		}
	}
}

// watch turns one button's edges into presses. It waits for an edge
// (edge-triggered: no polling of the level), then for the contact to be
// quiet for debounce, and reads the settled level: a change from released
// to pressed is one press. The mode button's press is reported when it is
// released, or once it has been held for longPress (a long press, no
// waiting for the release). The bounded wait only lets Close be noticed.
func (b *Board) watch(btn hal.Button, p gpio.PinIO, pressed gpio.Level, debounce, longPress, idle time.Duration) {
	defer b.wg.Done()
	stable := p.Read()
	for {
		if !p.WaitForEdge(idle) {
			select {
			case <-b.stop:
				return
			default:
				continue
			}
		}
		for p.WaitForEdge(debounce) { // bouncing: wait until quiet
			select {
			case <-b.stop:
				return
			default:
			}
		}
		lvl := p.Read()
		if lvl == stable {
			continue
		}
		stable = lvl
		if lvl != pressed {
			continue
		}
		long := false
		if btn == hal.ButtonMode {
			long, stable = held(p, pressed, debounce, longPress)
		}
		select {
		case b.buttons <- hal.ButtonEvent{Button: btn, Time: b.clock.Now(), Long: long}:
		default:
			b.log.Warn("button press dropped: nobody is reading presses", "button", btn.String())
		}
	}
}

var _ hal.Board = (*Board)(nil)
