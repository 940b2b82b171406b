package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// caKeyFile is the fleet CA's key in a world's PKI: serve --signing-key.
func (w *world) caKeyFile() string { return filepath.Join(w.pki.CA.Dir, provisioning.CAKeyFile) }

// shortLivedDevice issues device id a certificate that began ago and ends
// life after it began, in a directory of its own (renewal rewrites it),
// and returns the certificate and key files.
func shortLivedDevice(t *testing.T, w *world, id string, ago, life time.Duration) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := w.pki.CA.IssueClient(id, &provisioning.IssueOptions{NotBefore: time.Now().Add(-ago), Validity: life})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "device.crt"), filepath.Join(dir, "device.key")
	if err := provisioning.WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// withCert makes the thermostat use certFile and keyFile.
func (d *binThermostat) withCert(certFile, keyFile string) *binThermostat {
	d.args = append(d.args, "--cert", certFile, "--key", keyFile)
	return d
}

// TestCertRenewalOverMQTT: a device whose certificate is about to end
// renews it over its own connection before it ends (the controller signs
// with --signing-key), reconnects with it and keeps syncing, its clock
// carrying on; the API and `thermostat status` show the new end; the
// controller keeps a copy of what it issued. Both brokers.
func TestCertRenewalOverMQTT(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		ctl := startBinController(t, w, filepath.Join(t.TempDir(), "data"),
			"--signing-key", w.caKeyFile(), "--device-cert-lifetime", "10m")
		// 40 s of life, 10 s gone, renewed at half: in 6 to 10 s.
		cert, key := shortLivedDevice(t, w, "d1", 10*time.Second, 40*time.Second)
		d := newBinThermostat(t, w, "d1", "--renew-at", "0.5").withCert(cert, key).start()
		before, _ := d.synced()
		if before.CertExpires == nil || time.Until(*before.CertExpires) > 31*time.Second {
			t.Fatalf("status cert_expires %v, want the short certificate's end", before.CertExpires)
		}
		eventually(t, "the device renews its certificate", func() (bool, string) {
			st, err := d.status()
			if err != nil {
				return false, err.Error()
			}
			return st.CertExpires != nil && time.Until(*st.CertExpires) > 5*time.Minute,
				"status cert_expires " + fmtTime(st.CertExpires)
		})
		// The files on disk are the new pair, the key still 0600.
		pair, cn, err := provisioning.LoadKeyPair(cert, key)
		if err != nil || cn != "d1" || time.Until(pair.Leaf.NotAfter) < 5*time.Minute {
			t.Fatalf("files after renewal: %v CN %q", err, cn)
		}
		if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
			t.Errorf("key mode %v", fi.Mode().Perm())
		}
		issued, _ := filepath.Glob(filepath.Join(ctl.dataDir, provisioning.IssuedDir, "d1", "*.crt"))
		if len(issued) != 1 {
			t.Errorf("controller's copies of issued certificates: %v", issued)
		}
		// The controller sees the new end in telemetry, and the device
		// keeps syncing with the clock it had.
		eventually(t, "the API shows the new certificate's end", func() (bool, string) {
			c, err := w.ctl("d1")
			if err != nil {
				return false, err.Error()
			}
			return c.CertExpires != nil && c.CertExpires.Equal(pair.Leaf.NotAfter.UTC()), "api cert_expires " + fmtTime(c.CertExpires)
		})
		w.set("d1", map[string]any{protocol.PropSetpoint: 23.5})
		after, _ := d.synced()
		if !before.VC.LessEq(after.VC) || after.VC == before.VC {
			t.Errorf("clock after renewal %v does not follow %v", after.VC, before.VC)
		}
		if v, _ := after.Props.Setpoint(); v != 23.5 {
			t.Errorf("setpoint after renewal %v", v)
		}
		if len(after.Alerts) != 0 {
			t.Errorf("alerts %v", after.Alerts)
		}
	})
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "null"
	}
	return t.Format(time.RFC3339) + " (in " + strconv.Itoa(int(time.Until(*t).Seconds())) + " s)"
}
