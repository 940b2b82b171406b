package e2e

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// badMessage is a clocked message (Command or Event) that breaks a rule of
// PROTOCOL.md "Bad input". vc is a clock ahead of the receiver's, so that
// a message that was wrongly accepted would show in the receiver's clock.
type badMessage struct {
	name    string
	payload func(vc protocol.Clock) string
	// reason is part of the logged reason.
	reason string
	// props lists the properties rejected alone; none means the message
	// is rejected whole.
	props []string
	// applies is what the rest of a message with a rejected property sets.
	applies map[string]any
}

// js renders a clock as JSON.
func js(c protocol.Clock) string { return fmt.Sprintf("[%d,%d]", c[0], c[1]) }

var badMessages = []badMessage{
	// Rejected whole: nothing changes, the clock included.
	{name: "not JSON", reason: "not a JSON object", payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":`
	}},
	{name: "not an object", reason: "not a JSON object", payload: func(vc protocol.Clock) string {
		return `[1,` + js(vc) + `]`
	}},
	{name: "data after the object", reason: "data after the JSON object", payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":{}} {"v":1}`
	}},
	{name: "not UTF-8", reason: "not UTF-8", payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":{},"src":"` + "\xff\xfe" + `"}`
	}},
	{name: "oversized", reason: "over the 4096 byte limit", payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":{"setpoint_c":{"val":30,"w":` + js(vc) + `}},"pad":"` + strings.Repeat("x", 4100) + `"}`
	}},
	{name: "no v", reason: "no v", payload: func(vc protocol.Clock) string {
		return `{"vc":` + js(vc) + `,"props":{"setpoint_c":{"val":30,"w":` + js(vc) + `}}}`
	}},
	{name: "another v", reason: "v is 2, want 1", payload: func(vc protocol.Clock) string {
		return `{"v":2,"vc":` + js(vc) + `,"props":{"setpoint_c":{"val":30,"w":` + js(vc) + `}}}`
	}},
	{name: "no vc", reason: "no vc", payload: func(protocol.Clock) string {
		return `{"v":1,"props":{"setpoint_c":{"val":30,"w":[0,0]}}}`
	}},
	{name: "counter written 2.0", reason: "is not a non-negative integer", payload: func(vc protocol.Clock) string {
		return fmt.Sprintf(`{"v":1,"vc":[%d.0,%d],"props":{}}`, vc[0], vc[1])
	}},
	{name: "negative counter", reason: "is not a non-negative integer", payload: func(vc protocol.Clock) string {
		return fmt.Sprintf(`{"v":1,"vc":[-1,%d],"props":{}}`, vc[1])
	}},
	{name: "three counters", reason: "3 elements, want 2", payload: func(vc protocol.Clock) string {
		return fmt.Sprintf(`{"v":1,"vc":[%d,%d,1],"props":{}}`, vc[0], vc[1])
	}},
	{name: "controller counter 2^53-1", reason: "over the largest counter", payload: func(vc protocol.Clock) string {
		return fmt.Sprintf(`{"v":1,"vc":[9007199254740991,%d],"props":{}}`, vc[1])
	}},
	{name: "device counter 2^53-1", reason: "over the largest counter", payload: func(vc protocol.Clock) string {
		return fmt.Sprintf(`{"v":1,"vc":[%d,9007199254740991],"props":{}}`, vc[0])
	}},
	{name: "counter one above 2^52", reason: "over the largest counter", payload: func(vc protocol.Clock) string {
		return fmt.Sprintf(`{"v":1,"vc":[4503599627370497,%d],"props":{}}`, vc[1])
	}},
	// Within the bound, but it would leave the receiver no events of its
	// own to count: refused whole all the same (PROTOCOL.md "Why 2^52").
	{name: "receiver's own counter pushed to the bound", reason: "clock exhausted", payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":[4503599627370496,4503599627370496],"props":{"setpoint_c":{"val":30,"w":[4503599627370496,4503599627370496]}}}`
	}},
	{name: "props not an object", reason: "props is not an object", payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":[{"setpoint_c":30}]}`
	}},

	// A bad property is rejected alone: the message still counts as a
	// receive (its clock is merged), and the rest of it applies.
	{name: "setpoint out of range", reason: "out of range 5.0 to 35.0", props: []string{"setpoint_c"}, payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":{"setpoint_c":{"val":99,"w":` + js(vc) + `}}}`
	}},
	{name: "setpoint not a number", reason: "must be a number", props: []string{"setpoint_c"}, payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":{"setpoint_c":{"val":"hot","w":` + js(vc) + `}}}`
	}},
	{name: "stamp over the bound", reason: "over the largest counter", props: []string{"setpoint_c"}, payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":{"setpoint_c":{"val":25,"w":[4503599627370497,0]}}}`
	}},
	{name: "stamp beyond the message clock", reason: "beyond the message clock", props: []string{"setpoint_c"}, payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":{"setpoint_c":{"val":25,"w":` + js(protocol.Clock{vc[0] + 1, vc[1] + 1}) + `}}}`
	}},
	{name: "stamp not two integers", reason: "1 elements, want 2", props: []string{"setpoint_c"}, payload: func(vc protocol.Clock) string {
		return `{"v":1,"vc":` + js(vc) + `,"props":{"setpoint_c":{"val":25,"w":[1]}}}`
	}},
	{name: "mode out of range beside a good setpoint", reason: "is not one of off, heat, cool, auto", props: []string{"mode"},
		applies: map[string]any{protocol.PropSetpoint: 26.5},
		payload: func(vc protocol.Clock) string {
			return `{"v":1,"vc":` + js(vc) + `,"props":{"mode":{"val":"warm","w":` + js(vc) + `},"setpoint_c":{"val":26.5,"w":` + js(vc) + `}}}`
		}},
}

// applied returns props with the values of m.applies stamped w.
func (m badMessage) applied(props protocol.Props, w protocol.Clock) protocol.Props {
	out := maps.Clone(props)
	for k, v := range m.applies {
		out[k] = protocol.Prop{Val: v, W: w}
	}
	return out
}

// TestBadEventsRejected: events that break the rules, published by a
// client holding a valid device certificate on that device's own event
// topic, are rejected by the controller with the reason logged and
// counted, and change nothing (a bad property alone is left out, the rest
// of its message applies).
func TestBadEventsRejected(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newWorld(t, kind)
		const topic = "thermo/d9/event"
		d9 := w.pki.Connect(t, w.brokerURL(), "d9")
		d9.Publish(t, topic, 1, false, []byte(`{"v":1,"vc":[0,1],"props":{"setpoint_c":{"val":21,"w":[0,1]},"mode":{"val":"heat","w":[0,1]}},"src":"local"}`))
		eventually(t, "the controller to take d9's first event", func() (bool, string) {
			c, err := w.ctl("d9")
			return err == nil && c.VC == protocol.Clock{1, 1}, fmt.Sprintf("%+v %v", c, err)
		})

		fl := w.srv.Fleet()
		for _, tc := range badMessages {
			t.Run(tc.name, func(t *testing.T) {
				before, counts, mark := w.mustCtl("d9"), fl.Status(), w.logs.mark()
				vc := protocol.Clock{before.VC[ctlSide], before.VC[devSide] + 10}
				d9.Publish(t, topic, 1, false, []byte(tc.payload(vc)))
				if tc.props == nil {
					// The reason is logged and the rejection counted; after
					// that nothing of the message is left to happen.
					w.logs.wait(t, mark, "who=controller", `msg="message rejected"`, "topic="+topic, tc.reason)
					eventually(t, "the rejection to be counted", func() (bool, string) {
						got := fl.Status()
						return got.Rejected == counts.Rejected+1 && got.PropsRejected == counts.PropsRejected, fmt.Sprintf("%+v", got)
					})
					if after := w.mustCtl("d9"); after.VC != before.VC || !sameProps(after.Props, before.Props) {
						t.Errorf("d9 changed from %v %v to %v %v", before.VC, before.Props, after.VC, after.Props)
					}
					return
				}
				for _, p := range tc.props {
					w.logs.wait(t, mark, "who=controller", `msg="property rejected"`, "topic="+topic, "property="+p, tc.reason)
				}
				// The message is a receive: the clocks merge and the
				// controller ticks; only the good properties apply.
				wantVC, wantProps := receive(before.VC, vc, ctlSide), tc.applied(before.Props, vc)
				eventually(t, "the rest of the message to apply", func() (bool, string) {
					after, got := w.mustCtl("d9"), fl.Status()
					return after.VC == wantVC && sameProps(after.Props, wantProps) &&
							got.PropsRejected == counts.PropsRejected+uint64(len(tc.props)) && got.Rejected == counts.Rejected,
						fmt.Sprintf("clock %v props %v counters %+v; want clock %v props %v, %d more properties rejected",
							after.VC, after.Props, got, wantVC, wantProps, len(tc.props))
				})
			})
		}

		// Unclocked messages are checked too.
		for _, tc := range []struct{ name, kind, payload, reason string }{
			{"telemetry not JSON", "telemetry", `{"v":1,"ts":`, "telemetry"},
			{"status online not a boolean", "status", `{"v":1,"online":"yes"}`, "status"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before, counts, mark := w.mustCtl("d9"), fl.Status(), w.logs.mark()
				topic := "thermo/d9/" + tc.kind
				d9.Publish(t, topic, 1, false, []byte(tc.payload))
				w.logs.wait(t, mark, "who=controller", `msg="message rejected"`, "topic="+topic)
				if got := fl.Status(); got.Rejected != counts.Rejected+1 {
					t.Errorf("rejected counter %d, want %d", got.Rejected, counts.Rejected+1)
				}
				after := w.mustCtl("d9")
				if after.VC != before.VC || after.Online != before.Online || string(after.Telemetry) != string(before.Telemetry) {
					t.Errorf("d9 changed: %+v, was %+v", after, before)
				}
			})
		}
	})
}

// TestBadCommandsRejected: commands that break the rules, published as the
// controller on a thermostat's cmd topic, are rejected by the thermostat
// with the reason logged and counted, and change nothing. The controller
// here is a test client (there can be only one client with its
// certificate), so the brokers run alone: the embedded one as
// controllerlite embeds it, and Mosquitto.
func TestBadCommandsRejected(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		w.startBareBroker()
		ctl := w.pki.Connect(t, w.brokerURL(), protocol.ControllerID)
		ctl.Subscribe(t, "thermo/d1/#", 1)
		d1 := w.newThermostat("d1", thermostatOptions{})
		d1.start()

		// The controller's greeting: a live Command ends d1's rejoin; d1
		// receives it ([1,1]) and sends its first Event ([1,2]).
		ctl.WaitPayload(t, "thermo/d1/status", `{"v":1,"online":true}`)
		ctl.Publish(t, "thermo/d1/cmd", 1, false, []byte(`{"v":1,"vc":[1,0],"props":{},"src":"controller"}`))
		eventually(t, "d1 to finish its rejoin", func() (bool, string) {
			st := d1.status()
			return !st.Rejoining && st.VC == protocol.Clock{1, 2}, fmt.Sprintf("%v rejoining=%v", st.VC, st.Rejoining)
		})

		const topic = "thermo/d1/cmd"
		for _, tc := range badMessages {
			t.Run(tc.name, func(t *testing.T) {
				before, mark := d1.status(), w.logs.mark()
				vc := protocol.Clock{before.VC[ctlSide] + 10, before.VC[devSide]}
				ctl.Publish(t, topic, 1, false, []byte(tc.payload(vc)))
				was := before.Counters
				if tc.props == nil {
					w.logs.wait(t, mark, "who=d1", `msg="message rejected"`, "topic="+topic, tc.reason)
					eventually(t, "the rejection to be counted", func() (bool, string) {
						got := d1.status().Counters
						return got.Rejected == was.Rejected+1 && got.RejectedProps == was.RejectedProps, fmt.Sprintf("%+v", got)
					})
					if after := d1.status(); after.VC != before.VC || !sameProps(after.Props, before.Props) {
						t.Errorf("d1 changed from %v %v to %v %v", before.VC, before.Props, after.VC, after.Props)
					}
					return
				}
				for _, p := range tc.props {
					w.logs.wait(t, mark, "who=d1", `msg="property rejected"`, "topic="+topic, "property="+p, tc.reason)
				}
				// A receive; and a Command that changed a property is
				// answered with an Event (a send), one that changed nothing
				// is not.
				wantVC, wantProps := receive(before.VC, vc, devSide), tc.applied(before.Props, vc)
				if len(tc.applies) > 0 {
					wantVC = tick(wantVC, devSide)
				}
				eventually(t, "the rest of the command to apply", func() (bool, string) {
					after := d1.status()
					got := after.Counters
					return after.VC == wantVC && sameProps(after.Props, wantProps) &&
							got.RejectedProps == was.RejectedProps+uint64(len(tc.props)) && got.Rejected == was.Rejected,
						fmt.Sprintf("clock %v props %v counters %+v; want clock %v props %v, %d more properties rejected",
							after.VC, after.Props, got, wantVC, wantProps, len(tc.props))
				})
				if len(tc.applies) > 0 {
					ctl.WaitMatch(t, "d1's event about the applied property", func(m testenv.Message) bool {
						ev, _, err := protocol.DecodeMessage(m.Payload)
						return m.Topic == "thermo/d1/event" && err == nil && ev.VC == wantVC
					})
				}
			})
		}
		if st := d1.status(); st.Effective[protocol.PropSetpoint] != 26.5 {
			t.Errorf("the thermostat runs with %v; want only the good setpoint 26.5 applied", st.Effective)
		}
	})
}
