package agent

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/thermofleet/thermo/firmware/schedule"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/protocol"
)

// scheduler runs the week program on the device, so it keeps working
// with the network gone. It is owned by the Run goroutine, except next,
// which telemetry and Status read.
type scheduler struct {
	clock hal.Clock
	zone  *time.Location // the board's own zone, for a schedule without tz
	timer hal.Timer      // fires at the next entry
	locs  map[string]*time.Location
	next  atomic.Pointer[protocol.Next]
	// basis is what the armed timer was computed from (the stamps of the
	// schedule and the presets, the last entry applied): checkSchedule
	// runs after everything the agent does, and while none of it changed
	// and the timer has not fired there is nothing to compute.
	basis string
}

// location returns the schedule's zone, loaded once per name.
func (s *scheduler) location(sch protocol.Schedule) (*time.Location, error) {
	if sch.TZ == "" {
		return s.zone, nil
	}
	if loc, ok := s.locs[sch.TZ]; ok {
		return loc, nil
	}
	loc, err := sch.Location(s.zone)
	if err != nil {
		return nil, err
	}
	if s.locs == nil {
		s.locs = map[string]*time.Location{}
	}
	s.locs[sch.TZ] = loc
	return loc, nil
}

func (s *scheduler) stop() {
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.basis = ""
	s.next.Store(nil)
}

// checkSchedule applies the schedule's entry in force unless it is the
// one applied last, and arms the timer for the next entry. It is safe to
// call at any moment, and is called after everything the agent does: at
// start (a board that was off across an entry catches up), after a write
// of the schedule or its enabling (a new entry in force takes effect at
// once), and when the timer fires. A write by anyone else holds until the
// next entry, because the entry in force is then still the last applied.
func (a *Agent) checkSchedule() {
	s := &a.sched
	if a.dev.Rejoining() || a.storage.failing {
		// What the controller holds may still replace the schedule, and a
		// write that cannot be saved is refused: decide once both are past.
		s.stop()
		return
	}
	props := a.dev.Props()
	basis := fmt.Sprint(props[protocol.PropSchedule].W, props[protocol.PropPresets].W, a.dev.ScheduleLast())
	if s.timer != nil && basis == s.basis {
		return
	}
	eff := a.dev.Effective()
	sch, ok := eff[protocol.PropSchedule].(protocol.Schedule)
	if !ok || !sch.Enabled {
		s.stop()
		return
	}
	loc, err := s.location(sch)
	if err != nil {
		a.log.Warn("schedule not run: its zone is unknown on this board", "tz", sch.TZ, "err", err)
		s.stop()
		return
	}
	now := s.clock.Now()
	if occ, ok := schedule.InForce(sch, loc, now); ok && occ.Key() != a.dev.ScheduleLast() {
		a.applyEntry(occ)
		eff = a.dev.Effective()
	}
	next, ok := schedule.Next(sch, loc, now)
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if !ok {
		s.next.Store(nil)
		return
	}
	s.timer = s.clock.NewTimer(next.Time.Sub(now))
	s.basis = fmt.Sprint(props[protocol.PropSchedule].W, props[protocol.PropPresets].W, a.dev.ScheduleLast())
	n := &protocol.Next{At: next.Time.UTC()}
	if next.Entry.SetpointC != nil {
		n.SetpointC = *next.Entry.SetpointC
	} else {
		t, ok := protocol.PresetsIn(eff)[next.Entry.Preset]
		if !ok {
			// A preset not (yet) defined: nothing to announce; the entry
			// is skipped when it comes unless a presets write defines it.
			s.next.Store(nil)
			return
		}
		n.SetpointC, n.Preset = t, next.Entry.Preset
	}
	s.next.Store(n)
}

// applyEntry writes the occurrence's setpoint or preset as a device event
// with src "schedule", and remembers it as the last applied.
func (a *Agent) applyEntry(occ schedule.Occurrence) {
	changes := map[string]any{}
	if occ.Entry.SetpointC != nil {
		changes[protocol.PropSetpoint] = *occ.Entry.SetpointC
	} else {
		changes[protocol.PropPreset] = occ.Entry.Preset
	}
	m, werr := a.dev.ScheduleWrite(occ.Key(), changes)
	if err := a.after(m); err != nil {
		a.log.Warn("schedule entry not applied: the state cannot be saved; tried again once it can", "entry", occ.String(), "err", err)
		return
	}
	if werr != nil {
		a.log.Warn("schedule entry skipped", "entry", occ.String(), "err", werr)
		return
	}
	a.log.Info("schedule entry applied", "entry", occ.String(), "vc", a.dev.Clock())
}

// Next returns the schedule's next entry, or nil while it is disabled or
// has none.
func (a *Agent) Next() *protocol.Next { return a.sched.next.Load() }
