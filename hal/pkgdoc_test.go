package hal

import (
	"os/exec"
	"strings"
	"testing"
)

// Every package of the hardware side says what it is for (in the manner
// of tailscale's pkgdoc_test.go).
func TestPackageDocs(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}\t{{.Doc}}",
		"./...", "../sensors/...", "../firmware/control/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, doc, _ := strings.Cut(line, "\t")
		if strings.TrimSpace(doc) == "" {
			t.Errorf("package %s has no doc comment", pkg)
		}
	}
}
