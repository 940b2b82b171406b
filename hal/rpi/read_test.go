package rpi

import "github.com/thermofleet/thermo/hal"

// read takes a reading and its error, as the tests check both.
func read(s hal.Sensor) (hal.Reading, error) {
	r := s.Read()
	return r, r.Err
}
