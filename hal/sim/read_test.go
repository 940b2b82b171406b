package sim

import "github.com/thermofleet/thermo/hal"

// readErr takes a reading and its error, as the tests check both.
func readErr(s hal.Sensor) (hal.Reading, error) {
	r := s.Read()
	return r, r.Err
}
