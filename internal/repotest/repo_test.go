// Package repotest holds tests about the repository as a whole: every
// package documented, each binary free of the other's dependencies, and
// the example alert rules (docs/examples/alerts.yml) sound.
package repotest

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackagesHaveDocs: every package says what it is for.
func TestPackagesHaveDocs(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Dir,GoFiles", "./...").Output()
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Dir        string
			GoFiles    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		documented := false
		for _, f := range p.GoFiles {
			file, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, f), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if file.Doc != nil && strings.TrimSpace(file.Doc.Text()) != "" {
				documented = true
			}
		}
		if len(p.GoFiles) > 0 && !documented {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}

// TestBinaryDependencies keeps the controller free of hardware drivers,
// firmware code and test helpers.
func TestBinaryDependencies(t *testing.T) {
	for _, tc := range []struct {
		pkg       string
		forbidden []string
	}{
		// The firmware's own deps_test.go guards the thermostat binary.
		{"github.com/thermofleet/thermo/controllerlite", []string{"periph.io/x/", "/thermo/hal", "/thermo/sensors", "/thermo/firmware", "/internal/testenv"}},
	} {
		out, err := exec.Command("go", "list", "-deps", tc.pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", tc.pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range tc.forbidden {
				if strings.Contains(dep, f) {
					t.Errorf("%s depends on %s", tc.pkg, dep)
				}
			}
		}
	}
}
