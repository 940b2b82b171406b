package fleet

import (
	"context"
	"slices"
	"strings"

	"github.com/thermofleet/thermo/protocol"
)

// RaiseAlert records a condition of device id that only the controller can
// see (see protocol.AlertCodes). It never blocks; a device not yet known is
// recorded. The first raise of a code is logged at ERROR.
func (f *Fleet) RaiseAlert(id, code, detail string) {
	if err := protocol.CheckDeviceID(id); err != nil {
		// A controller's certificate (a broker sees those too) is not a
		// device: the log is its only place.
		f.log.Error("alert about a client that is no device", "client", id, "alert", code, "detail", detail, "reason", err)
		return
	}
	f.q.Push(func(context.Context) {
		rec := f.record(id)
		i := slices.IndexFunc(rec.Raised, func(a protocol.Alert) bool { return a.Code == code })
		if i < 0 {
			f.log.Error("device alert raised", "device", id, "alert", code, "detail", detail)
			rec.Raised = append(rec.Raised, protocol.Alert{Code: code, Since: f.opts.Now().UTC(), Detail: detail})
			slices.SortFunc(rec.Raised, byCode)
		} else {
			rec.Raised[i].Detail = detail
		}
		f.dirty[id] = true
		f.touch(id)
	})
}

// ClearAlert removes a condition RaiseAlert recorded.
func (f *Fleet) ClearAlert(id, code string) {
	f.q.Push(func(context.Context) {
		rec, ok := f.recs[id]
		if !ok {
			return
		}
		n := len(rec.Raised)
		rec.Raised = slices.DeleteFunc(rec.Raised, func(a protocol.Alert) bool { return a.Code == code })
		if len(rec.Raised) != n {
			f.log.Info("device alert cleared", "device", id, "alert", code)
			f.dirty[id] = true
			f.touch(id)
		}
	})
}

// reported turns the codes a telemetry payload carries into alerts, each
// keeping the time the controller first saw it.
func (f *Fleet) reported(id string, old []protocol.Alert, codes []string) []protocol.Alert {
	var out []protocol.Alert
	for _, code := range codes {
		if slices.ContainsFunc(out, func(a protocol.Alert) bool { return a.Code == code }) {
			continue
		}
		i := slices.IndexFunc(old, func(a protocol.Alert) bool { return a.Code == code })
		if i >= 0 {
			out = append(out, old[i])
			continue
		}
		f.log.Warn("device reports an alert", "device", id, "alert", code)
		out = append(out, protocol.Alert{Code: code, Since: f.opts.Now().UTC(), Detail: "reported by the device"})
	}
	slices.SortFunc(out, byCode)
	return out
}

func byCode(a, b protocol.Alert) int { return strings.Compare(a.Code, b.Code) }

// mergeAlerts is what readers see: both lists by code, the earlier since
// where both have a code. Never nil.
func mergeAlerts(reported, raised []protocol.Alert) []protocol.Alert {
	out := make([]protocol.Alert, 0, len(reported)+len(raised))
	out = append(out, raised...)
	for _, a := range reported {
		i := slices.IndexFunc(out, func(b protocol.Alert) bool { return b.Code == a.Code })
		switch {
		case i < 0:
			out = append(out, a)
		case a.Since.Before(out[i].Since):
			out[i].Since = a.Since
		}
	}
	slices.SortFunc(out, byCode)
	return out
}
