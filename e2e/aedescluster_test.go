package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/mttr/brokerctl"
)

// TestAedesClusterFailover: the real binaries on a broker cluster, three
// aedes nodes (brokers/aedes) sharing one Redis. The controller is given
// the nodes n1, n2, n3 and the thermostat n1, n3, n2: both start on n1.
// n1 is killed; they move on, the controller to n2 and the thermostat to
// n3, so from then on every message crosses nodes through Redis. A remote
// user and a person at the thermostat each write a property during the
// move; both writes reach both sides.
func TestAedesClusterFailover(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed")
	}
	dir, err := filepath.Abs(filepath.Join("..", "brokers", "aedes"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "mqemitter-redis")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in brokers/aedes: %v\n%s", err, out)
		}
	}
	redis := testenv.StartRedis(t)
	w := &world{t: t, kind: mosquitto, pki: testenv.NewPKI(t), logs: newLogBook(t)}
	var nodes []*brokerctl.Process
	var urls []string
	var ports []int
	for i := range 3 {
		port := testenv.FreePort(t)
		ports = append(ports, port)
		p, err := brokerctl.Aedes(dir, brokerctl.Options{Dir: t.TempDir(), Host: "127.0.0.1", Port: port,
			CAFile: w.pki.CAFile, CertFile: w.pki.ServerCert, KeyFile: w.pki.ServerKey})
		if err != nil {
			t.Fatal(err)
		}
		p.Argv = append(p.Argv, "--redis", redis.URL(), "--id", fmt.Sprintf("n%d", i+1))
		if _, err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			p.Stop()
			if t.Failed() {
				log, _ := os.ReadFile(p.LogFile)
				t.Logf("aedes n%d log:\n%s", i+1, log)
			}
		})
		nodes = append(nodes, p)
		urls = append(urls, "mqtts://localhost:"+strconv.Itoa(port))
	}
	w.port = ports[0] // the world's broker, what startBinController and newBinThermostat give first

	ctl := startBinController(t, w, t.TempDir(), "--broker", urls[1], "--broker", urls[2])
	d := newBinThermostat(t, w, "d1", "--broker", urls[2], "--broker", urls[1]).start()
	d.synced()
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "20")
	d.synced()

	if err := nodes[0].Kill(context.Background()); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "18.5")
	command(t, d.bin, "set", "--control-socket", d.socket, "--mode", "cool")
	ctl.waitConnectedTo(t, strings.TrimPrefix(urls[1], "mqtts://"))
	d.waitConnectedTo(t, strings.TrimPrefix(urls[2], "mqtts://"))
	t.Logf("both connected to their next broker %v after the kill (polled)", time.Since(killed).Round(time.Millisecond))
	bothWrites(t, d)
	t.Logf("both writes on both sides %v after the kill", time.Since(killed).Round(time.Millisecond))
}
