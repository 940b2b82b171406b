package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/ota"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/release"
)

// signedRelease writes a release binary and its manifest into dir.
func signedRelease(t *testing.T, dir, version string) []byte {
	t.Helper()
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	bin := filepath.Join(dir, "thermostat-"+version)
	data := make([]byte, 4096)
	rand.Read(data)
	if err := os.WriteFile(bin, data, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := release.Describe(bin, version, "linux/arm64", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	mf, err := release.Sign(m, sk, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return mf
}

// TestStagedRollout: 20 simulated devices; a rollout at 10% offers the
// release on the topics of exactly the devices the stable hash picks, at
// 100% to all; a device's rollback pauses the rollout, and the offers not
// yet taken up are withdrawn.
func TestStagedRollout(t *testing.T) {
	pki := testenv.NewPKI(t)
	cfg := embedded(pki, t.TempDir())
	cfg.ReleasesDir, cfg.OTAListen = t.TempDir(), "127.0.0.1:0"
	manifest := signedRelease(t, cfg.ReleasesDir, "1.1.0")
	s := start(t, cfg)
	url := brokerURL(s.BrokerAddr())
	c, err := api.NewClient(s.HTTPAddr().String(), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	var ids []string
	devs := map[string]*testenv.Client{}
	for i := 1; i <= 20; i++ {
		id := fmt.Sprintf("d%02d", i)
		ids = append(ids, id)
		d := pki.Connect(t, url, id)
		d.Subscribe(t, "thermo/"+id+"/ota", 1)
		d.Publish(t, "thermo/"+id+"/status", 1, true, []byte(`{"v":1,"online":true}`))
		devs[id] = d
	}
	testenv.WaitFor(t, "20 devices in the fleet", func() bool { return len(s.Fleet().Devices()) == 20 })
	offered := func(id string) bool {
		return slices.ContainsFunc(devs[id].Messages(), func(m testenv.Message) bool {
			return m.Topic == "thermo/"+id+"/ota" && len(m.Payload) > 0
		})
	}
	report := func(id, state, running string) {
		b, err := protocol.EncodeOTAState(protocol.OTAState{State: state, Release: "1.1.0", Running: running, Slot: "a", Reason: "test " + state})
		if err != nil {
			t.Fatal(err)
		}
		devs[id].Publish(t, "thermo/"+id+"/ota_state", 1, true, b)
	}

	// 10%: the devices below the threshold, at least one.
	var first []string
	for _, id := range ids {
		if ota.Bucket(id) < 1000 {
			first = append(first, id)
		}
	}
	if len(first) == 0 {
		first = []string{slices.MinFunc(ids, func(a, b string) int { return ota.Bucket(a) - ota.Bucket(b) })}
	}
	if _, err := c.Rollout(ctx, manifest, 10); err != nil {
		t.Fatal(err)
	}
	for _, id := range first {
		m, _ := devs[id].WaitMatch(t, "the offer", func(m testenv.Message) bool { return len(m.Payload) > 0 })
		o, err := protocol.DecodeOffer(m.Payload)
		if err != nil || o.Port != s.OTAAddr().(*net.TCPAddr).Port || o.Path != "/releases/thermostat-1.1.0" {
			t.Fatalf("offer %+v (retained %v), %v", o, m.Retained, err)
		}
		if _, err := release.Parse(o.Manifest); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		if !slices.Contains(first, id) && offered(id) {
			t.Errorf("%s offered at 10%%; the first stage is %v", id, first)
		}
	}
	for _, id := range first {
		report(id, protocol.OTAHealthy, "1.1.0")
	}
	testenv.Eventually(t, 10*time.Second, "the first stage healthy", func() (bool, string) {
		st, err := c.OTAStatus(ctx)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, d := range st.Devices {
			if d.State == protocol.OTAHealthy {
				n++
			}
		}
		return n == len(first), fmt.Sprintf("%+v", st.Devices)
	})

	// 100%: everyone.
	if _, err := c.Rollout(ctx, manifest, 100); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "every device offered", func() (bool, string) {
		var missing []string
		for _, id := range ids {
			if !offered(id) {
				missing = append(missing, id)
			}
		}
		return len(missing) == 0, fmt.Sprint("not offered: ", missing)
	})
	// Some take it up; then one rolls back.
	var rest []string
	for _, id := range ids {
		if !slices.Contains(first, id) {
			rest = append(rest, id)
		}
	}
	taking, failing, waiting := rest[:3], rest[3], rest[4:]
	for _, id := range taking {
		report(id, protocol.OTADownloading, "1.0.0")
	}
	for _, id := range waiting {
		devs[id].Reset()
	}
	report(failing, protocol.OTARolledBack, "1.0.0")
	testenv.Eventually(t, 10*time.Second, "the rollout paused by the rollback", func() (bool, string) {
		st, err := c.OTAStatus(ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.Rollout != nil && st.Rollout.Paused && strings.Contains(st.Rollout.PauseReason, "device "+failing+" rolled back 1.1.0"),
			fmt.Sprintf("%+v", st.Rollout)
	})
	for _, id := range waiting {
		devs[id].WaitMatch(t, "the offer withdrawn", func(m testenv.Message) bool { return m.Topic == "thermo/"+id+"/ota" && len(m.Payload) == 0 })
	}
	st, err := c.OTAStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range st.Devices {
		want := "pending"
		switch {
		case slices.Contains(first, d.ID):
			want = protocol.OTAHealthy
		case slices.Contains(taking, d.ID):
			want = protocol.OTADownloading
		case d.ID == failing:
			want = protocol.OTARolledBack
		}
		if d.State != want || !d.Included {
			t.Errorf("%s: %+v, want state %s", d.ID, d, want)
		}
	}
	// Pausing again is harmless; a rollout again resumes.
	if _, err := c.PauseRollout(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Rollout(ctx, manifest, 100); err != nil || r.Paused {
		t.Fatalf("resume: %+v %v", r, err)
	}
}

// TestRolloutRefusals: what `ota rollout` refuses, with why.
func TestRolloutRefusals(t *testing.T) {
	pki := testenv.NewPKI(t)
	cfg := embedded(pki, t.TempDir())
	cfg.ReleasesDir, cfg.OTAListen = t.TempDir(), "127.0.0.1:0"
	manifest := signedRelease(t, cfg.ReleasesDir, "1.1.0")
	s := start(t, cfg)
	c, _ := api.NewClient(s.HTTPAddr().String(), "")
	os.WriteFile(filepath.Join(cfg.ReleasesDir, "thermostat-1.1.0"), []byte("another binary"), 0o644)
	for _, tc := range []struct {
		name     string
		manifest []byte
		percent  float64
		msg      string
	}{
		{"binary differs", manifest, 10, "does not match the manifest"},
		{"no percent", manifest, 0, "0 < percent <= 100"},
		{"over 100", manifest, 150, "0 < percent <= 100"},
		{"not a manifest", []byte(`{"x":1}`), 10, "unknown field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Rollout(context.Background(), tc.manifest, tc.percent)
			var ae *api.Error
			if err == nil || !strings.Contains(err.Error(), tc.msg) || !errors.As(err, &ae) || ae.Status != 400 {
				t.Fatalf("%v, want a 400 with %q", err, tc.msg)
			}
		})
	}
	if _, err := c.PauseRollout(context.Background()); err == nil {
		t.Error("pause without a rollout accepted")
	}
}
