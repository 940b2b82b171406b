package server

// The `controllerlite serve` command line, here so that every program that
// runs the controller (controllerlite, and mttr's embedded-serve child)
// takes exactly the same flags and prints the same lines.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/internal/cli"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/controllerlite/hass"
	"github.com/thermofleet/thermo/controllerlite/lease"
	"github.com/thermofleet/thermo/controllerlite/ota"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/systemd"
	"github.com/thermofleet/thermo/transport"
)

// Flags are the parsed flags of `controllerlite serve`.
type Flags struct {
	cfg            Config
	tokenFile      string
	level          string
	haPasswordFile string
	brokers        cli.StringList // --broker, repeated: Broker then Failover
}

// ParseFlags parses serve's flags; `install` checks its flags with it
// too, so a typo fails at install time instead of in a restart loop.
func ParseFlags(args []string, stderr io.Writer) (Flags, error) {
	var o Flags
	cfg, tokenFile, level := &o.cfg, &o.tokenFile, &o.level
	fs := cli.NewFlags("serve", "controllerlite serve --ca FILE --cert FILE --key FILE --data-dir DIR [--http ADDR] [--listen ADDR | --broker mqtts://HOST:PORT]", stderr)
	fs.StringVar(&cfg.CAFile, "ca", "", "fleet CA certificate `FILE`")
	fs.StringVar(&cfg.CertFile, "cert", "", "certificate `FILE`: the embedded broker's server certificate, or with --broker the controller's client certificate (CN controller)")
	fs.StringVar(&cfg.KeyFile, "key", "", "private key `FILE` of --cert")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "`DIR` of the controller's store (and the embedded broker's, in DIR/broker)")
	fs.StringVar(&cfg.Store, "store", "", "PostgreSQL `URL` postgres://USER@HOST:PORT/DATABASE of the devices' records instead of DATA-DIR's controller.db\n(password from PGPASSWORD or ~/.pgpass, not the command line; telemetry history stays in DATA-DIR)")
	fs.StringVar(&cfg.Instance, "instance", "", "`NAME` of this controller among several sharing --store with --broker (default: NAME of the certificate's CN controller-NAME)")
	fs.DurationVar(&cfg.Lease, "lease", lease.DefaultLease, "with --store and --broker: the instance's lease; a stopped instance's devices move to the others within two leases")
	fs.StringVar(&cfg.BrokerDataDir, "broker-data-dir", "", "`DIR` of the embedded broker's store (default DATA-DIR/broker)")
	fs.IntVar(&cfg.BrokerClientQueue, "broker-client-queue", broker.DefaultClientQueue, "`PACKETS` the embedded broker queues for each network client; one more is dropped (logged, counted in /metrics).\nA device needs a few; a controller connecting over the network to this broker is sent three per device at once when it subscribes:\ngive it three times the fleet's size (each slot costs 8 bytes per connection)")
	fs.StringVar(&cfg.HTTPAddr, "http", api.DefaultAddr, "HTTP API listen `ADDR`; off loopback it requires --http-token-file")
	fs.StringVar(tokenFile, "http-token-file", "", "`FILE` holding the API's bearer token")
	fs.BoolVar(&cfg.Metrics, "metrics", false, "serve Prometheus metrics at /metrics on the --http listener (with its token)")
	fs.StringVar(&cfg.Listen, "listen", "", "embedded broker's TLS listen `ADDR` (default :8883 unless --broker)")
	fs.Var(&o.brokers, "broker", "external broker mqtts://HOST:PORT instead of the embedded one; repeat it (or separate with commas) for the nodes of a broker cluster, tried in turn")
	fs.DurationVar(&cfg.KeepAlive, "keep-alive", transport.DefaultKeepAlive, "MQTT keep-alive of the link to --broker; a broker silent this long is dropped and reconnected")
	fs.StringVar(&cfg.TopicRoot, "topic-root", protocol.DefaultRoot, "first topic level")
	fs.StringVar(level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&cfg.SigningKeyFile, "signing-key", "", "the fleet CA's private key `FILE` (the key of --ca): devices renew their certificates through the controller; without it renewal is off")
	fs.DurationVar(&cfg.DeviceCertLifetime, "device-cert-lifetime", provisioning.DefaultDeviceValidity, "life of the device certificates the controller issues")
	fs.StringVar(&cfg.EnrollListen, "enroll-listen", "", "HTTPS listen `ADDR` of the enrolment endpoint (EST simple re-enroll) where a device whose certificate expired renews; needs --signing-key")
	fs.DurationVar(&cfg.EnrollGrace, "enroll-grace", 180*24*time.Hour, "how long after its end an expired device certificate is still taken on --enroll-listen")
	fs.StringVar(&cfg.EnrollCertFile, "enroll-cert", "", "server certificate `FILE` of --enroll-listen (default --cert)")
	fs.StringVar(&cfg.EnrollKeyFile, "enroll-key", "", "private key `FILE` of --enroll-cert (default --key)")
	ha := &cfg.HomeAssistant
	fs.StringVar(&ha.Broker, "ha-broker", "", "Home Assistant's MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT: publish the fleet there with MQTT discovery (docs/home-assistant.md)")
	fs.StringVar(&ha.Username, "ha-username", "", "user `NAME` on --ha-broker")
	fs.StringVar(&o.haPasswordFile, "ha-password-file", "", "`FILE` holding the password of --ha-username (not readable by every user)")
	fs.StringVar(&ha.CAFile, "ha-ca", "", "CA certificate `FILE` of an mqtts:// --ha-broker with a private CA (default: the system's roots)")
	fs.StringVar(&ha.Prefix, "ha-prefix", hass.DefaultPrefix, "Home Assistant's discovery prefix")
	fs.StringVar(&ha.TopicRoot, "ha-topic-root", hass.DefaultTopicRoot, "first topic level of the devices' state and command topics on --ha-broker")
	fs.StringVar(&cfg.ReleasesDir, "releases-dir", "", "`DIR` of signed thermostat releases (binary and BINARY.manifest.json) to serve and roll out; OTA is off without it")
	fs.StringVar(&cfg.OTAListen, "ota-listen", "", "HTTPS listen `ADDR` of the release server, mutual TLS with the fleet CA (default "+ota.DefaultListen+" with --releases-dir)")
	fs.StringVar(&cfg.OTAURL, "ota-url", "", "base `URL` devices fetch releases from (default https://<the device's broker host>:<--ota-listen port>)")
	fs.StringVar(&cfg.OTACert, "ota-cert", "", "server certificate `FILE` of the release server (default --cert with the embedded broker)")
	fs.StringVar(&cfg.OTAKey, "ota-key", "", "private key `FILE` of --ota-cert")
	if pos, err := cli.Parse(fs, args); err != nil {
		return o, err
	} else if len(pos) > 0 {
		fs.Usage()
		return o, fmt.Errorf("%w: serve takes no arguments, got %q", cli.ErrUsage, pos[0])
	}
	if len(o.brokers) > 0 {
		cfg.Broker, cfg.Failover = o.brokers[0], o.brokers[1:]
	}
	if ha.Broker == "" && (ha.Username != "" || o.haPasswordFile != "" || ha.CAFile != "") {
		return o, fmt.Errorf("%w: --ha-username, --ha-password-file and --ha-ca need --ha-broker", cli.ErrUsage)
	}
	if cfg.BrokerClientQueue < 1 {
		return o, fmt.Errorf("%w: --broker-client-queue %d: want 1 packet or more", cli.ErrUsage, cfg.BrokerClientQueue)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return o, fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", cli.ErrUsage, *level)
	}
	return o, nil
}

// Command is `controllerlite serve`: it runs the controller until ctx is
// done, printing the lines scripts and tests read ("controllerlite: mqtt
// broker listening on ADDR", "... http listening on ADDR", "...: ready")
// on stdout and its log on stderr.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := ParseFlags(args, stderr)
	if err != nil {
		return err
	}
	cfg, tokenFile := o.cfg, o.tokenFile
	var lv slog.Level
	lv.UnmarshalText([]byte(o.level)) // checked by ParseFlags
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	if tokenFile != "" {
		tok, err := api.ReadTokenFile(tokenFile)
		if err != nil {
			return err
		}
		cfg.HTTPToken = tok
	}
	if o.haPasswordFile != "" {
		pw, err := hass.ReadPasswordFile(o.haPasswordFile)
		if err != nil {
			return fmt.Errorf("serve: --ha-password-file: %w", err)
		}
		cfg.HomeAssistant.Password = pw
	}

	if err := checkCertificates(cfg, time.Now()); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	// SIGHUP reloads the certificates: a renewed server certificate
	// takes over without interrupting the fleet. Caught from here on, so
	// that one sent while starting does not kill the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	s, err := Start(ctx, cfg)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	// These lines are read by scripts and tests: keep their shape.
	if a := s.BrokerAddr(); a != nil {
		fmt.Fprintf(stdout, "controllerlite: mqtt broker listening on %s\n", a)
	} else {
		fmt.Fprintf(stdout, "controllerlite: mqtt broker %s (external)\n", strings.Join(append([]string{cfg.Broker}, cfg.Failover...), ","))
	}
	fmt.Fprintf(stdout, "controllerlite: http listening on %s\n", s.HTTPAddr())
	if a := s.EnrollAddr(); a != nil {
		fmt.Fprintf(stdout, "controllerlite: enroll listening on %s\n", a)
	}
	if !s.RenewalOn() {
		fmt.Fprintln(stdout, "controllerlite: certificate renewal off (no --signing-key): device certificates will expire")
	}
	go func() {
		for {
			select {
			case <-s.Done():
				return
			case <-hup:
				if err := s.Reload(); err != nil {
					cfg.Logger.Error("SIGHUP: certificates not reloaded, the ones in use stay", "err", err)
				}
			}
		}
	}()
	if a := s.OTAAddr(); a != nil {
		fmt.Fprintf(stdout, "controllerlite: ota listening on %s\n", a)
	}
	// Under systemd (Type=notify): READY=1 once the fleet has read the
	// retained state, WATCHDOG=1 only while it is running; no-op elsewhere.
	supervised := make(chan struct{})
	go func() {
		defer close(supervised)
		health := func() error {
			select {
			case <-s.Done():
				return errors.New("controller stopped")
			default:
			}
			select {
			case <-s.Fleet().Ready():
				return nil
			default:
				return errors.New("fleet not ready: reading retained state")
			}
		}
		if err := systemd.Supervise(ctx, health, cfg.Logger); err != nil {
			cfg.Logger.Error("systemd supervision off", "err", err)
		}
	}()
	defer func() { <-supervised }()
	select {
	case <-s.Fleet().Ready():
		fmt.Fprintln(stdout, "controllerlite: ready")
	case <-s.Done():
	}
	if err := s.Wait(); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// checkCertificates holds --ca, --cert and --key to the rules of their use
// before anything is opened or written: otherwise a device certificate
// served as the broker's, or a --ca that is no CA, shows only as TLS errors
// on every device, logged on the devices. It leaves missing flags and
// contradictions (--listen with --broker) to server.Start, which names them.
func checkCertificates(cfg Config, now time.Time) error {
	if cfg.CAFile == "" || cfg.CertFile == "" || cfg.KeyFile == "" || cfg.Broker != "" && cfg.Listen != "" {
		return nil
	}
	c := provisioning.CertCheck{CAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, Now: now}
	if cfg.Broker != "" {
		c.Use = provisioning.UseController
	} else {
		c.Use, c.Listen = provisioning.UseServer, cfg.Listen
	}
	if _, err := provisioning.CheckCertificates(c); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	return nil
}
