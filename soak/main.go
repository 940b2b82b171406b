// Command soak plays days of simulated life of a fleet: a controllerlite
// with its embedded broker and thermostats running the real firmware
// (runner: agent, control loop, transport) on simulated boards whose clock
// runs many times faster than real time, each on a week program in a zone
// of its own, one crossing a change of the clocks. Meanwhile people press
// buttons and set temperatures and presets from the controller, and the
// broker restarts every simulated day. At the end it checks and prints:
// every schedule entry applied at its minute, both sides equal, the relays'
// minimum on/off times and maximum run kept, and memory and store sizes.
//
//	go run ./soak --days 30 --devices 20 --speed 10000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	if spec := os.Getenv(childEnv); spec != "" {
		if err := childMain(spec, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "soak thermostat:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.IntVar(&o.devices, "devices", 20, "simulated thermostats")
	fs.IntVar(&o.days, "days", 30, "simulated days")
	fs.Float64Var(&o.speed, "speed", 10000, "simulated seconds per real second")
	start := fs.String("start", "2026-03-25T00:00:00Z", "simulated start (RFC 3339); the default crosses Berlin's and Sydney's changes of the clocks")
	fs.StringVar(&o.dir, "work-dir", "", "where certificates and stores go (default a temporary directory, removed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	t, err := time.Parse(time.RFC3339, *start)
	if err != nil {
		return fmt.Errorf("--start: %w", err)
	}
	o.start = t
	res, err := soak(ctx, o, stderr)
	if err != nil {
		return err
	}
	res.print(stdout)
	if !res.ok() {
		return errors.New("checks failed")
	}
	return nil
}
