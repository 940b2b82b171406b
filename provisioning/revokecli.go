package provisioning

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/thermofleet/thermo/internal/cli"
)

// MosquittoReloadHint says how to make Mosquitto read a new CRL, as
// verified with Mosquitto 2.0.11 (see docs/certificates.md).
const MosquittoReloadHint = "Make Mosquitto read it: send it SIGHUP (systemctl reload mosquitto, or kill -HUP PID); it then refuses the revoked certificate at every new connection. A device connected before stays connected until it reconnects: restart Mosquitto (systemctl restart mosquitto) to cut it at once."

func pkiRevoke(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("revoke", "controllerlite pki revoke DEVICE|SERIAL [--dir PKIDIR] [--data-dir DIR] [--reason TEXT]", stderr)
	dir := dirFlag(fs)
	dataDir := fs.String("data-dir", "", "the controller's data `DIR` (serve --data-dir) to keep the revocation list in;\ndefault the PKI directory, beside ca.crt (serve reads both: its --data-dir and its --ca's directory)")
	reason := fs.String("reason", "", "why, kept in the list and logged (e.g. stolen, sold, retired)")
	pos, err := cli.ParseN(fs, args, "DEVICE|SERIAL")
	if err != nil {
		return cli.HelpOK(err)
	}
	listDir := *dataDir
	if listDir == "" {
		listDir = *dir
	}
	r := Revocation{Reason: *reason}
	if IsSerial(pos[0]) {
		r.Serials = []string{pos[0]}
	} else {
		r.ID = pos[0]
	}
	e, added, err := Revoke(listDir, *dir, r)
	if err != nil {
		return err
	}
	var what string
	if e.ID == "" {
		what = "certificate " + e.Serials[0]
	} else {
		what = fmt.Sprintf("device %s (every certificate of it; known serials: %d)", e.ID, len(e.Serials))
	}
	if added {
		fmt.Fprintf(stdout, "Revoked %s in %s.\n", what, filepath.Join(listDir, RevokedFile))
	} else {
		fmt.Fprintf(stdout, "Already revoked: %s.\n", what)
	}
	fmt.Fprintln(stdout, "A running controller applies it within a quarter of a second: its broker cuts and refuses the certificate, renewal refuses it.")
	return refreshCRL(*dir, listDir, stdout)
}

// refreshCRL rewrites DIR/crl.pem when it exists (the fleet uses
// Mosquitto) and says how to make Mosquitto read it.
func refreshCRL(dir, dataDir string, stdout io.Writer) error {
	path := filepath.Join(dir, CRLFile)
	if !exists(path) {
		return nil
	}
	ca, err := LoadCA(dir)
	if err != nil {
		return fmt.Errorf("refresh %s: %w", path, err)
	}
	if _, err := WriteCRL(ca, path, 0, dataDir, dir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CRL refreshed: %s\n%s\n", path, MosquittoReloadHint)
	return nil
}

func pkiCRL(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("crl", "controllerlite pki crl [--dir DIR] [--data-dir DIR] [--out FILE] [--days N]", stderr)
	dir := dirFlag(fs)
	dataDir := fs.String("data-dir", "", "the controller's data `DIR`, whose revocation list the CRL states beside the PKI directory's")
	out := fs.String("out", "", "write the CRL here instead of DIR/"+CRLFile)
	days := fs.Int("days", int(DefaultCRLValidity/(24*time.Hour)), "the CRL's NextUpdate, in `DAYS` from now")
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	if *days < 1 {
		return cli.Usagef("--days %d: want 1 or more", *days)
	}
	ca, err := LoadCA(*dir)
	if err != nil {
		return err
	}
	path := *out
	if path == "" {
		path = filepath.Join(*dir, CRLFile)
	}
	if *dataDir != "" {
		if _, err := os.Stat(*dataDir); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("--data-dir %s: %w", *dataDir, err)
		}
	}
	list, err := WriteCRL(ca, path, time.Duration(*days)*24*time.Hour, *dataDir, *dir)
	if err != nil {
		return err
	}
	n := 0
	for _, e := range list.Entries {
		n += len(e.Serials)
	}
	fmt.Fprintf(stdout, "CRL with %d revoked certificates: %s\n", n, path)
	return nil
}
