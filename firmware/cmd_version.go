package main

import (
	"fmt"
	"io"

	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/ota"
	"github.com/thermofleet/thermo/internal/cli"
)

// versionCmd is `thermostat version`: this binary's version on the first
// line (as scripts and `release sign` read it), then which binary the
// launcher runs: the packaged one or an OTA slot, and a trial or the last
// rollback, from the state directory's slots.json.
func versionCmd(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("version", "thermostat version [--state-dir DIR]", stderr)
	dir := fs.String("state-dir", config.DefaultStateDir, "state `DIR` whose OTA slots to describe")
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	fmt.Fprintln(stdout, versionString())
	if s := ota.Running(); s != ota.Packaged {
		fmt.Fprintf(stdout, "this binary: OTA slot %s\n", s)
	}
	st, err := ota.Load(*dir)
	if err != nil {
		fmt.Fprintf(stdout, "slots: %v\n", err)
		return nil
	}
	fmt.Fprintln(stdout, ota.Describe(st, version))
	return nil
}
