package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/localctl"
	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/internal/schedfile"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/svcctl"
)

// localTimeout bounds a request to the running agent.
const localTimeout = 15 * time.Second

// socketFlags are the flags `set` and `status` share: where the agent's
// socket is, directly or through the configuration file.
type socketFlags struct {
	fs     *flag.FlagSet
	file   *string
	socket *string
}

func addSocketFlags(fs *flag.FlagSet) socketFlags {
	return socketFlags{
		fs:     fs,
		file:   fs.String("config", config.DefaultFile, "configuration file of the running thermostat (for control_socket)"),
		socket: fs.String("control-socket", config.DefaultControlSocket, "the running thermostat's control socket"),
	}
}

// path returns the socket: the flag when given, else the config file's
// control_socket, else the default.
func (s socketFlags) path() (string, error) {
	given := map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if given["control-socket"] {
		return *s.socket, nil
	}
	cfg, err := config.Load(*s.file, given["config"])
	if err != nil {
		return "", err
	}
	return cfg.ControlSocket, nil
}

func setCmd(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("set", "thermostat set [--setpoint C] [--mode off|heat|cool|auto] [--preset NAME] [--schedule FILE] [--schedule-enabled true|false] [--control-socket PATH]", stderr)
	sock := addSocketFlags(fs)
	setpoint := fs.Float64("setpoint", 0, "setpoint in °C, 5.0 to 35.0 (rounded to 0.1); holds until the schedule's next entry")
	mode := fs.String("mode", "", "mode: off, heat, cool or auto")
	preset := fs.String("preset", "", "preset: a name of the presets (home, away, eco, sleep, comfort by default), or none")
	schedFile := fs.String("schedule", "", "week program `FILE` (YAML or JSON; see README, \"Week program\")")
	schedOn := fs.String("schedule-enabled", "", "true or false: run or stop the week program (disabling leaves the setpoint where it is)")
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	changes := map[string]any{}
	var scheduleEnabled *bool
	var err error
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "setpoint":
			changes[protocol.PropSetpoint] = *setpoint
		case "mode":
			changes[protocol.PropMode] = *mode
		case "preset":
			changes[protocol.PropPreset] = *preset
		case "schedule":
			var s protocol.Schedule
			if s, err = schedfile.Load(*schedFile); err == nil {
				changes[protocol.PropSchedule] = s
			}
		case "schedule-enabled":
			b, perr := strconv.ParseBool(*schedOn)
			if perr != nil {
				err = cli.Usagef("set: --schedule-enabled %q: want true or false", *schedOn)
			}
			scheduleEnabled = &b
		}
	})
	if err != nil {
		return fmt.Errorf("set: %w", err)
	}
	if len(changes) == 0 && scheduleEnabled == nil {
		fs.Usage()
		return cli.Usagef("set: give --setpoint, --mode, --preset, --schedule or --schedule-enabled")
	}
	// Checked here too so a value JSON cannot carry (NaN) gets the reason.
	for name, v := range changes {
		if _, err := protocol.Normalize(name, v); err != nil {
			return fmt.Errorf("set: %w", err)
		}
	}
	path, err := sock.path()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), localTimeout)
	defer cancel()
	if scheduleEnabled != nil {
		// The schedule is one register: enabling it writes it whole, the
		// one given here or the one the thermostat holds.
		s, ok := changes[protocol.PropSchedule].(protocol.Schedule)
		if !ok {
			if s, err = runningSchedule(ctx, path); err != nil {
				return fmt.Errorf("set: %w", err)
			}
		}
		s.Enabled = *scheduleEnabled
		changes[protocol.PropSchedule] = s
	}
	resp, err := localctl.Do(ctx, path, localctl.Request{Op: localctl.OpSet, Set: changes})
	if err != nil {
		return fmt.Errorf("set: %w", err)
	}
	var st struct {
		Effective map[string]any `json:"effective"`
		Connected bool           `json:"connected"`
		Rejoining bool           `json:"rejoining"`
	}
	if err := json.Unmarshal(resp.Status, &st); err != nil {
		return fmt.Errorf("set: the agent's status: %w", err)
	}
	fmt.Fprintf(stdout, "setpoint_c %v, mode %v", st.Effective[protocol.PropSetpoint], st.Effective[protocol.PropMode])
	if p, ok := st.Effective[protocol.PropPreset]; ok {
		fmt.Fprintf(stdout, ", preset %v", p)
	}
	if s, ok := st.Effective[protocol.PropSchedule].(map[string]any); ok {
		fmt.Fprintf(stdout, ", schedule enabled %v", s["enabled"])
	}
	fmt.Fprint(stdout, ": saved")
	switch {
	case st.Rejoining:
		fmt.Fprintln(stdout, "; sent when the device has caught up with the controller")
	case st.Connected:
		fmt.Fprintln(stdout, " and sent to the controller")
	default:
		fmt.Fprintln(stdout, "; the broker is unreachable, sent when it is back")
	}
	return nil
}

// runningSchedule is the schedule the running thermostat holds.
func runningSchedule(ctx context.Context, path string) (protocol.Schedule, error) {
	resp, err := localctl.Do(ctx, path, localctl.Request{Op: localctl.OpStatus})
	if err != nil {
		return protocol.Schedule{}, err
	}
	var st struct {
		Props protocol.Props `json:"props"`
	}
	if err := json.Unmarshal(resp.Status, &st); err != nil {
		return protocol.Schedule{}, fmt.Errorf("the agent's status: %w", err)
	}
	s, ok := st.Props.Schedule()
	if !ok {
		return protocol.Schedule{}, errors.New("the thermostat has no schedule to enable or disable: give one with --schedule FILE")
	}
	return s, nil
}

func statusCmd(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("status", "thermostat status [--control-socket PATH]", stderr)
	sock := addSocketFlags(fs)
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	path, err := sock.path()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), localTimeout)
	defer cancel()
	resp, err := localctl.Do(ctx, path, localctl.Request{Op: localctl.OpStatus})
	if err != nil {
		// No agent to ask: say what the service manager knows instead, so
		// `thermostat status` answers "is it running?" either way.
		svc, serr := svcctl.Status(svcctl.Thermostat.Name)
		if serr != nil {
			svc = serr.Error()
		}
		return fmt.Errorf("status: %w\n(%s)", err, svc)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, resp.Status, "", "  "); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	out.WriteByte('\n')
	_, err = stdout.Write(out.Bytes())
	return err
}
