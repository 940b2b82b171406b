package systemd

import (
	_ "embed"
)

// ThermostatUnit is systemd/thermostat.service, the unit the .deb installs
// in /lib/systemd/system and `thermostat install` writes.
//
//go:embed thermostat.service
var ThermostatUnit string

// ControllerliteUnit is systemd/controllerlite.service, likewise for
// controllerlite.
//
//go:embed controllerlite.service
var ControllerliteUnit string
