package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thermofleet/thermo/controllerlite/lease"
	"github.com/thermofleet/thermo/internal/holdproxy"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// TestInstancesShareDevices: three controller instances on one PostgreSQL
// database and one Mosquitto, each with its own certificate
// (controller-NAME), split six devices between them (each device owned by
// exactly one, the one rendezvous hashing names), every instance shows
// every device, and a write taken by an instance that does not own the
// device reaches the device and its owner. Then one instance is cut from
// PostgreSQL (a proxy in front of the database holds its traffic): it
// stops acting before its lease ends, the others take its devices only
// after, and a change a device made in between is not lost.
func TestInstancesShareDevices(t *testing.T) {
	const leaseDur = 1500 * time.Millisecond
	pki := testenv.NewPKI(t)
	mq := testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{Controllers: []string{"controller-a", "controller-b", "controller-c"}})
	pg := testenv.StartPostgres(t)
	dbURL := pg.NewDatabase(t)
	names := []string{"a", "b", "c"}
	logger := quiet
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	servers := map[string]*Server{}
	proxies := map[string]*holdproxy.Proxy{}
	for _, n := range names {
		p, err := holdproxy.Listen("127.0.0.1:0", pg.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		proxies[n] = p
		u, err := url.Parse(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		u.Host = p.Addr().String()
		cert, key := pki.ClientWithCN(t, protocol.ControllerPrefix+n)
		servers[n] = start(t, Config{CAFile: pki.CAFile, CertFile: cert, KeyFile: key, DataDir: t.TempDir(),
			HTTPAddr: "127.0.0.1:0", Broker: mq.URL(), Store: u.String(), Lease: leaseDur, Logger: logger.With("instance", n)})
		if got := servers[n].Instance(); got != n {
			t.Fatalf("instance name %q, want %q from the CN", got, n)
		}
	}
	ctx := context.Background()
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)

	// Six devices, each online with a retained status and one Event.
	type device struct {
		c *testenv.Client
		r *protocol.Replica
	}
	devs := map[string]*device{}
	ids := []string{"d1", "d2", "d3", "d4", "d5", "d6"}
	event := func(id string, changes map[string]any) protocol.Message {
		d := devs[id]
		m, err := d.r.WriteAndSend(changes, protocol.SrcLocal)
		if err != nil {
			t.Fatal(err)
		}
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		d.c.Publish(t, protocol.Topic(protocol.DefaultRoot, id, protocol.KindEvent), 1, true, b)
		return m
	}
	for _, id := range ids {
		c := pki.Connect(t, mq.URL(), id)
		c.Subscribe(t, protocol.Topic(protocol.DefaultRoot, id, protocol.KindCmd), 1)
		devs[id] = &device{c, protocol.NewReplica(protocol.DeviceSide)}
		c.Publish(t, protocol.Topic(protocol.DefaultRoot, id, protocol.KindStatus), 1, true, protocol.Status{Online: true}.Encode())
		event(id, map[string]any{protocol.PropMode: protocol.ModeHeat})
	}

	owner := func(id string) string { return lease.Owner(id, names) }
	testenv.Eventually(t, testenv.WaitTimeout, "each device owned by exactly its hash's instance", func() (bool, string) {
		got := map[string][]string{}
		for _, n := range names {
			for _, id := range servers[n].Fleet().Owned() {
				got[id] = append(got[id], n)
			}
		}
		for _, id := range ids {
			if !slices.Equal(got[id], []string{owner(id)}) {
				return false, fmt.Sprint(got)
			}
		}
		return true, ""
	})
	shares := map[string][]string{}
	for _, id := range ids {
		shares[owner(id)] = append(shares[owner(id)], id)
	}
	t.Logf("shares: %v", shares)
	// /healthz says the same (what the mttr harness reads).
	for _, n := range names {
		st := servers[n].Fleet().Status().Instance
		if st == nil || st.Name != n || !st.Active || !slices.Equal(st.Live, names) || st.Owned != len(shares[n]) {
			t.Errorf("%s: status %+v, want active among %v owning %d", n, st, names, len(shares[n]))
		}
	}
	testenv.Eventually(t, testenv.WaitTimeout, "every instance to show every device's event, from the database", func() (bool, string) {
		for _, n := range names {
			for _, id := range ids {
				d, ok := servers[n].Fleet().Device(id)
				if !ok || d.VC[1] < 1 {
					return false, fmt.Sprintf("%s: %s %+v", n, id, d)
				}
			}
		}
		return true, ""
	})

	// A write taken by an instance that does not own the device.
	id := ids[0]
	other := names[(slices.Index(names, owner(id))+1)%len(names)]
	d, err := servers[other].Fleet().Set(ctx, id, map[string]any{protocol.PropSetpoint: 21.5})
	if err != nil {
		t.Fatal(err)
	}
	devs[id].c.WaitMatch(t, "the command of the write taken by "+other, func(m testenv.Message) bool {
		cm, _, err := protocol.DecodeMessage(m.Payload)
		return err == nil && cm.VC == d.VC && cm.Props[protocol.PropSetpoint].Val == 21.5
	})
	testenv.Eventually(t, testenv.WaitTimeout, "the owner to hear the write", func() (bool, string) {
		od, _ := servers[owner(id)].Fleet().Device(id)
		sp := od.Props[protocol.PropSetpoint]
		return sp.Val == 21.5 && sp.W == d.VC, fmt.Sprint(od.VC, od.Props)
	})

	// Cut the instance that owns the most devices from PostgreSQL.
	victim := names[0]
	for _, n := range names {
		if len(shares[n]) > len(shares[victim]) {
			victim = n
		}
	}
	if len(shares[victim]) == 0 {
		t.Fatal("no instance owns a device")
	}
	var expires time.Time
	if err := db.QueryRow(ctx, `SELECT expires_at FROM controllers WHERE name = $1`, victim).Scan(&expires); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	proxies[victim].Hold()
	defer proxies[victim].Release()
	testenv.Eventually(t, 2*leaseDur, victim+" to stop acting", func() (bool, string) {
		return !servers[victim].Fleet().View().Active, ""
	})
	stopped := time.Now()
	// Its last renewal may have landed after the read above: read again.
	if err := db.QueryRow(ctx, `SELECT expires_at FROM controllers WHERE name = $1`, victim).Scan(&expires); err != nil {
		t.Fatal(err)
	}
	if !stopped.Before(expires) {
		t.Fatalf("%s stopped acting at %v, after its lease ended at %v", victim, stopped, expires)
	}
	// A device of the cut instance changes while it has no owner.
	gapID := shares[victim][0]
	gap := event(gapID, map[string]any{protocol.PropMode: protocol.ModeCool})

	var took time.Time
	early := false
	testenv.Eventually(t, 2*leaseDur+testenv.WaitTimeout, "the others to take the cut instance's devices", func() (bool, string) {
		live := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == victim })
		now := time.Now()
		taken := 0
		for _, id := range shares[victim] {
			if slices.Contains(servers[lease.Owner(id, live)].Fleet().Owned(), id) {
				taken++
			}
		}
		if taken > 0 && now.Before(expires) {
			early = true
		}
		took = now
		return taken == len(shares[victim]), fmt.Sprintf("%d of %d taken", taken, len(shares[victim]))
	})
	if early {
		t.Errorf("a device of %s taken before its lease ended at %v", victim, expires)
	}
	t.Logf("lease %v: %s stopped acting %v after the cut, %v before its lease ended; its %d devices taken %v after the cut",
		leaseDur, victim, stopped.Sub(cut).Round(time.Millisecond), expires.Sub(stopped).Round(time.Millisecond),
		len(shares[victim]), took.Sub(cut).Round(time.Millisecond))
	if took.Sub(cut) > 2*leaseDur {
		t.Errorf("takeover took %v, more than two leases (%v)", took.Sub(cut), 2*leaseDur)
	}
	testenv.Eventually(t, testenv.WaitTimeout, "the change made during the gap to be stored", func() (bool, string) {
		var mode string
		var dc int64
		err := db.QueryRow(ctx, `SELECT coalesce(props->'mode'->>'val', ''), vc_d FROM devices WHERE id = $1`, gapID).Scan(&mode, &dc)
		return err == nil && mode == protocol.ModeCool && uint64(dc) >= gap.VC[1], fmt.Sprint(mode, dc, err)
	})
	// And a write after takeover reaches the device, from the new owner.
	newOwner := lease.Owner(gapID, slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == victim }))
	d, err = servers[newOwner].Fleet().Set(ctx, gapID, map[string]any{protocol.PropSetpoint: 18})
	if err != nil {
		t.Fatal(err)
	}
	devs[gapID].c.WaitMatch(t, "the new owner's command", func(m testenv.Message) bool {
		cm, _, err := protocol.DecodeMessage(m.Payload)
		return err == nil && cm.VC == d.VC && cm.Props[protocol.PropMode].Val == protocol.ModeCool
	})

	// Back in reach of PostgreSQL, the instance joins again and takes
	// its share back from the others; a write it takes reaches the
	// device.
	proxies[victim].Release()
	testenv.Eventually(t, testenv.WaitTimeout, "each device owned by exactly its hash's instance again", func() (bool, string) {
		got := map[string][]string{}
		for _, n := range names {
			for _, id := range servers[n].Fleet().Owned() {
				got[id] = append(got[id], n)
			}
		}
		for _, id := range ids {
			if !slices.Equal(got[id], []string{owner(id)}) {
				return false, fmt.Sprint(got)
			}
		}
		return true, ""
	})
	d, err = servers[victim].Fleet().Set(ctx, gapID, map[string]any{protocol.PropSetpoint: 22})
	if err != nil {
		t.Fatal(err)
	}
	devs[gapID].c.WaitMatch(t, "the command of the instance back", func(m testenv.Message) bool {
		cm, _, err := protocol.DecodeMessage(m.Payload)
		return err == nil && cm.VC == d.VC && cm.Props[protocol.PropSetpoint].Val == 22.0
	})

	// Deleted through an instance that does not own it: gone from every
	// instance; its next status makes it a new device of its owner.
	delID := ids[1]
	via := names[(slices.Index(names, owner(delID))+1)%len(names)]
	if err := servers[via].Fleet().Delete(ctx, delID); err != nil {
		t.Fatal(err)
	}
	shown := func(want bool) func() (bool, string) {
		return func() (bool, string) {
			for _, n := range names {
				if _, ok := servers[n].Fleet().Device(delID); ok != want {
					return false, n
				}
			}
			return true, ""
		}
	}
	testenv.Eventually(t, testenv.WaitTimeout, delID+" gone from every instance", shown(false))
	devs[delID].c.Publish(t, protocol.Topic(protocol.DefaultRoot, delID, protocol.KindStatus), 1, true, protocol.Status{Online: true}.Encode())
	testenv.Eventually(t, testenv.WaitTimeout, delID+" back as a new device on every instance", shown(true))
	if got := servers[owner(delID)].Fleet().Owned(); !slices.Contains(got, delID) {
		t.Fatalf("%s owns %v, not %s", owner(delID), got, delID)
	}
}
