package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/internal/schedfile"

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
	fs := cli.NewFlags("set", "controllerlite set [--http ADDR] DEVICE|--all [--setpoint CELSIUS] [--mode off|heat|cool|auto] [--preset NAME] [--schedule FILE] [--schedule-enabled true|false]", stderr)
	var af apiFlags
	af.register(fs)
	var setpoint, mode, preset, schedFile, schedOn string
	var all bool
	fs.StringVar(&setpoint, "setpoint", "", "target temperature in `CELSIUS`, 5 to 35")
	fs.StringVar(&mode, "mode", "", "`MODE`: off, heat, cool or auto")
	fs.StringVar(&preset, "preset", "", "preset `NAME` (home, away, eco, sleep, comfort by default), or none")
	fs.StringVar(&schedFile, "schedule", "", "week program `FILE` (YAML or JSON)")
	fs.StringVar(&schedOn, "schedule-enabled", "", "true or false: run or stop the device's week program")
	fs.BoolVar(&all, "all", false, "every device the controller knows, a write each (the holiday button: --all --preset away)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if all != (len(pos) == 0) || len(pos) > 1 {
		fs.Usage()
		return cli.Usagef("set takes one DEVICE or --all, got %d arguments", len(pos))
	}
	changes := map[string]any{}
	if setpoint != "" {
		f, err := strconv.ParseFloat(setpoint, 64)
		if err != nil {
			return cli.Usagef("--setpoint %q is not a number", setpoint)
		}
		changes[protocol.PropSetpoint] = f
	}
	if mode != "" {
		changes[protocol.PropMode] = mode
	}
	if preset != "" {
		changes[protocol.PropPreset] = preset
	}
	if schedFile != "" {
		s, err := schedfile.Load(schedFile)
		if err != nil {
			return err
		}
		changes[protocol.PropSchedule] = s
	}
	var enable *bool
	if schedOn != "" {
		b, err := strconv.ParseBool(schedOn)
		if err != nil {
			return cli.Usagef("--schedule-enabled %q: want true or false", schedOn)
		}
		enable = &b
	}
	if len(changes) == 0 && enable == nil {
		fs.Usage()
		return cli.Usagef("nothing to set: give --setpoint, --mode, --preset, --schedule or --schedule-enabled")
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	ids := pos
	if all {
		devs, err := c.Devices(ctx)
		if err != nil {
			return fmt.Errorf("set --all: %w", err)
		}
		ids = nil
		for _, d := range devs {
			ids = append(ids, d.ID)
		}
	}
	var done []fleet.Device
	var failed int
	for _, id := range ids {
		d, err := setOne(ctx, c, id, changes, enable)
		if err != nil {
			if !all {
				return err
			}
			failed++
			fmt.Fprintf(stderr, "controllerlite: %v\n", err)
			continue
		}
		done = append(done, d)
	}
	if af.json {
		if all {
			return writeJSON(stdout, done)
		}
		return writeJSON(stdout, done[0])
	}
	if err := writeTable(stdout, done, time.Now()); err != nil {
		return err
	}
	for _, d := range done {
		if d.Pending {
			fmt.Fprintf(stdout, "%s: the controller is not connected to its broker: the command goes out when it is\n", d.ID)
		} else if !d.Online {
			fmt.Fprintf(stdout, "%s: the device is offline: it gets the command when it reconnects\n", d.ID)
		}
	}
	if failed > 0 {
		return fmt.Errorf("set --all: %d of %d devices refused the write", failed, len(ids))
	}
	return nil
}

// setOne writes changes to one device; enable, when set, writes the
// schedule (the one in changes, or the device's) with enabled set so: the
// schedule is one register, written whole.
func setOne(ctx context.Context, c *api.Client, id string, changes map[string]any, enable *bool) (fleet.Device, error) {
	if enable != nil {
		changes = maps.Clone(changes)
		s, ok := changes[protocol.PropSchedule].(protocol.Schedule)
		if !ok {
			d, err := c.Device(ctx, id)
			if err != nil {
				return fleet.Device{}, fmt.Errorf("set %s: %w", id, err)
			}
			if s, ok = d.Props.Schedule(); !ok {
				return fleet.Device{}, fmt.Errorf("set %s: the device has no schedule to enable or disable: give one with --schedule FILE", id)
			}
		}
		s.Enabled = *enable
		changes[protocol.PropSchedule] = s
	}
	d, err := c.Set(ctx, id, changes)
	if err != nil {
		return fleet.Device{}, fmt.Errorf("set %s: %w", id, err)
	}
	return d, nil
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
	fmt.Fprintln(tw, "ID\tONLINE\tSETPOINT\tMODE\tPRESET\tTEMP\tACTION\tNEXT\tALERTS\tCLOCK\tLAST SEEN")
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
		preset := "-"
		if v, ok := d.Props.Preset(); ok {
			preset = v
		}
		temp, action, next := "-", "-", "-"
		var t protocol.Telemetry
		if len(d.Telemetry) > 0 && json.Unmarshal(d.Telemetry, &t) == nil {
			if t.TempC != nil {
				temp = strconv.FormatFloat(*t.TempC, 'f', 1, 64)
			}
			if !t.SensorOK {
				temp += " (sensor fault)"
			}
			action = t.Action
			if action == "" { // a device from before action was added
				action = protocol.ActionOf(t.Heat, t.Cool, mode)
			}
			if n := t.Next; n != nil {
				next = n.At.Local().Format("Mon 15:04") + " " + strconv.FormatFloat(n.SetpointC, 'f', 1, 64)
				if n.Preset != "" {
					next += " (" + n.Preset + ")"
				}
			}
		}
		alerts := "-"
		if len(d.Alerts) > 0 {
			var codes []string
			for _, a := range d.Alerts {
				codes = append(codes, a.Code)
			}
			alerts = strings.Join(codes, ",")
		}
		clock := d.VC.String()
		if d.Pending {
			clock += " (pending)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, online, sp, mode, preset, temp, action, next, alerts, clock, ago(d.LastSeen, now))
	}
	return tw.Flush()
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
