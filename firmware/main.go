// Command thermostat is the firmware of a Raspberry Pi thermostat: it runs
// the control loop on the board's sensors and relays, and keeps the
// settings in sync with the fleet controller over MQTT with mutual TLS.
//
//	thermostat run --broker mqtts://HOST:8883 [--config FILE] [flags]
//	thermostat set --setpoint 22.5 [--mode heat]
//	thermostat status
//	thermostat csr --id ID [--days N]
//	thermostat version
//	thermostat install|uninstall|start|stop|restart [run flags]
//
// main parses the command line and calls run; everything else lives in
// packages under firmware/.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/thermofleet/thermo/internal/cli"

	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/svcctl"
)

// Set at build time: -ldflags "-X main.version=... -X main.commit=... -X main.date=...".
var (
	version = "dev"
	commit  = "dev"
	date    = "dev"
)

const usage = `Usage: thermostat COMMAND [flags]

Commands:
  run       run the thermostat: control loop, sync with the controller, local control socket
  set       change the settings of the running thermostat (--setpoint, --mode)
  status    print the running thermostat's state as JSON
  csr       make this device's key and a certificate request for 'controllerlite pki sign'
  version   print the version, and which OTA slot runs (--state-dir)
  help      print this help

Service (systemd, as root):
  install [run flags]   install and enable the thermostat service, recording the run flags
  uninstall             remove it
  start|stop|restart    control it
  service status        its state as systemd sees it

Run 'thermostat COMMAND -h' for a command's flags. A mistake in the
command line exits 2, any other failure 1.
`

func main() {
	os.Exit(cli.ExitCode("thermostat", run(os.Args[1:], os.Stdout, os.Stderr), os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return cli.Usagef("a command is required")
	}
	if handled, err := svcctl.Handle(svcctl.Thermostat, args, checkRunArgs); handled {
		return err
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runCmd(rest, stderr)
	case "set":
		return setCmd(rest, stdout, stderr)
	case "status":
		return statusCmd(rest, stdout, stderr)
	case "csr":
		return provisioning.RunCSR(rest, stdout, stderr)
	case "version", "--version", "-version":
		return versionCmd(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return cli.Usagef("unknown command %q", cmd)
}

func versionString() string { return cli.Version("thermostat", version, commit, date) }
