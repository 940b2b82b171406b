package provisioning

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/thermofleet/thermo/internal/atomicfile"
	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/protocol"
)

// Layout of a PKI directory managed by RunPKI.
const (
	ServerCertFile     = "server.crt"
	ServerKeyFile      = "server.key"
	ControllerCertFile = "controller.crt"
	ControllerKeyFile  = "controller.key"
	// DevicesDir holds one bundle directory per device: ca.crt, device.crt
	// and (unless the device made its own key) device.key.
	DevicesDir     = "devices"
	DeviceCertFile = "device.crt"
	DeviceKeyFile  = "device.key"
	// DefaultPKIDir is the PKI directory when --dir is not given.
	DefaultPKIDir = "pki"
)

const pkiUsage = `Usage: controllerlite pki COMMAND [flags]

Manage the fleet's certificates. Every command takes --dir DIR, the PKI
directory (default ./pki), and flags may come before or after arguments.
No command replaces an existing certificate or key without --force.
Lifetimes (--days on each command that issues): CA 10 years, server and
controller 1 year, device 90 days (devices renew themselves at two thirds).

Commands:
  init                      create the CA (ca.crt, ca.key), named "Thermofleet CA NAME" by --name NAME
                            (default a hash of its key); --force replaces an existing one
  server --host NAME ...    issue the broker certificate (server.crt, server.key) for every
                            host name and IP address given (one --host each, or comma-separated)
  device ID                 issue a device bundle in DIR/devices/ID: ca.crt, device.crt (CN=ID),
                            device.key (0600). ID: 1-63 of a-z, 0-9, '_', '-' (no capitals, no '/')
  controller [--name NAME]  issue the controller's client certificate (CN=controller), or with
                            --name the certificate of one of several controller processes
                            sharing the fleet (CN=controller-NAME: controller-NAME.crt, .key)
  sign CSRFILE              sign a request made on a device by 'thermostat csr' (the key stays
                            on the device); writes DIR/devices/ID/device.crt, or --out FILE
  mosquitto                 write mosquitto.conf and mosquitto.acl for this PKI
                            [--port 8883] [--topic-root thermo] [--bind ADDR] [--cert-dir DIR]
                            [--controller controller-NAME ...]; crlfile names DIR/crl.pem
  revoke DEVICE|SERIAL      revoke a device (every certificate of its id) or one certificate
                            (SERIAL: 16 or more hex digits, colons allowed), in DIR (beside ca.crt)
                            or the controller's --data-dir; a running controller applies it within
                            a quarter of a second; DIR/crl.pem is refreshed when there is one
                            [--reason TEXT]
  crl                       write DIR/crl.pem (--out FILE), the CRL of the revocations of DIR
                            and --data-dir

Run 'controllerlite pki COMMAND -h' for a command's flags.
`

// RunPKI runs `controllerlite pki ARGS...`: args are what follows "pki".
// Results and instructions go to stdout, usage to stderr; the error says what
// went wrong (and is not printed here).
func RunPKI(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, pkiUsage)
		return cli.Usagef("pki: a command is required")
	}
	cmd, rest := args[0], args[1:]
	run, ok := map[string]func([]string, io.Writer, io.Writer) error{
		"init":       pkiInit,
		"server":     pkiServer,
		"device":     pkiDevice,
		"controller": pkiController,
		"sign":       pkiSign,
		"mosquitto":  pkiMosquitto,
		"revoke":     pkiRevoke,
		"crl":        pkiCRL,
	}[cmd]
	switch {
	case ok:
		if err := run(rest, stdout, stderr); err != nil {
			return fmt.Errorf("pki %s: %w", cmd, err)
		}
		return nil
	case cli.IsHelp(cmd):
		fmt.Fprint(stdout, pkiUsage)
		return nil
	default:
		fmt.Fprint(stderr, pkiUsage)
		return cli.Usagef("pki: unknown command %q", cmd)
	}
}

func dirFlag(fs *flag.FlagSet) *string {
	return fs.String("dir", DefaultPKIDir, "PKI directory")
}

// daysFlag is the --days flag of a command that issues a certificate:
// its lifetime in days, def by default.
type daysFlag struct{ days int }

func newDaysFlag(fs *flag.FlagSet, def time.Duration) *daysFlag {
	d := &daysFlag{}
	fs.IntVar(&d.days, "days", int(def/(24*time.Hour)), "lifetime of the certificate in `DAYS`")
	return d
}

// validity is the lifetime asked for, or a usage error.
func (d *daysFlag) validity() (time.Duration, error) {
	if d.days < 1 || d.days > 100*365 {
		return 0, cli.Usagef("--days %d: want 1 to %d", d.days, 100*365)
	}
	return time.Duration(d.days) * 24 * time.Hour, nil
}

// issueOptions are IssueOptions with the lifetime asked for.
func (d *daysFlag) issueOptions() (*IssueOptions, error) {
	v, err := d.validity()
	if err != nil {
		return nil, err
	}
	return &IssueOptions{Validity: v}, nil
}

func pkiInit(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("init", "controllerlite pki init [--dir DIR] [--name NAME] [--force]", stderr)
	dir := dirFlag(fs)
	force := fs.Bool("force", false, "replace an existing CA: every certificate it issued stops being trusted")
	name := fs.String("name", "", "name of this fleet: the CA's Common Name is \""+CANamePrefix+" NAME\"\n(default: 8 hex digits of the CA key's SHA-256)")
	cn := fs.String("cn", "", "the CA's whole Common Name, instead of --name")
	days := newDaysFlag(fs, DefaultCAValidity)
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	if *cn != "" && *name != "" {
		return errors.New("give --name or --cn, not both")
	}
	validity, err := days.validity()
	if err != nil {
		return err
	}
	ca, err := InitCA(*dir, CAOptions{CommonName: *cn, Name: *name, Force: *force, Validity: validity})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CA %q created: %s (certificate), %s (private key, 0600: keep it secret and backed up)\n",
		ca.Cert.Subject.CommonName, ca.CertFile(), filepath.Join(*dir, CAKeyFile))
	fmt.Fprintf(stdout, "Next: controllerlite pki server --dir %s --host BROKER_HOSTNAME\n", *dir)
	return nil
}

func pkiServer(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("server", "controllerlite pki server --host NAME [--host NAME ...] [--dir DIR] [--force]", stderr)
	dir := dirFlag(fs)
	var hosts cli.StringList
	fs.Var(&hosts, "host", "host name or IP address clients use to reach the broker (repeatable; the first is also the CN)")
	force := fs.Bool("force", false, "replace an existing server certificate")
	days := newDaysFlag(fs, DefaultServerValidity)
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	opts, err := days.issueOptions()
	if err != nil {
		return err
	}
	if len(hosts) == 0 {
		fs.Usage()
		return errors.New("at least one --host is required: the name or address clients connect to")
	}
	ca, err := LoadCA(*dir)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(*dir, ServerCertFile), filepath.Join(*dir, ServerKeyFile)
	if err := refuseExisting(*force, certFile, keyFile); err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.IssueServer(hosts, opts)
	if err != nil {
		return err
	}
	if err := WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Server certificate for %s: %s, key %s (0600)\n", strings.Join(hosts, ", "), certFile, keyFile)
	fmt.Fprintf(stdout, "Embedded broker: controllerlite serve --ca %s --cert %s --key %s ...\n",
		filepath.Join(*dir, CACertFile), certFile, keyFile)
	fmt.Fprintf(stdout, "Mosquitto:       controllerlite pki mosquitto --dir %s\n", *dir)
	return nil
}

func pkiDevice(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("device", "controllerlite pki device ID [--dir DIR] [--force]", stderr)
	dir := dirFlag(fs)
	force := fs.Bool("force", false, "replace an existing bundle for this device")
	days := newDaysFlag(fs, DefaultDeviceValidity)
	pos, err := cli.ParseN(fs, args, "device ID")
	if err != nil {
		return cli.HelpOK(err)
	}
	opts, err := days.issueOptions()
	if err != nil {
		return err
	}
	id := pos[0]
	if id == ControllerCN {
		return fmt.Errorf("%w: use `controllerlite pki controller --dir %s`", protocol.ErrReservedID, *dir)
	}
	if err := protocol.CheckDeviceID(id); err != nil {
		return err
	}
	ca, err := LoadCA(*dir)
	if err != nil {
		return err
	}
	bundle := filepath.Join(*dir, DevicesDir, id)
	certFile, keyFile := filepath.Join(bundle, DeviceCertFile), filepath.Join(bundle, DeviceKeyFile)
	if err := refuseExisting(*force, certFile, keyFile); err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.IssueClient(id, opts)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(bundle, CACertFile), ca.CertPEM, CertFileMode); err != nil {
		return err
	}
	if err := WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Device bundle for %s: %s (%s, %s, %s 0600)\n", id, bundle, CACertFile, DeviceCertFile, DeviceKeyFile)
	printThermostatHint(stdout, bundle)
	return nil
}

func printThermostatHint(stdout io.Writer, bundle string) {
	fmt.Fprintf(stdout, "Copy %s to the device (e.g. /etc/thermostat, key kept 0600) and run:\n", bundle)
	fmt.Fprintf(stdout, "  thermostat run --broker mqtts://BROKER_HOST:8883 --ca /etc/thermostat/%s --cert /etc/thermostat/%s --key /etc/thermostat/%s\n",
		CACertFile, DeviceCertFile, DeviceKeyFile)
}

func pkiController(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("controller", "controllerlite pki controller [--name NAME] [--dir DIR] [--force]", stderr)
	dir := dirFlag(fs)
	name := fs.String("name", "", "`NAME` of one of several controller processes sharing the fleet: CN controller-NAME,\nfiles controller-NAME.crt and controller-NAME.key (default: the one controller, CN controller)")
	force := fs.Bool("force", false, "replace an existing controller certificate")
	days := newDaysFlag(fs, DefaultControllerValidity)
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	cn, err := controllerCN(*name)
	if err != nil {
		return cli.Usagef("--name: %v", err)
	}
	opts, err := days.issueOptions()
	if err != nil {
		return err
	}
	ca, err := LoadCA(*dir)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(*dir, ControllerCertFile), filepath.Join(*dir, ControllerKeyFile)
	if cn != ControllerCN {
		certFile, keyFile = filepath.Join(*dir, cn+".crt"), filepath.Join(*dir, cn+".key")
	}
	if err := refuseExisting(*force, certFile, keyFile); err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.IssueClient(cn, opts)
	if err != nil {
		return err
	}
	if err := WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Controller client certificate (CN=%s): %s, key %s (0600)\n", cn, certFile, keyFile)
	if cn != ControllerCN {
		fmt.Fprintf(stdout, "Mosquitto grants it the controller's rights once listed: controllerlite pki mosquitto --controller %s ...\n", cn)
	}
	fmt.Fprintf(stdout, "With an external broker: controllerlite serve --broker mqtts://BROKER_HOST:8883 --ca %s --cert %s --key %s ...\n",
		filepath.Join(*dir, CACertFile), certFile, keyFile)
	return nil
}

// controllerCN is the CN of `pki controller --name name`: "controller"
// without a name, else "controller-<name>" (PROTOCOL.md, Parties).
func controllerCN(name string) (string, error) {
	if name == "" {
		return ControllerCN, nil
	}
	if strings.HasPrefix(name, protocol.ControllerPrefix) {
		return "", fmt.Errorf("%q: give the name alone (--name %s makes CN %s)", name, strings.TrimPrefix(name, protocol.ControllerPrefix), name)
	}
	cn := protocol.ControllerPrefix + name
	if err := protocol.CheckControllerID(cn); err != nil {
		return "", err
	}
	return cn, nil
}

func pkiSign(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("sign", "controllerlite pki sign CSRFILE [--dir DIR] [--out FILE] [--force]", stderr)
	dir := dirFlag(fs)
	out := fs.String("out", "", "write the certificate here instead of DIR/devices/ID/device.crt")
	force := fs.Bool("force", false, "replace an existing certificate for this device")
	days := newDaysFlag(fs, DefaultDeviceValidity)
	pos, err := cli.ParseN(fs, args, "CSRFILE")
	if err != nil {
		return cli.HelpOK(err)
	}
	opts, err := days.issueOptions()
	if err != nil {
		return err
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	csrPEM, err := io.ReadAll(io.LimitReader(f, maxCSRSize+1))
	f.Close()
	if err != nil {
		return fmt.Errorf("read %s: %w", pos[0], err)
	}
	ca, err := LoadCA(*dir)
	if err != nil {
		return err
	}
	certPEM, id, err := ca.SignCSR(csrPEM, opts)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	if *out != "" {
		if err := refuseExisting(*force, *out); err != nil {
			return err
		}
		if err := atomicfile.WriteFile(*out, certPEM, CertFileMode); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Certificate for device %s: %s (CA certificate: %s)\n", id, *out, ca.CertFile())
		return nil
	}
	bundle := filepath.Join(*dir, DevicesDir, id)
	certFile, keyFile := filepath.Join(bundle, DeviceCertFile), filepath.Join(bundle, DeviceKeyFile)
	// A key left by an earlier `pki device` does not match this
	// certificate, so it goes, but only with --force: it may be the only
	// copy of a key a device still uses.
	if err := refuseExisting(*force, certFile, keyFile); err != nil {
		return err
	}
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return err
	}
	if err := os.Remove(keyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(bundle, CACertFile), ca.CertPEM, CertFileMode); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(certFile, certPEM, CertFileMode); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Certificate for device %s: %s (with %s)\n", id, certFile, CACertFile)
	fmt.Fprintf(stdout, "Copy %s and %s to the device, beside the %s made by 'thermostat csr', and run:\n", DeviceCertFile, CACertFile, DeviceKeyFile)
	fmt.Fprintf(stdout, "  thermostat run --broker mqtts://BROKER_HOST:8883 --ca /etc/thermostat/%s --cert /etc/thermostat/%s --key /etc/thermostat/%s\n",
		CACertFile, DeviceCertFile, DeviceKeyFile)
	return nil
}

func pkiMosquitto(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("mosquitto", "controllerlite pki mosquitto [--dir DIR] [--port 8883] [--topic-root thermo] [--bind ADDR] [--cert-dir DIR] [--controller controller-NAME ...]", stderr)
	dir := dirFlag(fs)
	port := fs.Int("port", DefaultMQTTSPort, "TLS listener port")
	root := fs.String("topic-root", protocol.DefaultRoot, "first topic level of every protocol topic")
	bind := fs.String("bind", "", "listen on this address only (default: every interface)")
	certDir := fs.String("cert-dir", "", "directory Mosquitto reads ca.crt, server.crt, server.key and the ACL from,\nwhen you install them elsewhere (e.g. /etc/mosquitto/certs); default the PKI directory")
	var controllers []string
	fs.Func("controller", "CN of a further controller process sharing the fleet (controller-NAME), given the\ncontroller's rights; repeat for each", func(cn string) error {
		controllers = append(controllers, cn)
		return nil
	})
	dataDir := fs.String("data-dir", "", "the controller's data `DIR`: the CRL written (when DIR/"+CRLFile+" is missing) states its revocations")
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	for _, f := range []string{CACertFile, ServerCertFile, ServerKeyFile} {
		if !exists(filepath.Join(*dir, f)) {
			return fmt.Errorf("%s missing: run `controllerlite pki init` and `controllerlite pki server --host NAME` with --dir %s first", filepath.Join(*dir, f), *dir)
		}
	}
	from := *certDir
	if from == "" {
		abs, err := filepath.Abs(*dir)
		if err != nil {
			return err
		}
		from = abs
	}
	// Mosquitto refuses to start with a crlfile that is missing: write
	// one (empty, or the controller's list) unless there is one already.
	crlFile := filepath.Join(*dir, CRLFile)
	if !exists(crlFile) {
		ca, err := LoadCA(*dir)
		if err != nil {
			return fmt.Errorf("write %s: %w", crlFile, err)
		}
		if _, err := WriteCRL(ca, crlFile, 0, *dataDir, *dir); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Wrote %s (the CRL; refresh it with `controllerlite pki crl`, `pki revoke` does).\n", crlFile)
	}
	confFile, aclFile, err := WriteMosquittoConfig(*dir, MosquittoOptions{
		CRLFile:     filepath.Join(from, CRLFile),
		Port:        *port,
		BindAddress: *bind,
		CAFile:      filepath.Join(from, CACertFile),
		CertFile:    filepath.Join(from, ServerCertFile),
		KeyFile:     filepath.Join(from, ServerKeyFile),
		ACLFile:     filepath.Join(from, MosquittoACLFile),
		TopicRoot:   *root,
		Controllers: controllers,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Wrote %s and %s (listener %d, topic root %q).\n", confFile, aclFile, *port, *root)
	if *certDir != "" {
		fmt.Fprintf(stdout, "Install ca.crt, server.crt, server.key, %s and %s into %s.\n", CRLFile, MosquittoACLFile, *certDir)
	}
	fmt.Fprintf(stdout, "Mosquitto drops to user \"mosquitto\": that user must be able to read %s, e.g.\n", filepath.Join(from, ServerKeyFile))
	fmt.Fprintf(stdout, "  chown mosquitto %s\n", filepath.Join(from, ServerKeyFile))
	fmt.Fprintf(stdout, "Then run: mosquitto -c %s\n", confFile)
	fmt.Fprintf(stdout, "(or copy it to /etc/mosquitto/conf.d/ and restart the mosquitto service)\n")
	return nil
}

// refuseExisting keeps a certificate or key that is probably in use
// unless forced. Each path is checked on its own: a key whose certificate
// is missing (deleted, or never copied back) may still be a device's only
// copy of it.
func refuseExisting(force bool, paths ...string) error {
	if force {
		return nil
	}
	for _, path := range paths {
		if exists(path) {
			return fmt.Errorf("%s already exists (use --force to replace it)", path)
		}
	}
	return nil
}

const csrUsage = "thermostat csr [--id ID] [--out DIR] [--days N] [--force]"

// RunCSR runs `thermostat csr ARGS...` on a device: it makes the device's
// private key (DIR/device.key, 0600) and a certificate request (DIR/ID.csr)
// for `controllerlite pki sign`. The key never leaves the device. The id
// defaults to the host name.
func RunCSR(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("csr", csrUsage, stderr)
	id := fs.String("id", "", "device id, the certificate's CN (default: this host's name)")
	out := fs.String("out", ".", "directory for the key and the request")
	force := fs.Bool("force", false, "replace an existing device.key (the certificate issued for it stops working)")
	days := newDaysFlag(fs, DefaultDeviceValidity)
	if _, err := cli.ParseN(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("csr: %w", err)
	}
	// A request cannot carry a lifetime: the signer gives it, so the
	// command printed for the signer carries --days.
	if _, err := days.validity(); err != nil {
		return fmt.Errorf("csr: %w", err)
	}
	if *id == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("csr: no --id and no host name: %w", err)
		}
		*id = strings.ToLower(host)
		if err := protocol.CheckDeviceID(*id); err != nil {
			return fmt.Errorf("csr: the host name is not a valid device id, give one with --id: %w", err)
		}
	}
	keyFile, csrFile := filepath.Join(*out, DeviceKeyFile), filepath.Join(*out, *id+".csr")
	if !*force && exists(keyFile) {
		return fmt.Errorf("csr: %s already exists: its certificate would stop working (use --force to replace it)", keyFile)
	}
	csrPEM, keyPEM, err := NewCSR(*id)
	if err != nil {
		return fmt.Errorf("csr: %w", err)
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return fmt.Errorf("csr: %w", err)
	}
	if err := atomicfile.WriteFile(keyFile, keyPEM, KeyFileMode); err != nil {
		return fmt.Errorf("csr: %w", err)
	}
	if err := atomicfile.WriteFile(csrFile, csrPEM, CertFileMode); err != nil {
		return fmt.Errorf("csr: %w", err)
	}
	fmt.Fprintf(stdout, "Key %s (0600, stays on this device) and request %s for device %q.\n", keyFile, csrFile, *id)
	fmt.Fprintf(stdout, "Copy %s to the controller host and run: controllerlite pki sign %s --days %d\n", csrFile, filepath.Base(csrFile), days.days)
	fmt.Fprintf(stdout, "Bring back %s and %s into %s, then run:\n", DeviceCertFile, CACertFile, *out)
	fmt.Fprintf(stdout, "  thermostat run --broker mqtts://BROKER_HOST:8883 --ca %s --cert %s --key %s\n",
		filepath.Join(*out, CACertFile), filepath.Join(*out, DeviceCertFile), keyFile)
	return nil
}
