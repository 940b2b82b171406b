package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/lease"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// TestInstancesKill: three `controllerlite serve --broker --store
// postgres://...` processes, each with its own certificate
// (controller-NAME), share six real thermostats; every instance's API
// shows every device. One instance is killed (SIGKILL: no goodbye, its
// lease just ends); a change made at one of its thermostats meanwhile
// reaches the instance that takes the device over, within two leases;
// a remote write taken by an instance that does not own the device
// reaches the thermostat; every thermostat ends in agreement with the
// database (no lost event, no wrong winner).
func TestInstancesKill(t *testing.T) {
	const leaseDur = 2 * time.Second
	names := []string{"a", "b", "c"}
	var cns []string
	for _, n := range names {
		cns = append(cns, protocol.ControllerPrefix+n)
	}
	pg := testenv.StartPostgres(t)
	url := pg.NewDatabase(t)
	w := newBareWorld(t, mosquitto, func(w *world) { w.mqControllers = cns })
	ctls := map[string]*binController{}
	apis := map[string]*api.Client{}
	for i, n := range names {
		cert, key := w.pki.ClientWithCN(t, cns[i])
		ctls[n] = startBinController(t, w, t.TempDir(), "--store", url, "--cert", cert, "--key", key, "--lease", leaseDur.String())
		apis[n] = w.api
	}
	ids := []string{"d1", "d2", "d3", "d4", "d5", "d6"}
	devs := map[string]*binThermostat{}
	for _, id := range ids {
		devs[id] = newBinThermostat(t, w, id).start()
	}
	for _, n := range names {
		w.api = apis[n]
		for _, id := range ids {
			devs[id].synced()
		}
	}

	shares := map[string][]string{}
	for _, id := range ids {
		o := lease.Owner(id, names)
		shares[o] = append(shares[o], id)
	}
	victim := names[0]
	for _, n := range names {
		if len(shares[n]) > len(shares[victim]) {
			victim = n
		}
	}
	live := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == victim })
	t.Logf("shares %v; killing %s", shares, victim)
	for _, n := range names {
		if got := ctls[n].logText(); !containsAll(got, "one of several controller instances", "instance="+n) {
			t.Fatalf("%s does not say it is instance %s", n, n)
		}
	}

	killed := time.Now()
	if err := ctls[victim].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-ctls[victim].done
	gapID := shares[victim][0]
	command(t, devs[gapID].bin, "set", "--control-socket", devs[gapID].socket, "--mode", "cool")
	newOwner := lease.Owner(gapID, live)
	var seen time.Duration
	testenv.Eventually(t, 2*leaseDur+waitTimeout, "the change made while its owner was dead to reach the new owner", func() (bool, string) {
		d, err := apis[newOwner].Device(context.Background(), gapID)
		if err != nil {
			return false, err.Error()
		}
		m, _ := d.Props.Mode()
		seen = time.Since(killed)
		return m == protocol.ModeCool, fmt.Sprint(d.VC, d.Props)
	})
	t.Logf("lease %v: the change at %s reached %s %v after %s was killed", leaseDur, gapID, newOwner, seen.Round(time.Millisecond), victim)
	if seen > 2*leaseDur+time.Second {
		t.Errorf("takeover took %v, more than two leases", seen)
	}

	// A remote write through an instance that does not own the device.
	other := live[0]
	if other == newOwner {
		other = live[1]
	}
	w.api = apis[other]
	d := w.set(gapID, map[string]any{protocol.PropSetpoint: 17.5})
	st, _ := devs[gapID].synced()
	if sp, _ := st.Props.Setpoint(); sp != 17.5 || st.VC[0] < d.VC[0] {
		t.Fatalf("thermostat %v %v after the write %v through %s", st.VC, st.Props, d.VC, other)
	}
	for _, n := range live {
		w.api = apis[n]
		for _, id := range ids {
			devs[id].synced()
		}
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
