package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// TestPostgresStore: `controllerlite serve --store postgres://...` keeps
// the devices' records in PostgreSQL. A thermostat syncs through it; the
// database restarts, and a change made at the thermostat while it was down
// reaches the database once it is back, without another write; a remote
// write after works. Then a controller with a new, empty data directory,
// on a broker that lost every retained message, finds every device with
// its clock and properties in the database.
func TestPostgresStore(t *testing.T) {
	pg := testenv.StartPostgres(t)
	url := pg.NewDatabase(t)
	w := newBareWorld(t, mosquitto)
	ctl := startBinController(t, w, t.TempDir(), "--store", url)
	d := newBinThermostat(t, w, "d1").start()
	d.synced()
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "19")
	d.synced()

	db, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	stored := func(prop string) (string, protocol.Clock) {
		var val string
		var c, dd uint64
		err := db.QueryRow(context.Background(), `SELECT coalesce(props->$2->>'val', ''), vc_c, vc_d FROM devices WHERE id = $1`, "d1", prop).Scan(&val, &c, &dd)
		if err != nil {
			return err.Error(), protocol.Clock{}
		}
		return val, protocol.Clock{c, dd}
	}
	if v, _ := stored(protocol.PropSetpoint); v != "19" {
		t.Fatalf("setpoint in PostgreSQL %q, want 19", v)
	}

	db.Close(context.Background())
	pg.Stop()
	command(t, d.bin, "set", "--control-socket", d.socket, "--mode", "cool")
	eventually(t, "the controller to hear the thermostat's change", func() (bool, string) {
		c := w.mustCtl("d1")
		m, _ := c.Props.Mode()
		return m == protocol.ModeCool, fmt.Sprint(c.Props)
	})
	// A remote write while the database is down: answered 503 with
	// Retry-After (not stored, nothing published yet), not as a server
	// error.
	req, err := http.NewRequest(http.MethodPut, "http://"+ctl.apiAddr+"/api/devices/d1", strings.NewReader(`{"setpoint_c": 18}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "store refused") {
		t.Errorf("PUT while PostgreSQL is down: %d, Retry-After %q, %s; want 503 with Retry-After, the store named", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	if db, err = pgx.Connect(context.Background(), url); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the change made while PostgreSQL was down to be stored", func() (bool, string) {
		v, vc := stored(protocol.PropMode)
		return v == protocol.ModeCool, fmt.Sprintf("mode %q at %v", v, vc)
	})
	// The refused write was dropped: neither side shows it, and the
	// controller's next Command does not carry it.
	st, c := d.synced()
	if sp, _ := st.Props.Setpoint(); sp != 19 {
		t.Errorf("the thermostat's setpoint %v after the refused write of 18, want 19", st.Props)
	}
	if sp, _ := c.Props.Setpoint(); sp != 19 {
		t.Errorf("the controller's setpoint %v after the refused write of 18, want 19", c.Props)
	}
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "20.5")
	_, before := d.synced()

	d.stop()
	ctl.cmd.Process.Signal(syscall.SIGTERM)
	<-ctl.done
	w.mq.Kill()
	w.mq.WipeData()
	w.mq.Start()
	startBinController(t, w, t.TempDir(), "--store", url)
	after := w.mustCtl("d1")
	if after.VC != before.VC || !sameProps(after.Props, before.Props) {
		t.Fatalf("from PostgreSQL: %v %v, want %v %v", after.VC, after.Props, before.VC, before.Props)
	}
}
