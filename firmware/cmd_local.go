package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/localctl"
	"github.com/thermofleet/thermo/internal/cli"
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
	fs := cli.NewFlags("set", "thermostat set [--setpoint C] [--mode off|heat|cool|auto] [--control-socket PATH]", stderr)
	sock := addSocketFlags(fs)
	setpoint := fs.Float64("setpoint", 0, "setpoint in °C, 5.0 to 35.0 (rounded to 0.1)")
	mode := fs.String("mode", "", "mode: off, heat, cool or auto")
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	changes := map[string]any{}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "setpoint":
			changes[protocol.PropSetpoint] = *setpoint
		case "mode":
			changes[protocol.PropMode] = *mode
		}
	})
	if len(changes) == 0 {
		fs.Usage()
		return cli.Usagef("set: give --setpoint, --mode or both")
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
	fmt.Fprintf(stdout, "setpoint_c %v, mode %v: saved", st.Effective[protocol.PropSetpoint], st.Effective[protocol.PropMode])
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
