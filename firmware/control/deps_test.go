package control

import (
	"os/exec"
	"strings"
	"testing"
)

// The control loop must run with the network down and stay small: it
// imports no networking, no MQTT, no storage. (Dependency test in the
// manner of tailscale's cmd/tailscaled/deps_test.go.)
func TestDeps(t *testing.T) {
	for _, pkg := range []string{".", "../../hal/rpi", "../../hal/sim", "../../sensors"} {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, bad := range []string{"net", "net/http", "crypto/tls", "github.com/eclipse/paho.mqtt.golang", "github.com/mochi-mqtt/server/v2", "go.etcd.io/bbolt"} {
				if dep == bad {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}
