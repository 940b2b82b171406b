package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thermofleet/thermo/controllerlite/history"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// TestInstancesShareHistory: with --store postgres the telemetry history
// lives in the database: two instances on one database and one
// Mosquitto, each device's telemetry written once (by its owner, the only
// instance subscribed to it), and every instance answers every device's
// history with the same JSON; no history.db is made.
func TestInstancesShareHistory(t *testing.T) {
	pki := testenv.NewPKI(t)
	names := []string{"a", "b"}
	mq := testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{Controllers: []string{"controller-a", "controller-b"}})
	pg := testenv.StartPostgres(t)
	dbURL := pg.NewDatabase(t)
	servers := map[string]*Server{}
	dirs := map[string]string{}
	for _, n := range names {
		cert, key := pki.ClientWithCN(t, protocol.ControllerPrefix+n)
		dirs[n] = t.TempDir()
		servers[n] = start(t, Config{CAFile: pki.CAFile, CertFile: cert, KeyFile: key, DataDir: dirs[n],
			HTTPAddr: "127.0.0.1:0", Broker: mq.URL(), Store: dbURL, Lease: 1500 * time.Millisecond, Logger: quiet})
	}
	ids := []string{"d1", "d2", "d3", "d4", "d5", "d6"}
	owned := func() map[string]string {
		o := map[string]string{}
		for _, n := range names {
			for _, id := range servers[n].Fleet().Owned() {
				o[id] = n
			}
		}
		return o
	}
	clients := map[string]*testenv.Client{}
	for _, id := range ids {
		clients[id] = pki.Connect(t, mq.URL(), id)
		clients[id].Publish(t, protocol.Topic(protocol.DefaultRoot, id, protocol.KindStatus), 1, true, protocol.Status{Online: true}.Encode())
		clients[id].Publish(t, protocol.Topic(protocol.DefaultRoot, id, protocol.KindEvent), 1, true,
			[]byte(`{"v":1,"vc":[0,1],"props":{"setpoint_c":{"val":21,"w":[0,1]},"mode":{"val":"heat","w":[0,1]}}}`))
	}
	testenv.Eventually(t, testenv.WaitTimeout, "the instances to share the devices", func() (bool, string) {
		o := owned()
		return len(o) == len(ids), fmt.Sprint(o)
	})
	for i, id := range ids {
		c := clients[id]
		testenv.WaitFor(t, "the event of "+id, func() bool { d, ok := servers[owned()[id]].Fleet().Device(id); return ok && d.VC[1] == 1 })
		temp := fmt.Sprintf("20.%d5", i)
		c.Publish(t, protocol.Topic(protocol.DefaultRoot, id, protocol.KindTelemetry), 0, false,
			[]byte(`{"v":1,"ts":"2026-12-03T00:00:00Z","temp_c":`+temp+`,"heat":false,"cool":false,"sensor_ok":true}`))
		testenv.WaitFor(t, "the telemetry of "+id, func() bool {
			d, _ := servers[owned()[id]].Fleet().Device(id)
			return strings.Contains(string(d.Telemetry), temp)
		})
	}
	var written uint64
	for _, n := range names {
		if err := servers[n].hist.Flush(); err != nil {
			t.Fatal(err)
		}
		written += servers[n].hist.Stats().Written
		if _, err := os.Stat(filepath.Join(dirs[n], history.FileName)); !os.IsNotExist(err) {
			t.Errorf("%s: %s exists beside a PostgreSQL store (%v)", n, history.FileName, err)
		}
	}
	ctx := context.Background()
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	var rows int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM history_raw`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if written != uint64(len(ids)) || rows != len(ids) {
		t.Fatalf("%d samples written by the instances, %d rows; want one per device (%d)", written, rows, len(ids))
	}
	get := func(n, id string) string {
		resp, err := http.Get("http://" + servers[n].HTTPAddr().String() + "/api/devices/" + id + "/history?step=1h")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: history of %s: %d %s", n, id, resp.StatusCode, body)
		}
		return string(body)
	}
	testenv.Eventually(t, testenv.WaitTimeout, "every instance to know every device, from the database", func() (bool, string) {
		for _, n := range names {
			for _, id := range ids {
				if d, ok := servers[n].Fleet().Device(id); !ok || d.VC[1] < 1 {
					return false, n + ": " + id
				}
			}
		}
		return true, ""
	})
	for i, id := range ids {
		a, b := get("a", id), get("b", id)
		if !strings.Contains(a, fmt.Sprintf(`"min": 20.%d5`, i)) || !strings.Contains(a, `"setpoint_c": 21`) || !strings.Contains(a, `"samples": 1`) {
			t.Fatalf("history of %s: %s", id, a)
		}
		// The answers are the same but for "to" (now). (The outputs are
		// off: an output on would count until now, a moment apart.)
		if strip(a) != strip(b) {
			t.Fatalf("history of %s differs between instances:\n%s\n%s", id, a, b)
		}
	}
}

// strip drops the lines of a history answer that hold the time of the
// request.
func strip(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, `"to"`) && !strings.Contains(l, `"from"`) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
