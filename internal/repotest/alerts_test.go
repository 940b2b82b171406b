package repotest

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"testing"

	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"
)

// rulesFile is the shape of a Prometheus rules file, strictly: a key
// Prometheus does not know fails the decode.
type rulesFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// TestAlertRules checks docs/examples/alerts.yml: it parses as a rules
// file, has the alerts docs/metrics.md promises, each with a duration
// Prometheus accepts, a severity and a summary, and its expressions name
// only metrics docs/metrics.md lists (a metric renamed in the code fails
// the metrics packages' TestDocumented, and then this). With promtool on
// PATH it also runs `promtool check rules` and the rules' unit tests
// (docs/examples/alerts_test.yml).
func TestAlertRules(t *testing.T) {
	b, err := os.ReadFile("../../docs/examples/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f rulesFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `((?:controllerlite|thermostat)_[a-z_]+)` \\|").FindAllStringSubmatch(string(doc), -1) {
		documented = append(documented, m[1])
	}
	metricRE := regexp.MustCompile(`\b(?:controllerlite|thermostat)_[a-z_]+`)
	var alerts []string
	for _, g := range f.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: a name and rules are required", g.Name)
		}
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("group %s: a rule without alert or expr: %+v", g.Name, r)
			}
			if _, err := model.ParseDuration(r.For); r.For != "" && err != nil {
				t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("%s: needs a severity label and a summary", r.Alert)
			}
			for _, name := range metricRE.FindAllString(r.Expr, -1) {
				if !slices.Contains(documented, name) {
					t.Errorf("%s: expr uses %s, which docs/metrics.md does not list", r.Alert, name)
				}
			}
		}
	}
	for _, want := range []string{"ThermostatOffline", "ThermostatSensorFault", "ThermostatHeatingWithoutRest",
		"ControllerCommandsOwed", "ThermostatHeaterPastMaxRun", "ThermostatControlSensorNotOK"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alerts.yml has no %s (has %v)", want, alerts)
		}
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not on PATH: the rules were parsed, not checked by Prometheus")
		return
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../../docs/examples"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}
