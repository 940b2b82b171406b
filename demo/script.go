package main

import (
	"context"
	"fmt"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// script plays the conflict of PROTOCOL.md's worked example on the first
// device over the real fleet, checking every outcome it prints.
func (f *demoFleet) script(ctx context.Context) error {
	id := devices[0]
	// Give the other rooms something to do: one cools, one heats.
	if _, err := f.api.Set(ctx, devices[1], map[string]any{protocol.PropSetpoint: 18.0, protocol.PropMode: protocol.ModeCool}); err != nil {
		return err
	}
	if _, err := f.api.Set(ctx, devices[2], map[string]any{protocol.PropSetpoint: 23.0, protocol.PropMode: protocol.ModeHeat}); err != nil {
		return err
	}

	f.printf("The worked example's conflict, played on %s. Clocks are [c, d]: c counts controller events, d device events.\n\n", id)
	f.printf("%-7s %-78s %-10s %-10s %s\n", "step", "what happens", "controller", id, "setpoint_c controller / "+id)
	row := func(step, what string) error {
		c, err := f.controller(ctx, id)
		if err != nil {
			return err
		}
		d, err := f.device(ctx, id)
		if err != nil {
			return err
		}
		cs, _ := c.Props.Setpoint()
		ds, _ := d.Props.Setpoint()
		f.printf("%-7s %-78s %-10s %-10s %v / %v\n", step, what, c.VC, d.VC, cs, ds)
		return nil
	}
	if err := row("start", "both sides agree"); err != nil {
		return err
	}

	f.proxy.Hold()
	if err := row("", "hold "+id+"'s traffic: what either side sends now waits in flight"); err != nil {
		return err
	}
	c, err := f.api.Set(ctx, id, map[string]any{protocol.PropSetpoint: 18.0})
	if err != nil {
		f.proxy.Release()
		return err
	}
	ctlStamp := c.Props[protocol.PropSetpoint].W
	if err := row("T1,T2", fmt.Sprintf("a remote user sets 18 at the controller; Command sent, stamp %v", ctlStamp)); err != nil {
		f.proxy.Release()
		return err
	}
	if _, err := f.command(ctx, f.bin("thermostat"), "set", "--control-socket", f.socket(id), "--setpoint", "23"); err != nil {
		f.proxy.Release()
		return err
	}
	d, err := f.device(ctx, id)
	if err != nil {
		f.proxy.Release()
		return err
	}
	devStamp := d.Props[protocol.PropSetpoint].W
	if err := row("T'1,T'2", fmt.Sprintf("a person sets 23 on %s (thermostat set); Event sent, stamp %v", id, devStamp)); err != nil {
		f.proxy.Release()
		return err
	}
	order := ctlStamp.Compare(devStamp)
	// The row shows the clocks as the messages are let go: read after the
	// release, it would race their delivery and print either.
	err = row("", fmt.Sprintf("release: both messages cross; stamps %v and %v are %v", ctlStamp, devStamp, order))
	f.proxy.Release()
	if err != nil {
		return err
	}
	if order != protocol.Concurrent {
		return fmt.Errorf("the writes were not concurrent (%v vs %v): nothing to settle", ctlStamp, devStamp)
	}

	// Both receive: the device keeps its own value, the controller takes it.
	err = poll(ctx, "waiting for both sides to settle the conflict", 30*time.Second, func() (bool, error) {
		c, err := f.controller(ctx, id)
		if err != nil {
			return false, err
		}
		d, err := f.device(ctx, id)
		if err != nil {
			return false, err
		}
		cs, _ := c.Props.Setpoint()
		ds, _ := d.Props.Setpoint()
		return cs == 23 && ds == 23 && d.VC[protocol.ControllerIdx] >= ctlStamp[protocol.ControllerIdx] && c.VC[protocol.DeviceIdx] >= devStamp[protocol.DeviceIdx], nil
	})
	if err != nil {
		return err
	}
	if err := row("recv", id+" discards 18 (concurrent: the device's write wins); the controller takes 23"); err != nil {
		return err
	}

	c, err = f.api.Set(ctx, id, map[string]any{protocol.PropSetpoint: 18.0})
	if err != nil {
		return err
	}
	again := c.Props[protocol.PropSetpoint].W
	if err := row("T3", fmt.Sprintf("the remote user sets 18 again; stamp %v dominates %v", again, devStamp)); err != nil {
		return err
	}
	err = poll(ctx, "waiting for "+id+" to apply the new setpoint", 30*time.Second, func() (bool, error) {
		d, err := f.device(ctx, id)
		if err != nil {
			return false, err
		}
		c, err := f.controller(ctx, id)
		if err != nil {
			return false, err
		}
		ds, _ := d.Props.Setpoint()
		return ds == 18 && c.VC[protocol.DeviceIdx] >= d.VC[protocol.DeviceIdx], nil
	})
	if err != nil {
		return err
	}
	if err := row("recv", id+" applies 18 and reports it; both sides agree"); err != nil {
		return err
	}
	f.printf("\nThe device's concurrent write won on both sides; the controller's later write, which had seen it, then replaced it.\n")
	return nil
}
