package agent

import (
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

// memStore keeps the saved state in memory.
type memStore struct{}

func (memStore) Save(protocol.DeviceState) error { return nil }

// TestLinkTrouble: each transport trouble raises its alert once (one ERROR
// line naming the cure however often transport repeats it) and clears it.
func TestLinkTrouble(t *testing.T) {
	for _, tc := range []struct {
		trouble transport.Trouble
		code    string
		cure    string
	}{
		{transport.TroubleTakeover, protocol.AlertDuplicateIdentity, "never clone a provisioned card"},
		{transport.TroubleTLSRefused, protocol.AlertTLSRefused, "certificate"},
	} {
		t.Run(tc.code, func(t *testing.T) {
			var logs logBuffer
			a, err := New(Config{ID: "d1", Store: memStore{}, Loop: newFakeThermostat(),
				Logger: slog.New(slog.NewTextHandler(&logs, nil))}, nil)
			if err != nil {
				t.Fatal(err)
			}
			a.LinkTrouble(tc.trouble, true, "seen 3 times")
			a.LinkTrouble(tc.trouble, true, "seen 4 times")
			if got := a.Alerts().Codes(); !slices.Equal(got, []string{tc.code}) {
				t.Fatalf("alerts %v, want [%s]", got, tc.code)
			}
			if l := a.Alerts().List(); l[0].Detail != "seen 4 times" {
				t.Errorf("detail %q, want the latest", l[0].Detail)
			}
			if st := a.Snapshot(); len(st.Alerts) != 1 || st.Alerts[0].Code != tc.code {
				t.Errorf("status alerts %+v", st.Alerts)
			}
			text := logs.String()
			if n := strings.Count(text, "level=ERROR"); n != 1 || !strings.Contains(text, tc.cure) {
				t.Errorf("%d ERROR lines, want 1 naming the cure (%q):\n%s", n, tc.cure, text)
			}
			a.LinkTrouble(tc.trouble, false, "")
			if got := a.Alerts().Codes(); got != nil {
				t.Errorf("alerts %v after the trouble ended", got)
			}
		})
	}
}
