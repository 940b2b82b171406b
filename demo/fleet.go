package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/firmware/localctl"
	"github.com/thermofleet/thermo/internal/holdproxy"
	"github.com/thermofleet/thermo/protocol"
)

// devices of the demo; the first one plays the conflict.
var devices = []string{"d1", "d2", "d3"}

type demoFleet struct {
	opts  options
	dir   string
	out   io.Writer
	procs []*proc
	proxy *holdproxy.Proxy
	api   *api.Client
	http  string
	mqtt  string
}

func (f *demoFleet) bin(name string) string { return filepath.Join(f.opts.bin, name) }
func (f *demoFleet) pki(parts ...string) string {
	return filepath.Join(append([]string{f.dir, "pki"}, parts...)...)
}
func (f *demoFleet) socket(id string) string { return filepath.Join(f.dir, id, "control.sock") }

func (f *demoFleet) printf(format string, args ...any) { fmt.Fprintf(f.out, format, args...) }

// start issues the PKI and starts the controller and the thermostats.
func (f *demoFleet) start(ctx context.Context) error {
	f.printf("Thermostat fleet demo (work directory %s)\n\n", f.dir)
	cl := f.bin("controllerlite")
	pkiDir := "--dir=" + f.pki()
	steps := [][]string{
		{cl, "pki", "init", pkiDir},
		{cl, "pki", "server", "--host", "localhost", "--host", "127.0.0.1", pkiDir},
	}
	for _, id := range devices {
		steps = append(steps, []string{cl, "pki", "device", id, pkiDir})
	}
	for _, s := range steps {
		if _, err := f.command(ctx, s...); err != nil {
			return err
		}
	}
	f.printf("PKI          controllerlite pki init / server --host localhost / device %s\n", strings.Join(devices, ", device "))

	_, out, err := f.spawn("controllerlite", cl, "serve",
		"--ca", f.pki("ca.crt"), "--cert", f.pki("server.crt"), "--key", f.pki("server.key"),
		"--data-dir", filepath.Join(f.dir, "controller"),
		"--listen", "127.0.0.1:0", "--http", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ch := lines(out)
	if f.mqtt, err = waitLine(ctx, ch, "controllerlite: mqtt broker listening on"); err != nil {
		return err
	}
	if f.http, err = waitLine(ctx, ch, "controllerlite: http listening on"); err != nil {
		return err
	}
	go func() {
		for range ch {
		}
	}()
	if f.api, err = api.NewClient(f.http, ""); err != nil {
		return err
	}
	_, port, err := net.SplitHostPort(f.mqtt)
	if err != nil {
		return fmt.Errorf("broker address %q: %w", f.mqtt, err)
	}
	f.printf("controller   controllerlite serve: embedded broker mqtts://localhost:%s, HTTP API http://%s\n", port, f.http)
	f.printf("dashboard: http://%s/\n", f.http)

	// d1 reaches the broker through a proxy that can hold its traffic.
	if f.proxy, err = holdproxy.Listen("127.0.0.1:0", net.JoinHostPort("127.0.0.1", port)); err != nil {
		return err
	}
	for i, id := range devices {
		brokerPort := port
		if i == 0 {
			_, brokerPort, _ = net.SplitHostPort(f.proxy.Addr().String())
		}
		bundle := f.pki("devices", id)
		if _, _, err := f.spawn(id, f.bin("thermostat"), "run", "--hal", "sim",
			"--sim-speed", fmt.Sprint(f.opts.speed),
			"--broker", "mqtts://localhost:"+brokerPort,
			"--ca", filepath.Join(bundle, "ca.crt"), "--cert", filepath.Join(bundle, "device.crt"), "--key", filepath.Join(bundle, "device.key"),
			"--state-dir", filepath.Join(f.dir, id), "--control-socket", f.socket(id),
			"--telemetry-interval", "5s"); err != nil {
			return err
		}
	}
	f.printf("thermostats  %s: thermostat run --hal sim (simulated rooms at %gx speed); %s talks through a proxy that can hold its traffic\n\n",
		strings.Join(devices, ", "), f.opts.speed, devices[0])

	return poll(ctx, "waiting for every thermostat to come online", 60*time.Second, func() (bool, error) {
		ds, err := f.api.Devices(ctx)
		if err != nil {
			return false, err
		}
		online := 0
		for _, d := range ds {
			if d.Online {
				online++
			}
		}
		for _, id := range devices {
			st, err := f.device(ctx, id)
			if err != nil || st.Rejoining || !st.Connected {
				return false, err
			}
		}
		return online == len(devices), nil
	})
}

// device reads a thermostat's status over its control socket, as
// `thermostat status` does.
func (f *demoFleet) device(ctx context.Context, id string) (agent.Status, error) {
	resp, err := localctl.Do(ctx, f.socket(id), localctl.Request{Op: localctl.OpStatus})
	if err != nil {
		return agent.Status{}, err
	}
	var st agent.Status
	if err := json.Unmarshal(resp.Status, &st); err != nil {
		return agent.Status{}, fmt.Errorf("status of %s: %w", id, err)
	}
	return st, nil
}

func (f *demoFleet) controller(ctx context.Context, id string) (fleet.Device, error) {
	return f.api.Device(ctx, id)
}

// runUntilInterrupted prints the fleet now and then until Ctrl-C.
func (f *demoFleet) runUntilInterrupted(ctx context.Context) error {
	f.printf("\nThe fleet keeps running. Controller HTTP API: http://%s\n", f.http)
	f.printf("dashboard: http://%s/ (open it in a browser)\n", f.http)
	f.printf("  %s devices --http %s\n", f.bin("controllerlite"), f.http)
	f.printf("  %s set --http %s d2 --setpoint 21 --mode heat\n", f.bin("controllerlite"), f.http)
	f.printf("  %s set --control-socket %s --setpoint 22.5\n", f.bin("thermostat"), f.socket("d3"))
	// One room cooling beside the heated ones, so both relays show.
	if _, err := f.api.Set(ctx, "d2", map[string]any{protocol.PropMode: protocol.ModeCool, protocol.PropSetpoint: 16.0}); err != nil {
		return fmt.Errorf("set d2 to cool: %w", err)
	}
	f.printf("d2 set to cool at 16 °C (controllerlite set d2 --mode cool --setpoint 16); d1 and d3 heat.\n")
	f.printf("Press Ctrl-C to stop.\n\n")
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		f.printRooms(ctx)
		select {
		case <-ctx.Done():
			f.printf("\nStopping.\n")
			return nil
		case <-t.C:
		}
	}
}

// printRooms prints one line per thermostat: the simulated room, the
// setpoint and mode in force, and the relays.
func (f *demoFleet) printRooms(ctx context.Context) {
	var parts []string
	for _, id := range devices {
		st, err := f.device(ctx, id)
		if err != nil {
			parts = append(parts, id+": "+err.Error())
			continue
		}
		temp := "  -  "
		if st.TempC != nil {
			temp = fmt.Sprintf("%5.2f", *st.TempC)
		}
		relay := "idle"
		switch {
		case st.Outputs.Heat:
			relay = "HEAT"
		case st.Outputs.Cool:
			relay = "COOL"
		}
		parts = append(parts, fmt.Sprintf("%s %s°C (%v %v) %s", id, temp, st.Effective[protocol.PropSetpoint], st.Effective[protocol.PropMode], relay))
	}
	f.printf("%s  %s\n", time.Now().Format("15:04:05"), strings.Join(parts, " | "))
}
