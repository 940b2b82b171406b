package sensors

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/hal/haltest"
	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"
)

var t0 = time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)

func testOpts(name string) *Opts { return &Opts{Name: name, Clock: haltest.NewClock(t0)} }

// BMP280 datasheet (BST-BMP280-DS001), section 3.12, table "compensation
// formula example": dig_T1..T3 = 27504, 26435, -1000; dig_P1..P9 = 36477,
// -10685, 3024, 2855, 140, -7, 15500, -14600, 6000; adc_T = 519888 gives
// 25.08 °C and adc_P = 415148 gives 100653.27 Pa. The BME280 shares the
// registers; its humidity trimming (0xE1..0xE7) is from a real BME280
// (the bytes periph's own tests use): H1=75, H2=366, H3=0, H4=309, H5=0,
// H6=30.
var bmeCalib = []byte{
	0x70, 0x6b, // dig_T1 27504, little endian, register 0x88
	0x43, 0x67, // dig_T2 26435
	0x18, 0xfc, // dig_T3 -1000
	0x7d, 0x8e, // dig_P1 36477
	0x41, 0xd6, // dig_P2 -10685
	0xd0, 0x0b, // dig_P3 3024
	0x27, 0x0b, // dig_P4 2855
	0x8c, 0x00, // dig_P5 140
	0xf9, 0xff, // dig_P6 -7
	0x8c, 0x3c, // dig_P7 15500
	0xf8, 0xc6, // dig_P8 -14600
	0x70, 0x17, // dig_P9 6000
	0x00, // 0xA0 reserved
	0x4b, // 0xA1 dig_H1 75
}

var bmeHumCalib = []byte{0x6e, 0x01, 0x00, 0x13, 0x05, 0x00, 0x1e} // 0xE1..0xE7

const adcH = 0x6a2b // a raw humidity sample

// bmeData is registers 0xF7..0xFE: press msb/lsb/xlsb, temp msb/lsb/xlsb,
// hum msb/lsb. adc_P = 0x655AC = 415148, adc_T = 0x7EED0 = 519888.
var bmeData = []byte{0x65, 0x5a, 0xc0, 0x7e, 0xed, 0x00, adcH >> 8, adcH & 0xff}

func bmeOpen(addr uint16, chipID byte) []i2ctest.IO {
	ops := []i2ctest.IO{
		{Addr: addr, W: []byte{0xd0}, R: []byte{chipID}}, // id register: 0x60 BME280, 0x58 BMP280
		{Addr: addr, W: []byte{0x88}, R: bmeCalib},       // trimming 0x88..0xA1
	}
	if chipID == 0x60 {
		ops = append(ops,
			i2ctest.IO{Addr: addr, W: []byte{0xe1}, R: bmeHumCalib}, // humidity trimming
			// ctrl_meas sleep (osrs_t=osrs_p=x4), ctrl_hum x4, config
			// t_sb=1s no filter, ctrl_meas again (written last, p.25).
			i2ctest.IO{Addr: addr, W: []byte{0xf4, 0x6c, 0xf2, 0x03, 0xf5, 0xa0, 0xf4, 0x6c}})
	} else {
		ops = append(ops, i2ctest.IO{Addr: addr, W: []byte{0xf4, 0x6c, 0xf5, 0xa0, 0xf4, 0x6c}})
	}
	return ops
}

func bmeSense(addr uint16, data []byte) []i2ctest.IO {
	return []i2ctest.IO{
		{Addr: addr, W: []byte{0xf4, 0x6d}},            // ctrl_meas: forced mode
		{Addr: addr, W: []byte{0xf3}, R: []byte{0x00}}, // status: measuring bit 3 clear
		{Addr: addr, W: []byte{0xf7}, R: data},         // burst read of all data (p.21)
	}
}

// bmeHumidity is the BME280 datasheet's floating point compensation
// (section 8.1), independent of the driver's integer code.
func bmeHumidity() float64 {
	const (
		t1, t2, t3             = 27504.0, 26435.0, -1000.0
		h1, h2, h3, h4, h5, h6 = 75.0, 366.0, 0.0, 309.0, 0.0, 30.0
		adcT                   = 519888.0
	)
	v1 := (adcT/16384.0 - t1/1024.0) * t2
	v2 := (adcT/131072.0 - t1/8192.0) * (adcT/131072.0 - t1/8192.0) * t3
	tFine := v1 + v2
	h := tFine - 76800.0
	h = (adcH - (h4*64.0 + h5/16384.0*h)) * (h2 / 65536.0 * (1.0 + h6/67108864.0*h*(1.0+h3/67108864.0*h)))
	h = h * (1.0 - h1*h/524288.0)
	return math.Max(0, math.Min(100, h))
}

func TestBME280(t *testing.T) {
	ops := append(bmeOpen(0x76, 0x60), bmeSense(0x76, bmeData)...)
	bus := &i2ctest.Playback{Ops: ops}
	d, err := NewBMxx80(bus, 0x76, TypeBME280, testOpts("room"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := read(d)
	if err != nil || !r.OK() {
		t.Fatalf("Read = %+v, %v", r, err)
	}
	if got := r.Temperature.Celsius(); math.Abs(got-25.08) > 0.005 {
		t.Errorf("temperature %v, datasheet says 25.08 °C", r.Temperature)
	}
	if got := float64(r.Pressure) / float64(physic.Pascal); !r.HasPressure || math.Abs(got-100653.27) > 0.5 {
		t.Errorf("pressure %v, datasheet says 100653.27 Pa", r.Pressure)
	}
	want := bmeHumidity()
	if got := float64(r.Humidity) / float64(physic.PercentRH); !r.HasHumidity || math.Abs(got-want) > 0.1 {
		t.Errorf("humidity %v, datasheet formula gives %.2f%%", r.Humidity, want)
	}
	if r.Sensor != "room" || !r.Time.Equal(t0) {
		t.Errorf("reading %+v", r)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestBMP280HasNoHumidity(t *testing.T) {
	ops := append(bmeOpen(0x77, 0x58), bmeSense(0x77, bmeData[:6])...)
	bus := &i2ctest.Playback{Ops: ops}
	d, err := NewBMxx80(bus, 0x77, TypeBMP280, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := read(d)
	if err != nil || r.HasHumidity || !r.HasPressure || r.Sensor != TypeBMP280 {
		t.Fatalf("Read = %+v, %v", r, err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestBMxx80Errors(t *testing.T) {
	tests := []struct {
		name string
		typ  string
		ops  []i2ctest.IO
		want string
	}{
		// No IO scripted: the bus answers the id read with an error, as a
		// missing chip does (no ACK).
		{"unplugged", TypeBME280, nil, "bme280 \"t\" at 0x76"},
		{"wrong chip id", TypeBME280, []i2ctest.IO{{Addr: 0x76, W: []byte{0xd0}, R: []byte{0x42}}}, "unexpected chip id"},
		{"BMP280 sold as BME280", TypeBME280, bmeOpen(0x76, 0x58), "the chip is a BMP280; set type: bmp280"},
		{"calibration read fails", TypeBME280, []i2ctest.IO{{Addr: 0x76, W: []byte{0xd0}, R: []byte{0x60}}}, "bme280"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bus := &i2ctest.Playback{Ops: tc.ops, DontPanic: true}
			_, err := NewBMxx80(bus, 0x76, tc.typ, testOpts("t"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestBME280BusErrorOnRead(t *testing.T) {
	// The chip answers at open, then the bus fails at the data read.
	ops := append(bmeOpen(0x76, 0x60), bmeSense(0x76, bmeData)[:2]...)
	bus := &i2ctest.Playback{Ops: ops, DontPanic: true}
	d, err := NewBMxx80(bus, 0x76, TypeBME280, testOpts("room"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := read(d)
	if err == nil || r.OK() || r.Err == nil || !strings.Contains(err.Error(), `bme280 "room": read`) {
		t.Fatalf("Read = %+v, %v; want a bus error", r, err)
	}
}

// MCP9808 datasheet (DS20005095B) registers: 0x06 manufacturer id 0x0054,
// 0x07 device id 0x04 revision 0x00, 0x08 resolution (0x03: 0.0625 °C),
// 0x01 config (0x0000: continuous conversion), 0x05 ambient temperature
// (upper byte: 3 alert flags, sign, 2^7..2^4; lower byte 2^3..2^-4).
func mcpOpen(addr uint16) []i2ctest.IO {
	return []i2ctest.IO{
		{Addr: addr, W: []byte{0x06}, R: []byte{0x00, 0x54}},
		{Addr: addr, W: []byte{0x07}, R: []byte{0x04, 0x00}},
		{Addr: addr, W: []byte{0x08, 0x03}},
		{Addr: addr, W: []byte{0x01, 0x00, 0x00}},
	}
}

func TestMCP9808(t *testing.T) {
	tests := []struct {
		name  string
		bytes []byte
		want  float64
	}{
		{"25.25 °C", []byte{0x01, 0x94}, 25.25},
		{"alert flags ignored", []byte{0xc1, 0x94}, 25.25},
		{"-10 °C two's complement", []byte{0x1f, 0x60}, -10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ops := append(mcpOpen(0x19), i2ctest.IO{Addr: 0x19, W: []byte{0x05}, R: tc.bytes})
			bus := &i2ctest.Playback{Ops: ops}
			d, err := NewMCP9808(bus, 0x19, testOpts("hall"))
			if err != nil {
				t.Fatal(err)
			}
			r, err := read(d)
			if err != nil || r.Temperature != physic.ZeroCelsius+physic.Temperature(tc.want*1000)*physic.MilliCelsius || r.HasHumidity {
				t.Fatalf("Read = %v %+v, want %v °C", err, r, tc.want)
			}
			if err := bus.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestMCP9808Errors(t *testing.T) {
	tests := []struct {
		name string
		ops  []i2ctest.IO
		want string
	}{
		{"unplugged", nil, `mcp9808 "hall" at 0x18`},
		{"another chip", []i2ctest.IO{{Addr: 0x18, W: []byte{0x06}, R: []byte{0x12, 0x34}}}, "manufacturer id 0x1234"},
		{"wrong device", []i2ctest.IO{
			{Addr: 0x18, W: []byte{0x06}, R: []byte{0x00, 0x54}},
			{Addr: 0x18, W: []byte{0x07}, R: []byte{0x05, 0x00}},
		}, "not an MCP9808"},
		{"read fails", append(mcpOpen(0x18), i2ctest.IO{Addr: 0x18, W: []byte{0x07}}), "read"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bus := &i2ctest.Playback{Ops: tc.ops, DontPanic: true}
			d, err := NewMCP9808(bus, 0x18, testOpts("hall"))
			if err == nil {
				_, err = read(d)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// TMP102 datasheet (SBOS397): configuration register 0x01 powers up as
// 0x60A0 (12-bit, 4 Hz, comparator mode); temperature register 0x00 is a
// left-justified 12-bit two's complement count of 0.0625 °C: 0x1900 is
// 25 °C and 0xE700 is -25 °C (table 5).
func tmpOpen(addr uint16) []i2ctest.IO {
	return []i2ctest.IO{
		{Addr: addr, W: []byte{0x01}, R: []byte{0x60, 0xa0}},
		{Addr: addr, W: []byte{0x01, 0x60, 0xa0}}, // shutdown and thermostat bits clear, 4 Hz
	}
}

func TestTMP102(t *testing.T) {
	for _, tc := range []struct {
		bytes []byte
		want  float64
	}{{[]byte{0x19, 0x00}, 25}, {[]byte{0xe7, 0x00}, -25}, {[]byte{0x15, 0x40}, 21.25}} {
		ops := append(tmpOpen(0x48), i2ctest.IO{Addr: 0x48, W: []byte{0x00}, R: tc.bytes})
		bus := &i2ctest.Playback{Ops: ops}
		d, err := NewTMP102(bus, 0x48, nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := read(d)
		if err != nil || math.Abs(r.Temperature.Celsius()-tc.want) > 1e-9 {
			t.Fatalf("Read %x = %v %v, want %v °C", tc.bytes, r.Temperature, err, tc.want)
		}
		if err := bus.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTMP102Errors(t *testing.T) {
	// Unplugged: the configuration write gets no answer.
	bus := &i2ctest.Playback{DontPanic: true}
	if _, err := NewTMP102(bus, 0x48, testOpts("attic")); err == nil || !strings.Contains(err.Error(), `tmp102 "attic" at 0x48`) {
		t.Fatalf("NewTMP102 unplugged = %v", err)
	}
	// Bus error at read.
	bus = &i2ctest.Playback{Ops: tmpOpen(0x48), DontPanic: true}
	d, err := NewTMP102(bus, 0x48, testOpts("attic"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := read(d); err == nil || r.OK() {
		t.Fatalf("Read = %+v, %v; want bus error", r, err)
	}
}

// aht20CRC is the AHT20 datasheet's CRC8: polynomial x^8+x^5+x^4+1
// (0x31), initial value 0xFF.
func aht20CRC(b []byte) byte {
	c := byte(0xff)
	for _, v := range b {
		c ^= v
		for i := 0; i < 8; i++ {
			if c&0x80 != 0 {
				c = c<<1 ^ 0x31
			} else {
				c <<= 1
			}
		}
	}
	return c
}

// AHT20 datasheet (v1.1, section 5.4): status command 0x71 (bit 3:
// calibrated), trigger 0xAC 0x33 0x00, then 7 bytes: status, 20 bits of
// humidity, 20 bits of temperature, CRC. RH = S/2^20·100 %,
// T = S/2^20·200 - 50 °C.
func ahtFrame(status byte, hum, temp uint32) []byte {
	b := []byte{status, byte(hum >> 12), byte(hum >> 4), byte(hum<<4) | byte(temp>>16&0x0f), byte(temp >> 8), byte(temp)}
	return append(b, aht20CRC(b))
}

func TestAHT20(t *testing.T) {
	frame := ahtFrame(0x1c, 0x80000, 0x66666) // 50 %, 30 °C
	bus := &i2ctest.Playback{Ops: []i2ctest.IO{
		{Addr: 0x38, W: []byte{0x71}, R: []byte{0x18}}, // status: calibrated
		{Addr: 0x38, W: []byte{0xac, 0x33, 0x00}},      // trigger measurement
		{Addr: 0x38, R: frame},
	}}
	d, err := NewAHT20(bus, testOpts("bedroom"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := read(d)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(r.Temperature.Celsius()-30) > 0.001 || !r.HasHumidity || math.Abs(float64(r.Humidity)/float64(physic.PercentRH)-50) > 0.001 {
		t.Fatalf("reading %v %v", r.Temperature, r.Humidity)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestAHT20Errors(t *testing.T) {
	bad := ahtFrame(0x1c, 0x80000, 0x66666)
	bad[6] ^= 0xff
	tests := []struct {
		name string
		ops  []i2ctest.IO
		want string
	}{
		{"unplugged", nil, `aht20 "bedroom" at 0x38`},
		{"crc error", []i2ctest.IO{
			{Addr: 0x38, W: []byte{0x71}, R: []byte{0x18}},
			{Addr: 0x38, W: []byte{0xac, 0x33, 0x00}},
			{Addr: 0x38, R: bad},
		}, "corrupt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bus := &i2ctest.Playback{Ops: tc.ops, DontPanic: true}
			d, err := NewAHT20(bus, testOpts("bedroom"))
			if err == nil {
				_, err = read(d)
			}
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}
