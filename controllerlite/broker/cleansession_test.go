package broker

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/internal/testenv"
)

// storedKeys lists the keys of the broker's store in dir, read after the
// broker has closed it.
func storedKeys(t *testing.T, dir string) []string {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(dir, storeFile), 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var keys []string
	err = db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bbolt.Bucket) error {
			return b.ForEach(func(k, _ []byte) error { keys = append(keys, string(k)); return nil })
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestCleanSessionsNotWritten: the subscriptions and in-flight messages of
// a clean session are never written (they could not be restored), while a
// persistent session's are, and every client's record and the retained
// messages still are.
func TestCleanSessionsNotWritten(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	b := startBroker(t, pki, dir, nil)
	d1Cert, d1Key := pki.Client(t, "d1")
	d1 := testenv.Connect(t, b.url, testenv.ClientOptions{CAFile: pki.CAFile, CertFile: d1Cert, KeyFile: d1Key, Persistent: true})
	d2 := pki.Connect(t, b.url, "d2") // clean session, as every client of ours
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	d2.Subscribe(t, "thermo/d2/cmd", 1)
	for _, c := range []struct {
		c  *testenv.Client
		id string
	}{{d1, "d1"}, {d2, "d2"}} {
		if err := b.Publish("thermo/"+c.id+"/cmd", []byte("greeting"), true, 1); err != nil {
			t.Fatal(err)
		}
		c.c.WaitPayload(t, "thermo/"+c.id+"/cmd", "greeting")
	}
	d2.Publish(t, "thermo/d2/event", 1, true, []byte("e2"))
	// What is in the store while both are connected, read past the
	// repairs StoredSubscriptions makes at load.
	subs, err := b.store.rawSubscriptions()
	if err != nil {
		t.Fatal(err)
	}
	var clients []string
	for _, s := range subs {
		clients = append(clients, s.Client+":"+s.Filter)
	}
	if !slices.Equal(clients, []string{"d1:thermo/d1/cmd"}) {
		t.Errorf("stored subscriptions %q while connected, want only the persistent session's", clients)
	}
	d1.Close()
	b.log.waitFor(t, "client disconnected", "client=d1")
	if err := b.Publish("thermo/d1/cmd", []byte("queued"), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	keys := storedKeys(t, dir)
	has := func(prefix string) bool {
		return slices.ContainsFunc(keys, func(k string) bool { return strings.HasPrefix(k, prefix) })
	}
	for _, want := range []string{"SUB_d1:thermo/d1/cmd", "IFM_d1:", "RET_thermo/d2/event", "RET_thermo/d2/cmd"} {
		if !has(want) {
			t.Errorf("no stored key %q in %q", want, keys)
		}
	}
	for _, unwanted := range []string{"SUB_d2", "IFM_d2"} {
		if has(unwanted) {
			t.Errorf("stored %q for a clean session: %q", unwanted, keys)
		}
	}
}
