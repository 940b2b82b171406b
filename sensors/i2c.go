package sensors

import (
	"encoding/binary"
	"fmt"
	"strings"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/devices/v3/aht20"
	"periph.io/x/devices/v3/bmxx80"
	"periph.io/x/devices/v3/mcp9808"
	"periph.io/x/devices/v3/tmp102"
)

// Default I²C addresses (all address pins to ground).
const (
	AddrBMxx80  = 0x76 // 0x77 with SDO high
	AddrMCP9808 = 0x18 // 0x18..0x1f by A0..A2
	AddrTMP102  = 0x48 // 0x48..0x4b by ADD0
	AddrAHT20   = 0x38 // fixed
)

// DefaultAddr returns the usual address of an I²C sensor type, 0 for a
// type that is not on I²C.
func DefaultAddr(typ string) uint16 {
	switch typ {
	case TypeBME280, TypeBMP280:
		return AddrBMxx80
	case TypeMCP9808:
		return AddrMCP9808
	case TypeTMP102:
		return AddrTMP102
	case TypeAHT20:
		return AddrAHT20
	}
	return 0
}

// NewBMxx80 opens a Bosch BME280 (temperature, humidity, pressure) or
// BMP280 (no humidity) at addr (0x76 or 0x77). typ is what the config
// says; a chip that is the other one is refused, so a BMP280 sold as a
// BME280 (common) is named at start instead of reporting no humidity.
func NewBMxx80(bus i2c.Bus, addr uint16, typ string, o *Opts) (*Device, error) {
	opts := o.resolve(typ)
	// One forced measurement per read, oversampling x4 for a steady value.
	dev, err := bmxx80.NewI2C(bus, addr, &bmxx80.DefaultOpts)
	if err != nil {
		return nil, fmt.Errorf("%s %q at %#x: %w", typ, opts.Name, addr, err)
	}
	isBME := strings.HasPrefix(dev.String(), "BME280")
	isBMP := strings.HasPrefix(dev.String(), "BMP280")
	switch {
	case typ == TypeBME280 && !isBME, typ == TypeBMP280 && !isBMP:
		chip, _, _ := strings.Cut(dev.String(), "{")
		return nil, fmt.Errorf("%s %q at %#x: the chip is a %s; set type: %s", typ, opts.Name, addr, chip, strings.ToLower(chip))
	}
	return newDevice(typ, opts, dev, isBME, true), nil
}

// MCP9808 identification registers and values (datasheet DS25095A,
// registers 0x06 and 0x07).
const (
	mcp9808RegManufacturer = 0x06
	mcp9808RegDevice       = 0x07
	mcp9808Manufacturer    = 0x0054
	mcp9808DeviceID        = 0x04 // upper byte; the lower is the revision
)

// NewMCP9808 opens a Microchip MCP9808 at addr (0x18..0x1f). It reads the
// manufacturer and device ids first: the periph driver does not, and a
// TMP102 or an EEPROM answering at the address would otherwise read as a
// temperature.
func NewMCP9808(bus i2c.Bus, addr uint16, o *Opts) (*Device, error) {
	opts := o.resolve(TypeMCP9808)
	d := i2c.Dev{Bus: bus, Addr: addr}
	var b [2]byte
	if err := d.Tx([]byte{mcp9808RegManufacturer}, b[:]); err != nil {
		return nil, fmt.Errorf("mcp9808 %q at %#x: %w", opts.Name, addr, err)
	}
	if m := binary.BigEndian.Uint16(b[:]); m != mcp9808Manufacturer {
		return nil, fmt.Errorf("mcp9808 %q at %#x: manufacturer id %#04x is not Microchip's %#04x: another chip answers there", opts.Name, addr, m, mcp9808Manufacturer)
	}
	if err := d.Tx([]byte{mcp9808RegDevice}, b[:]); err != nil {
		return nil, fmt.Errorf("mcp9808 %q at %#x: %w", opts.Name, addr, err)
	}
	if b[0] != mcp9808DeviceID {
		return nil, fmt.Errorf("mcp9808 %q at %#x: device id %#02x is not an MCP9808 (%#02x)", opts.Name, addr, b[0], mcp9808DeviceID)
	}
	mo := mcp9808.DefaultOpts // never nil: New dereferences it
	mo.Addr = int(addr)
	dev, err := mcp9808.New(bus, &mo)
	if err != nil {
		return nil, fmt.Errorf("mcp9808 %q at %#x: %w", opts.Name, addr, err)
	}
	return newDevice(TypeMCP9808, opts, dev, false, false), nil
}

// NewTMP102 opens a TI TMP102 at addr (0x48..0x4b), sampling at 4 Hz.
func NewTMP102(bus i2c.Bus, addr uint16, o *Opts) (*Device, error) {
	opts := o.resolve(TypeTMP102)
	dev, err := tmp102.NewI2C(bus, addr, &tmp102.Opts{SampleRate: tmp102.RateFourHertz, AlertSetting: tmp102.ModeComparator})
	if err != nil {
		return nil, fmt.Errorf("tmp102 %q at %#x: %w", opts.Name, addr, err)
	}
	return newDevice(TypeTMP102, opts, dev, false, false), nil
}

// NewAHT20 opens an Aosong AHT20 (temperature and humidity, address 0x38),
// with CRC checking of every measurement.
func NewAHT20(bus i2c.Bus, o *Opts) (*Device, error) {
	opts := o.resolve(TypeAHT20)
	ao := aht20.DefaultOpts
	ao.ValidateData = true
	dev, err := aht20.NewI2C(bus, &ao)
	if err != nil {
		return nil, fmt.Errorf("aht20 %q at %#x: %w", opts.Name, AddrAHT20, err)
	}
	return newDevice(TypeAHT20, opts, aht20Dev{dev}, true, false), nil
}

// aht20Dev adds the String method physic.SenseEnv wants and the periph
// driver lacks.
type aht20Dev struct{ *aht20.Dev }

func (aht20Dev) String() string { return "AHT20" }
