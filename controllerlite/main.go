// Command controllerlite is the thermostat fleet controller: it runs (or
// connects to) the MQTT broker, keeps every device's state by the sync
// protocol, serves an HTTP API, and manages the fleet's certificates.
//
//	controllerlite serve --ca FILE --cert FILE --key FILE --data-dir DIR [--http ADDR]
//	                     [--listen ADDR | --broker mqtts://HOST:PORT] [--topic-root thermo]
//	controllerlite devices [--http ADDR] [--json]
//	controllerlite set [--http ADDR] DEVICE --setpoint 21 [--mode heat]
//	controllerlite delete [--http ADDR] DEVICE
//	controllerlite pki init|server|device|controller|sign|mosquitto|revoke|crl ...
//	controllerlite version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/thermofleet/thermo/controllerlite/server"
	"github.com/thermofleet/thermo/internal/cli"

	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/release"
	"github.com/thermofleet/thermo/svcctl"
)

// Set at build time: -ldflags "-X main.version=1.2.3 -X main.commit=abc -X main.date=2026-11-24".
var (
	version = "dev"
	commit  = "none"
	date    = "unknown"
)

const usage = `Usage: controllerlite COMMAND [flags]

Commands:
  serve      run the controller: embedded MQTT broker (or --broker), fleet state, HTTP API
  devices    list the devices of a running controller
  set        set a device's setpoint and/or mode through a running controller
  delete     retire a device: revoke it (with serve --signing-key), remove its retained messages and records
  pki        manage the fleet's certificates (controllerlite pki help)
  release    make the release key, sign thermostat releases (controllerlite release help)
  ota        roll a signed release out to the fleet: rollout, status, pause (controllerlite ota help)
  version    print the version

Service (systemd, as root):
  install [serve flags]   install and enable the controllerlite service, recording the serve flags
  uninstall               remove it
  start|stop|restart      control it
  service status          its state as systemd sees it (also: status)
  service VERB            any of these, as thermostat spells them

Run 'controllerlite COMMAND -h' for a command's flags. A mistake in the
command line exits 2, any other failure 1.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal the default action comes back: a second
		// Ctrl-C kills a shutdown that takes too long.
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.ExitCode("controllerlite", err, os.Stderr))
}

// run runs one command. Cancelling ctx (SIGINT, SIGTERM) stops serve
// cleanly; that is not an error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return cli.Usagef("a command is required")
	}
	// install|uninstall|start|stop|restart|status, as a systemd service.
	if handled, err := svcctl.Handle(svcctl.Controllerlite, args, func(serveArgs []string) error {
		_, err := server.ParseFlags(serveArgs, stderr)
		return err
	}); handled {
		return err
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return server.Command(ctx, rest, stdout, stderr)
	case "devices":
		return runDevices(ctx, rest, stdout, stderr)
	case "set":
		return runSet(ctx, rest, stdout, stderr)
	case "delete":
		return runDelete(ctx, rest, stdout, stderr)
	case "pki":
		return provisioning.RunPKI(rest, stdout, stderr)
	case "release":
		return release.RunCLI(rest, stdout, stderr)
	case "ota":
		return runOTA(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		// -h too: the version is all this command has to say.
		fmt.Fprintln(stdout, cli.Version("controllerlite", version, commit, date))
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return cli.Usagef("unknown command %q", cmd)
}
