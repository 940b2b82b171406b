// Command thermostat is the firmware of a Raspberry Pi thermostat: it runs
// the control loop on the board's sensors and relays, and keeps the
// settings in sync with the fleet controller over MQTT with mutual TLS.
//
//	thermostat run --broker mqtts://HOST:8883 [--config FILE] [flags]
//	thermostat set --setpoint 22.5 [--mode heat]
//	thermostat status
//	thermostat csr --id ID
//	thermostat version
//	thermostat install|uninstall|start|stop|restart [run flags]
//
// main parses the command line and calls run; everything else lives in
// packages under firmware/.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"

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
  version   print the version
  help      print this help

Service (systemd, as root):
  install [run flags]   install and enable the thermostat service, recording the run flags
  uninstall             remove it
  start|stop|restart    control it
  service status        its state as systemd sees it

Run 'thermostat COMMAND -h' for a command's flags.
`

// errUsage is returned for a command line that could not be parsed; the
// flag package has already said why.
var errUsage = errors.New("usage")

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil:
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "thermostat: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
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
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func versionString() string {
	return fmt.Sprintf("thermostat %s (commit %s, built %s, %s/%s, %s)",
		version, commit, date, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// parseFlags parses a command's flags; -h is not an error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return flag.ErrHelp
	case err != nil:
		return errUsage
	case fs.NArg() > 0:
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: thermostat %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// helpOK turns -h into success.
func helpOK(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}
