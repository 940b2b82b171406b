package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/server"
	"github.com/thermofleet/thermo/internal/testenv"
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

// startSigningController is startController with --signing-key.
func (w *world) startSigningController(lifetime time.Duration) {
	w.t.Helper()
	cfg := w.controllerConfig()
	cfg.SigningKeyFile, cfg.DeviceCertLifetime = w.caKeyFile(), lifetime
	s, err := server.Start(context.Background(), cfg)
	if err != nil {
		w.t.Fatalf("start controller: %v", err)
	}
	w.srv = s
	w.t.Cleanup(func() { s.Close() })
	<-s.Fleet().Ready()
	if w.api, err = api.NewClient(s.HTTPAddr().String(), ""); err != nil {
		w.t.Fatal(err)
	}
}

// TestRenewalRefusals: over MQTT the controller answers a request for
// another id, for a CA, with a weak key, or of a revoked device with an
// error and no certificate; and a device cannot even send a request on
// another device's topic. Both brokers.
func TestRenewalRefusals(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		w.startSigningController(time.Hour)
		d1 := w.pki.Connect(t, w.brokerURL(), "d1")
		d1.Subscribe(t, "thermo/d1/cert", 1)
		p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
		caTrue, _ := asn1.Marshal(struct{ IsCA bool }{true})
		ask := func(nonce string, key crypto.Signer, tmpl x509.CertificateRequest) protocol.CertReply {
			t.Helper()
			der, err := x509.CreateCertificateRequest(rand.Reader, &tmpl, key)
			if err != nil {
				t.Fatal(err)
			}
			payload, _ := protocol.CertRequest{V: 1, Nonce: nonce, CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}.Encode()
			d1.Publish(t, "thermo/d1/csr", 1, false, payload)
			m, _ := d1.WaitMatch(t, "answer "+nonce, func(m testenv.Message) bool {
				return m.Topic == "thermo/d1/cert" && strings.Contains(string(m.Payload), `"nonce":"`+nonce+`"`)
			})
			rep, err := protocol.DecodeCertReply(m.Payload)
			if err != nil {
				t.Fatal(err)
			}
			return rep
		}
		for _, tc := range []struct {
			name, want string
			key        crypto.Signer
			tmpl       x509.CertificateRequest
		}{
			{"another id", "the requester is", p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d2"}}},
			{"CA:TRUE", "CA certificate", p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"},
				ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caTrue}}}},
			{"weak key", "too weak", rsa1024, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}},
		} {
			rep := ask(strings.ReplaceAll(tc.name, " ", "-"), tc.key, tc.tmpl)
			if rep.Cert != "" || !strings.Contains(rep.Error, tc.want) {
				t.Errorf("%s: answer %+v, want an error saying %q", tc.name, rep, tc.want)
			}
		}
		// A good request is answered with a certificate.
		if rep := ask("good", p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}); rep.Cert == "" {
			t.Fatalf("good request: %+v", rep)
		}
		// d1 cannot publish on d2's csr topic: nothing comes back to d2.
		d2 := w.pki.Connect(t, w.brokerURL(), "d2")
		d2.Subscribe(t, "thermo/d2/cert", 1)
		d1.PublishErr("thermo/d2/csr", 1, false, []byte(`{"v":1,"nonce":"x","csr":"y"}`))
		// Revoked: the controller refuses to renew d1 (on Mosquitto d1
		// is still connected: its CRL is not involved here).
		if _, _, err := provisioning.Revoke(w.ctlDir, "", provisioning.Revocation{ID: "d1", Reason: "stolen"}); err != nil {
			t.Fatal(err)
		}
		if kind == mosquitto {
			eventually(t, "the controller refuses the revoked d1", func() (bool, string) {
				rep := askNoWait(t, d1, p256)
				return strings.Contains(rep, "revoked"), rep
			})
		} else {
			// The embedded broker cuts d1 at once.
			eventually(t, "the embedded broker cuts the revoked d1", func() (bool, string) {
				return !d1.Paho.IsConnectionOpen(), "still connected"
			})
		}
		if msgs := d2.Messages(); len(msgs) != 0 {
			t.Errorf("d2 received %v after d1 wrote on its csr topic", msgs)
		}
	})
}

// askNoWait sends a request as c and returns the answer's text, or what
// went wrong.
func askNoWait(t *testing.T, c *testenv.Client, key crypto.Signer) string {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	c.Reset()
	payload, _ := protocol.CertRequest{V: 1, Nonce: "again", CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}.Encode()
	if err := c.PublishErr("thermo/d1/csr", 1, false, payload); err != nil {
		return err.Error()
	}
	m, _, err := c.WaitErr(func(m testenv.Message) bool { return m.Topic == "thermo/d1/cert" }, 2*time.Second)
	if err != nil {
		return err.Error()
	}
	return string(m.Payload)
}

// TestCertEnrollAfterExpiry: a board whose certificate ended while it was
// off (the broker refuses it) renews at the controller's enrolment
// endpoint (EST simple re-enroll) and joins the fleet again; one whose
// certificate is revoked, or ended longer ago than the grace period, does
// not, and says so (cert_expiring). Both brokers.
func TestCertEnrollAfterExpiry(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		enrollAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
		args := []string{"--signing-key", w.caKeyFile(), "--device-cert-lifetime", "1h", "--enroll-listen", enrollAddr}
		if kind == mosquitto {
			args = append(args, "--enroll-cert", w.pki.ServerCert, "--enroll-key", w.pki.ServerKey)
		}
		ctl := startBinController(t, w, filepath.Join(t.TempDir(), "data"), args...)
		enrollURL := "https://localhost:" + strings.Split(enrollAddr, ":")[1]
		// d2 is revoked while off.
		out := command(t, ctl.bin, "pki", "revoke", "d2", "--data-dir", ctl.dataDir, "--reason", "stolen")
		if !strings.Contains(out, "Revoked device d2") {
			t.Fatalf("pki revoke: %s", out)
		}
		for _, tc := range []struct {
			id        string
			ago, life time.Duration
			renews    bool
		}{
			{"d1", 10 * time.Minute, 9 * time.Minute, true},     // ended a minute ago
			{"d2", 10 * time.Minute, 9 * time.Minute, false},    // revoked
			{"d3", 200 * 24 * time.Hour, 24 * time.Hour, false}, // ended 199 days ago: past the grace
		} {
			cert, key := shortLivedDevice(t, w, tc.id, tc.ago, tc.life)
			d := newBinThermostat(t, w, tc.id, "--enroll-url", enrollURL).withCert(cert, key).start()
			if tc.renews {
				st, c := d.synced()
				if st.CertExpires == nil || time.Until(*st.CertExpires) < 50*time.Minute {
					t.Errorf("%s: cert_expires %s after re-enrolment", tc.id, fmtTime(st.CertExpires))
				}
				_ = c
				continue
			}
			eventually(t, tc.id+" cannot renew and says so", func() (bool, string) {
				st, err := d.status()
				if err != nil {
					return false, err.Error()
				}
				var codes []string
				for _, a := range st.Alerts {
					codes = append(codes, a.Code)
				}
				return !st.Connected && slices.Contains(codes, protocol.AlertCertExpiring), fmt.Sprintf("connected %v alerts %v", st.Connected, codes)
			})
			if _, err := os.Stat(filepath.Join(ctl.dataDir, provisioning.IssuedDir, tc.id)); err == nil {
				t.Errorf("%s was issued a certificate", tc.id)
			}
		}
	})
}

// withCRL gives Mosquitto a crlfile: the CRL `pki revoke` refreshes in
// the CA's directory (the PKI directory of --dir).
func withCRL(w *world) {
	w.crlFile = filepath.Join(w.pki.CA.Dir, provisioning.CRLFile)
	if _, err := provisioning.WriteCRL(w.pki.CA, w.crlFile, 0); err != nil {
		w.t.Fatal(err)
	}
}

// TestRevokedDeviceCutOff: `controllerlite pki revoke --dir PKI` of a
// running device: the embedded broker cuts it at once and refuses it after;
// Mosquitto refuses it once it has read the refreshed CRL (SIGHUP) and a
// restart cut the connection; either way it cannot renew. Both brokers.
func TestRevokedDeviceCutOff(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind, withCRL)
		ctl := startBinController(t, w, filepath.Join(t.TempDir(), "data"), "--signing-key", w.caKeyFile())
		d1 := newBinThermostat(t, w, "d1").start()
		d2 := newBinThermostat(t, w, "d2").start()
		d1.synced()
		d2.synced()
		// d1's certificate as `pki device` leaves it in the PKI directory:
		// revoking the id finds its serial there for the CRL.
		c1, _ := w.pki.Client(t, "d1")
		bundle := filepath.Join(w.pki.CA.Dir, provisioning.DevicesDir, "d1")
		if err := os.MkdirAll(bundle, 0o700); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(c1); err != nil || os.WriteFile(filepath.Join(bundle, provisioning.DeviceCertFile), b, 0o644) != nil {
			t.Fatal(err)
		}
		start := time.Now()
		// No --data-dir: the list is kept beside ca.crt, where serve
		// (--ca PKI/ca.crt) reads it too.
		out := command(t, ctl.bin, "pki", "revoke", "d1", "--dir", w.pki.CA.Dir, "--reason", "stolen")
		if !strings.Contains(out, "CRL refreshed") {
			t.Errorf("pki revoke did not refresh the CRL:\n%s", out)
		}
		if kind == mosquitto {
			w.mq.Hangup()
			eventually(t, "Mosquitto refuses d1's certificate", func() (bool, string) {
				c, k := w.pki.Client(t, "d1")
				cl, err := testenv.Dial(w.brokerURL(), testenv.ClientOptions{CAFile: w.pki.CAFile, CertFile: c, KeyFile: k})
				if err == nil {
					cl.Close()
				}
				return err != nil && strings.Contains(err.Error(), "revoked"), errString(err)
			})
			w.mq.Restart() // cuts d1's connection, made before the CRL
		}
		eventually(t, "d1 is cut off", func() (bool, string) {
			st, err := d1.status()
			if err != nil {
				return false, err.Error()
			}
			c, err := w.ctl("d1")
			if err != nil {
				return false, err.Error()
			}
			return !st.Connected && !c.Online, fmt.Sprintf("thermostat connected %v, controller online %v", st.Connected, c.Online)
		})
		t.Logf("%s: d1 cut off %v after pki revoke", kind, time.Since(start).Round(time.Millisecond))
		// It stays out; d2 is not touched.
		d2.synced()
		w.set("d2", map[string]any{protocol.PropSetpoint: 19.5})
		d2.synced()
		if st, _ := d1.status(); st.Connected {
			t.Error("d1 reconnected")
		}
		eventually(t, "d1's log shows its connection refused", func() (bool, string) {
			return strings.Contains(d1.logText(), "connect failed"), "no refusal logged"
		})
	})
}

func errString(err error) string {
	if err == nil {
		return "connected"
	}
	return err.Error()
}

// TestDeleteDevice: `controllerlite delete` retires a device: revoked (the
// controller has a signing key), gone from the API, and its retained
// messages removed, so a controller restarted on the same data directory
// does not bring it back from them (nor from its own retained command);
// the other devices are untouched. Embedded: the board keeps running and
// is cut off. Mosquitto (not cut before a CRL refresh): the board is off.
func TestDeleteDevice(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		dataDir := filepath.Join(t.TempDir(), "data")
		ctl := startBinController(t, w, dataDir, "--signing-key", w.caKeyFile())
		d1 := newBinThermostat(t, w, "d1").start()
		d2 := newBinThermostat(t, w, "d2").start()
		d1.synced()
		d2.synced()
		w.set("d1", map[string]any{protocol.PropSetpoint: 22.5}) // a retained command
		d1.synced()
		if kind == mosquitto {
			d1.stop()
		}
		out := command(t, ctl.bin, "delete", "d1", "--http", ctl.apiAddr)
		if !strings.Contains(out, "d1 deleted and revoked") {
			t.Errorf("delete output:\n%s", out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if _, err := w.api.Device(ctx, "d1"); err == nil || !strings.Contains(err.Error(), "unknown device") {
			t.Errorf("GET d1 after delete: %v", err)
		}
		if _, err := w.api.Delete(ctx, "d1"); err == nil {
			t.Error("a second delete of d1 succeeded")
		}
		// Restart the controller on its data directory: d1 stays gone.
		ctl.kill9()
		ctl = startBinController(t, w, dataDir, "--signing-key", w.caKeyFile())
		d2.synced()
		w.set("d2", map[string]any{protocol.PropSetpoint: 18.5})
		d2.synced()
		devs, err := w.api.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range devs {
			ids = append(ids, d.ID)
		}
		if !slices.Equal(ids, []string{"d2"}) {
			t.Errorf("devices after delete and restart: %v, want [d2]", ids)
		}
		if kind == embedded {
			if st, err := d1.status(); err != nil || st.Connected {
				t.Errorf("d1 after delete: connected %v (%v)", st.Connected, err)
			}
		}
		list, err := provisioning.LoadRevocations(dataDir)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := list.RevokedID("d1"); !ok {
			t.Error("d1 not in the revocation list")
		}
	})
}

// TestServerCertReloadOnSIGHUP: the embedded broker's server certificate
// is replaced on disk and serve gets SIGHUP: new connections get the new
// certificate, the connected device is not interrupted; a bad file on a
// later SIGHUP is refused and the certificate in use stays.
func TestServerCertReloadOnSIGHUP(t *testing.T) {
	w := newBareWorld(t, embedded)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	issue := func() *x509.Certificate {
		certPEM, keyPEM, err := w.pki.CA.IssueServer(testenv.ServerHosts, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := provisioning.WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
		c, err := provisioning.ReadCertificate(certFile)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := issue()
	ctl := startBinController(t, w, filepath.Join(t.TempDir(), "data"), "--cert", certFile, "--key", keyFile)
	d1 := newBinThermostat(t, w, "d1").start()
	d1.synced()
	served := func() string {
		c, k := w.pki.Client(t, "probe")
		pair, _, err := provisioning.LoadKeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		roots, _ := provisioning.LoadCertPool(w.pki.CAFile)
		conn, err := tls.Dial("tcp", w.brokerAddr(), &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{pair}})
		if err != nil {
			return err.Error()
		}
		defer conn.Close()
		return provisioning.SerialHex(conn.ConnectionState().PeerCertificates[0].SerialNumber)
	}
	if got := served(); got != provisioning.SerialHex(first.SerialNumber) {
		t.Fatalf("served %s, want the first certificate", got)
	}
	lost := strings.Count(d1.logText(), "connection lost")
	second := issue()
	ctl.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "the broker serves the new certificate", func() (bool, string) {
		got := served()
		return got == provisioning.SerialHex(second.SerialNumber), "serves " + got
	})
	w.set("d1", map[string]any{protocol.PropSetpoint: 24})
	d1.synced()
	if n := strings.Count(d1.logText(), "connection lost"); n != lost {
		t.Errorf("the device lost its connection %d times across the reload", n-lost)
	}
	// A broken file: refused, the second certificate stays.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctl.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "the bad reload is logged", func() (bool, string) {
		return strings.Contains(ctl.logText(), "certificates not reloaded"), "not logged yet"
	})
	if got := served(); got != provisioning.SerialHex(second.SerialNumber) {
		t.Errorf("after a bad reload the broker serves %s", got)
	}
	ctl.alive()
}

// TestThermostatFinishesCutSwap: the thermostat binary starts on the files
// a kill left in the middle of a renewal's swap (see firmware/renew), finishes
// the swap and connects with the new pair.
func TestThermostatFinishesCutSwap(t *testing.T) {
	w := newBareWorld(t, embedded)
	startBinController(t, w, filepath.Join(t.TempDir(), "data"))
	for _, tc := range []struct {
		name     string
		keyMoved bool // the new key already renamed over the old one
	}{
		{"both new files written", false},
		{"new key in place", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "swap" + strconv.FormatBool(tc.keyMoved)
			cert, key := shortLivedDevice(t, w, id, time.Minute, 24*time.Hour)
			newCert, newKey, err := w.pki.CA.IssueClient(id, &provisioning.IssueOptions{Validity: 48 * time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			keyDest := key + ".next"
			if tc.keyMoved {
				keyDest = key
			}
			if err := os.WriteFile(keyDest, newKey, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cert+".next", newCert, 0o644); err != nil {
				t.Fatal(err)
			}
			d := newBinThermostat(t, w, id).withCert(cert, key).start()
			st, _ := d.synced()
			want, _ := provisioning.ReadCertificate(cert)
			if want == nil || st.CertExpires == nil || !st.CertExpires.Equal(want.NotAfter) || time.Until(want.NotAfter) < 46*time.Hour {
				t.Errorf("runs with certificate ending %s, want the new one's end (files: %v)", fmtTime(st.CertExpires), want != nil && time.Until(want.NotAfter) > 46*time.Hour)
			}
			if !strings.Contains(d.logText(), "certificate swap recovered") {
				t.Error("the recovery is not logged")
			}
			for _, f := range []string{cert + ".next", key + ".next"} {
				if _, err := os.Stat(f); err == nil {
					t.Errorf("%s left", f)
				}
			}
		})
	}
}
