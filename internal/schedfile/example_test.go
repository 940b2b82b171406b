package schedfile

import "testing"

// The example the README points at stays valid.
func TestDocsExample(t *testing.T) {
	s, err := Load("../../docs/examples/week.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Week) != 7 || len(s.Week["wed"]) != 4 || s.Week["wed"][2].Preset != "home" {
		t.Fatalf("%+v", s.Week)
	}
}
