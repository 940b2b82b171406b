package history

import (
	"encoding/binary"
	"errors"
	"math"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// The on-disk encoding. Temperatures and setpoints are integers of
// hundredths of a degree (the API's precision; telemetry's range, -100 to
// 200 °C, fits an int16). Keys are big-endian times, so bolt's byte order
// is time order and a range is one cursor seek.
//
//	raw key     unix milliseconds, uint64 big-endian (8 bytes)
//	raw value   flags, then temp int16 if flagTemp, then setpoint int16
//	            if flagSetpoint, little-endian (1 to 5 bytes)
//	bucket key  unix seconds of the bucket's start, uint32 big-endian
//	bucket val  flags, uvarint samples, then if flagTemp: uvarint
//	            readings, varint min, uvarint mean-min, uvarint max-min;
//	            if flagSetpoint: uvarint readings, varint mean, varint
//	            last-mean; then uvarint heating s, uvarint cooling s
//	            (about 14 bytes)
//
// The flags byte: bit 0 a temperature, bit 1 a setpoint, bit 2 heating,
// bit 3 cooling (raw only), bits 4-6 the mode (modeCodes).

const (
	flagTemp     = 1 << 0
	flagSetpoint = 1 << 1
	flagHeat     = 1 << 2
	flagCool     = 1 << 3
	modeShift    = 4
	modeMask     = 7 << modeShift
)

// modeCodes number the modes in 3 bits; 0 is "unknown".
var modeCodes = []string{"", protocol.ModeOff, protocol.ModeHeat, protocol.ModeCool, protocol.ModeAuto}

func modeCode(m string) byte {
	for i, s := range modeCodes {
		if s == m {
			return byte(i)
		}
	}
	return 0
}

func modeName(c byte) string {
	if int(c) < len(modeCodes) {
		return modeCodes[c]
	}
	return ""
}

// errEncoding marks a stored value this version cannot read.
var errEncoding = errors.New("history: bad stored value")

// sample is one telemetry message as recorded.
type sample struct {
	id    string
	ms    int64 // unix milliseconds, the controller's receive time
	temp  int16 // hundredths of °C, if flags&flagTemp
	sp    int16 // hundredths of °C, if flags&flagSetpoint
	flags byte  // flag bits and the mode
}

func (s sample) mode() byte { return (s.flags & modeMask) >> modeShift }

// centi converts degrees to hundredths, rounded.
func centi(c float64) int16 { return int16(math.Round(c * 100)) }

// makeSample is what Telemetry keeps of a message: cheap, no allocation.
func makeSample(id string, at time.Time, t protocol.Telemetry, props protocol.Props) sample {
	s := sample{id: id, ms: at.UnixMilli()}
	if t.TempC != nil && *t.TempC >= -100 && *t.TempC <= 200 {
		s.temp, s.flags = centi(*t.TempC), s.flags|flagTemp
	}
	if sp, ok := props.Setpoint(); ok && sp >= -100 && sp <= 200 {
		s.sp, s.flags = centi(sp), s.flags|flagSetpoint
	}
	if t.Heat || t.Action == protocol.ActionHeating {
		s.flags |= flagHeat
	}
	if t.Cool || t.Action == protocol.ActionCooling {
		s.flags |= flagCool
	}
	m, _ := props.Mode()
	s.flags |= modeCode(m) << modeShift
	return s
}

func rawKey(ms int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(ms)) }

func rawTime(k []byte) (int64, bool) {
	if len(k) != 8 {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(k)), true
}

func encodeRaw(buf []byte, s sample) []byte {
	buf = append(buf[:0], s.flags)
	if s.flags&flagTemp != 0 {
		buf = binary.LittleEndian.AppendUint16(buf, uint16(s.temp))
	}
	if s.flags&flagSetpoint != 0 {
		buf = binary.LittleEndian.AppendUint16(buf, uint16(s.sp))
	}
	return buf
}

func decodeRaw(ms int64, v []byte) (sample, error) {
	if len(v) < 1 {
		return sample{}, errEncoding
	}
	s := sample{ms: ms, flags: v[0]}
	v = v[1:]
	if s.flags&flagTemp != 0 {
		if len(v) < 2 {
			return sample{}, errEncoding
		}
		s.temp, v = int16(binary.LittleEndian.Uint16(v)), v[2:]
	}
	if s.flags&flagSetpoint != 0 {
		if len(v) < 2 {
			return sample{}, errEncoding
		}
		s.sp = int16(binary.LittleEndian.Uint16(v))
	}
	return s, nil
}

func bucketKey(sec int64) []byte { return binary.BigEndian.AppendUint32(nil, uint32(sec)) }

func bucketTime(k []byte) (int64, bool) {
	if len(k) != 4 {
		return 0, false
	}
	return int64(binary.BigEndian.Uint32(k)), true
}

// acc accumulates samples, or stored buckets, into one bucket: what a
// 15-minute bucket stores and what a query answers per step.
type acc struct {
	n              int // samples
	tn             int // samples with a temperature
	tmin, tmax     int32
	tsum           int64 // hundredths
	spn            int   // samples with a setpoint
	spsum          int64
	splast         int32
	heatMs, coolMs int64
	mode           byte // the last known
}

func (a *acc) empty() bool { return a.n == 0 && a.heatMs == 0 && a.coolMs == 0 }

// addSample counts s in the bucket. Samples come in time order, so the
// last setpoint and mode are the latest.
func (a *acc) addSample(s sample) {
	a.n++
	if s.flags&flagTemp != 0 {
		t := int32(s.temp)
		if a.tn == 0 || t < a.tmin {
			a.tmin = t
		}
		if a.tn == 0 || t > a.tmax {
			a.tmax = t
		}
		a.tn++
		a.tsum += int64(t)
	}
	if s.flags&flagSetpoint != 0 {
		a.spn++
		a.spsum += int64(s.sp)
		a.splast = int32(s.sp)
	}
	if m := s.mode(); m != 0 {
		a.mode = m
	}
}

// merge adds b, which is later than everything in a.
func (a *acc) merge(b acc) {
	if b.tn > 0 {
		if a.tn == 0 || b.tmin < a.tmin {
			a.tmin = b.tmin
		}
		if a.tn == 0 || b.tmax > a.tmax {
			a.tmax = b.tmax
		}
		a.tn += b.tn
		a.tsum += b.tsum
	}
	if b.spn > 0 {
		a.spn += b.spn
		a.spsum += b.spsum
		a.splast = b.splast
	}
	if b.mode != 0 {
		a.mode = b.mode
	}
	a.n += b.n
	a.heatMs += b.heatMs
	a.coolMs += b.coolMs
}

// divRound is n/d rounded to the nearest, halves away from zero.
func divRound(n int64, d int) int64 {
	if n >= 0 {
		return (n + int64(d)/2) / int64(d)
	}
	return -((-n + int64(d)/2) / int64(d))
}

func encodeBucket(buf []byte, a acc) []byte {
	flags := a.mode << modeShift
	if a.tn > 0 {
		flags |= flagTemp
	}
	if a.spn > 0 {
		flags |= flagSetpoint
	}
	buf = append(buf[:0], flags)
	buf = binary.AppendUvarint(buf, uint64(a.n))
	if a.tn > 0 {
		mean := divRound(a.tsum, a.tn)
		buf = binary.AppendUvarint(buf, uint64(a.tn))
		buf = binary.AppendVarint(buf, int64(a.tmin))
		buf = binary.AppendUvarint(buf, uint64(mean-int64(a.tmin)))
		buf = binary.AppendUvarint(buf, uint64(a.tmax-a.tmin))
	}
	if a.spn > 0 {
		mean := divRound(a.spsum, a.spn)
		buf = binary.AppendUvarint(buf, uint64(a.spn))
		buf = binary.AppendVarint(buf, mean)
		buf = binary.AppendVarint(buf, int64(a.splast)-mean)
	}
	buf = binary.AppendUvarint(buf, uint64(divRound(a.heatMs, 1000)))
	buf = binary.AppendUvarint(buf, uint64(divRound(a.coolMs, 1000)))
	return buf
}

// reader decodes varints, remembering the first error.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) u() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) s() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func decodeBucket(v []byte) (acc, error) {
	if len(v) < 1 {
		return acc{}, errEncoding
	}
	flags := v[0]
	r := reader{b: v[1:]}
	a := acc{mode: (flags & modeMask) >> modeShift, n: int(r.u())}
	if flags&flagTemp != 0 {
		a.tn = int(r.u())
		a.tmin = int32(r.s())
		mean := int64(a.tmin) + int64(r.u())
		a.tmax = a.tmin + int32(r.u())
		a.tsum = mean * int64(a.tn)
	}
	if flags&flagSetpoint != 0 {
		a.spn = int(r.u())
		mean := r.s()
		a.splast = int32(mean + r.s())
		a.spsum = mean * int64(a.spn)
	}
	a.heatMs = int64(r.u()) * 1000
	a.coolMs = int64(r.u()) * 1000
	if r.bad || len(r.b) != 0 {
		return acc{}, errEncoding
	}
	return a, nil
}
