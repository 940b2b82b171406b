// Package repotest holds tests about the repository as a whole: every
// package documented, and each binary free of the other's dependencies.
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

// TestBinaryDependencies keeps each binary lean: the firmware that runs on
// a Pi Zero carries no broker, no database and no HTTP server of the
// controller; the controller carries no hardware drivers.
func TestBinaryDependencies(t *testing.T) {
	for _, tc := range []struct {
		pkg       string
		forbidden []string
	}{
		{"./firmware", []string{"github.com/mochi-mqtt/", "go.etcd.io/bbolt", "/controllerlite", "/mttr"}},
		{"./controllerlite", []string{"periph.io/x/", "/hal", "/sensors", "/firmware"}},
	} {
		out, err := exec.Command("go", "list", "-deps", tc.pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", tc.pkg, err)
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
