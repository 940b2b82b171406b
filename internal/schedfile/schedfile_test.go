package schedfile

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	s, err := Parse([]byte(`# the week program
enabled: true
tz: Europe/Berlin
week:
  mon:
    - {at: "06:30", setpoint_c: 21}
    - at: 22:00
      preset: sleep
  sat: []
`))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Enabled || s.TZ != "Europe/Berlin" || len(s.Week["mon"]) != 2 || *s.Week["mon"][0].SetpointC != 21 || s.Week["mon"][1].Preset != "sleep" {
		t.Fatalf("%+v", s)
	}
	j, err := Parse([]byte(`{"enabled":false,"week":{"sun":[{"at":"09:00","setpoint_c":20.5}]}}`))
	if err != nil || j.Enabled || *j.Week["sun"][0].SetpointC != 20.5 {
		t.Fatalf("JSON: %+v %v", j, err)
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"bad time", "enabled: true\nweek:\n  mon:\n    - {at: \"6:30\", setpoint_c: 21}\n", "line 4: "},
		{"second entry", "enabled: true\nweek:\n  tue:\n    - {at: \"06:30\", setpoint_c: 21}\n    - {at: \"05:00\", setpoint_c: 19}\n", "line 5: "},
		{"out of range", "enabled: true\nweek:\n  wed:\n    - {at: \"06:30\", setpoint_c: 40}\n", "line 4: "},
		{"bad day", "enabled: true\nweek:\n  monday: []\n", "monday"},
		{"bad zone", "enabled: true\ntz: Mars/Base\nweek: {}\n", "line 2: "},
		{"no enabled", "week: {}\n", "no enabled"},
		{"not YAML", "enabled: [\n", "yaml"},
		{"empty", "", "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
