package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/thermofleet/thermo/internal/cli"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/protocol"
)

// Environment variables the CLI reads when the flags are not given.
const (
	envHTTP  = "CONTROLLERLITE_HTTP"
	envToken = "CONTROLLERLITE_TOKEN"
)

// apiFlags are the flags every API command takes.
type apiFlags struct {
	addr, tokenFile string
	json            bool
}

func (a *apiFlags) register(fs *flag.FlagSet) {
	def := os.Getenv(envHTTP)
	if def == "" {
		def = api.DefaultAddr
	}
	fs.StringVar(&a.addr, "http", def, "`ADDR` of the controller's HTTP API, as given to serve --http, or a URL (env "+envHTTP+")")
	fs.StringVar(&a.tokenFile, "http-token-file", "", "`FILE` holding the API token (default: env "+envToken+")")
	fs.BoolVar(&a.json, "json", false, "print JSON instead of a table")
}

func (a *apiFlags) client() (*api.Client, error) {
	tok := os.Getenv(envToken)
	if a.tokenFile != "" {
		var err error
		if tok, err = api.ReadTokenFile(a.tokenFile); err != nil {
			return nil, err
		}
	}
	return api.NewClient(a.addr, tok)
}

func runDevices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("devices", "controllerlite devices [--http ADDR] [--json]", stderr)
	var af apiFlags
	af.register(fs)
	if pos, err := cli.Parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		fs.Usage()
		return fmt.Errorf("%w: devices takes no arguments, got %q", cli.ErrUsage, pos[0])
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	devs, err := c.Devices(ctx)
	if err != nil {
		return fmt.Errorf("devices: %w", err)
	}
	if af.json {
		return writeJSON(stdout, devs)
	}
	if len(devs) == 0 {
		fmt.Fprintln(stdout, "no devices yet: a device appears when its first message reaches the controller")
		return nil
	}
	return writeTable(stdout, devs, time.Now())
}

func runSet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("set", "controllerlite set [--http ADDR] DEVICE [--setpoint CELSIUS] [--mode off|heat|cool|auto]", stderr)
	var af apiFlags
	af.register(fs)
	var setpoint, mode string
	fs.StringVar(&setpoint, "setpoint", "", "target temperature in `CELSIUS`, 5 to 35")
	fs.StringVar(&mode, "mode", "", "`MODE`: off, heat, cool or auto")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return fmt.Errorf("%w: set takes one DEVICE, got %d arguments", cli.ErrUsage, len(pos))
	}
	changes := map[string]any{}
	if setpoint != "" {
		f, err := strconv.ParseFloat(setpoint, 64)
		if err != nil {
			return fmt.Errorf("%w: --setpoint %q is not a number", cli.ErrUsage, setpoint)
		}
		changes[protocol.PropSetpoint] = f
	}
	if mode != "" {
		changes[protocol.PropMode] = mode
	}
	if len(changes) == 0 {
		fs.Usage()
		return fmt.Errorf("%w: nothing to set: give --setpoint and/or --mode", cli.ErrUsage)
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	d, err := c.Set(ctx, pos[0], changes)
	if err != nil {
		return fmt.Errorf("set %s: %w", pos[0], err)
	}
	if af.json {
		return writeJSON(stdout, d)
	}
	if err := writeTable(stdout, []fleet.Device{d}, time.Now()); err != nil {
		return err
	}
	if d.Pending {
		fmt.Fprintln(stdout, "the controller is not connected to its broker: the command goes out when it is")
	} else if !d.Online {
		fmt.Fprintln(stdout, "the device is offline: it gets the command when it reconnects")
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// writeTable prints devices as an aligned table.
func writeTable(w io.Writer, devs []fleet.Device, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tONLINE\tSETPOINT\tMODE\tTEMP\tHEAT/COOL\tCLOCK\tLAST SEEN")
	for _, d := range devs {
		online := "no"
		if d.Online {
			online = "yes"
		}
		sp := "-"
		if v, ok := d.Props.Setpoint(); ok {
			sp = strconv.FormatFloat(v, 'f', 1, 64)
		}
		mode := "-"
		if v, ok := d.Props.Mode(); ok {
			mode = v
		}
		temp, outputs := "-", "-"
		var t protocol.Telemetry
		if len(d.Telemetry) > 0 && json.Unmarshal(d.Telemetry, &t) == nil {
			if t.TempC != nil {
				temp = strconv.FormatFloat(*t.TempC, 'f', 1, 64)
			}
			if !t.SensorOK {
				temp += " (sensor fault)"
			}
			outputs = onOff(t.Heat) + "/" + onOff(t.Cool)
		}
		clock := d.VC.String()
		if d.Pending {
			clock += " (pending)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, online, sp, mode, temp, outputs, clock, ago(d.LastSeen, now))
	}
	return tw.Flush()
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// ago renders a time as a short age, or the date when it is old.
func ago(t *time.Time, now time.Time) string {
	if t == nil {
		return "never"
	}
	d := now.Sub(*t)
	switch {
	case d < 0:
		return t.Local().Format(time.DateTime)
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Local().Format(time.DateTime)
}
