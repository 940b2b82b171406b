package harness

import (
	"bytes"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/protocol"
)

// TestValues: every change the harness makes is valid, the two local
// setpoints differ, the device's and the controller's modes differ (so a
// wrong winner shows in the value too), and a device's values change from
// one cycle to the next.
func TestValues(t *testing.T) {
	for index := 0; index < 300; index++ {
		prev := -1.0
		for n := 1; n <= 60; n++ {
			s1, s2, dm, cm := values(index, n)
			for name, v := range map[string]any{protocol.PropSetpoint + " 1": s1, protocol.PropSetpoint + " 2": s2, protocol.PropMode + " device": dm, protocol.PropMode + " controller": cm} {
				prop, _, _ := strings.Cut(name, " ")
				if _, err := protocol.Normalize(prop, v); err != nil {
					t.Fatalf("device %d cycle %d: %s %v: %v", index, n, name, v, err)
				}
			}
			if s1 == s2 || dm == cm || s2 == prev {
				t.Fatalf("device %d cycle %d: s1 %v s2 %v (previous %v), modes %s/%s", index, n, s1, s2, prev, dm, cm)
			}
			prev = s2
		}
	}
}

func TestProgress(t *testing.T) {
	cases := []struct {
		tty  bool
		want string
	}{
		{true, "\r\x1b[Kwaiting 1\r\x1b[Kwaiting 2\r\x1b[Kcycle 1 done\n"},
		// Not a terminal: the first status, then quiet for a while.
		{false, "… waiting 1\ncycle 1 done\n"},
	}
	for _, c := range cases {
		var b bytes.Buffer
		p := &progress{w: &b, tty: c.tty}
		p.status("waiting %d", 1)
		p.status("waiting %d", 2)
		p.line("cycle 1 done")
		p.done()
		if b.String() != c.want {
			t.Errorf("tty %v: %q, want %q", c.tty, b.String(), c.want)
		}
	}
}
