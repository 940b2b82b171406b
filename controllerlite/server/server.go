// Package server is `controllerlite serve` as a library: it opens the
// store, starts the embedded broker (or connects to an external one),
// runs the fleet and serves the HTTP API, and shuts them down in order.
// The controllerlite binary is a thin layer of flags over Start; tests
// and the demo start a controller in-process with it.
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/controllerlite/enroll"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/hass"
	"github.com/thermofleet/thermo/controllerlite/history"
	"github.com/thermofleet/thermo/controllerlite/metrics"
	"github.com/thermofleet/thermo/controllerlite/ota"
	"github.com/thermofleet/thermo/controllerlite/renewal"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/controllerlite/store/pgstore"
	"github.com/thermofleet/thermo/controllerlite/web"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/transport"
)

// BrokerDir is where the embedded broker keeps its store inside the data
// directory unless Config.BrokerDataDir says otherwise. The controller's
// own store (store.FileName) sits beside it, so either can be wiped alone.
const BrokerDir = "broker"

// LinkBackoff spaces the controller's reconnects to an external broker:
// shorter than a device's (transport's default, capped at 1 s). After a
// broker restart no device's changes reach the controller before the
// controller is back, so its reconnect delay adds to every device's
// recovery (docs/mttr.md has the figures); and it is a single client, so
// retrying five times a second costs the broker nothing.
var LinkBackoff = transport.Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}

// LinkDialStagger: for the same reason, while its TCP connect to an
// external broker is unanswered (a partition, a frozen broker's full listen
// queue) the controller sends a fresh one every 200 ms, so it is back at
// most that long after the network is (see transport.Options.DialStagger).
const LinkDialStagger = 200 * time.Millisecond

// shutdownGrace bounds how long HTTP requests in flight may take at stop.
const shutdownGrace = 5 * time.Second

// Config is what `controllerlite serve` takes.
type Config struct {
	// CAFile is the fleet CA. With the embedded broker CertFile/KeyFile
	// are its server credentials; with Broker they are the controller's
	// client certificate, whose CN must be "controller".
	CAFile, CertFile, KeyFile string
	// DataDir holds the controller's store and, by default, the embedded
	// broker's (in DataDir/broker).
	DataDir string
	// BrokerDataDir overrides where the embedded broker keeps its store.
	BrokerDataDir string
	// BrokerClientQueue is how many packets may wait for each network
	// client of the embedded broker (broker.Options.ClientQueue): a
	// device needs a few, a controller connecting over the network three
	// per device. broker.DefaultClientQueue when 0.
	BrokerClientQueue int
	// HTTPAddr is the API's listen address, api.DefaultAddr if empty.
	HTTPAddr string
	// HTTPToken, if set, is required on the API; it must be set when
	// HTTPAddr is not a loopback address.
	HTTPToken string
	// Listen is the embedded broker's TLS listen address
	// (broker.DefaultListen if empty). Mutually exclusive with Broker.
	Listen string
	// Broker is an external broker, mqtts://HOST:PORT: no broker is
	// embedded.
	Broker string
	// Failover lists further nodes of Broker's cluster, tried in turn when
	// a connect fails (transport.Options.Failover). Only with Broker.
	Failover []string
	// KeepAlive of the link to an external broker (transport's default
	// when zero): a broker silent this long is dropped and reconnected.
	KeepAlive time.Duration
	// TopicRoot defaults to protocol.DefaultRoot.
	TopicRoot string
	// SigningKeyFile is the CA's private key (the key of CAFile): with it
	// the controller renews devices' certificates (over MQTT, and on
	// EnrollListen); without it renewal is off.
	SigningKeyFile string
	// DeviceCertLifetime is the life of the certificates it issues;
	// provisioning.DefaultDeviceValidity when 0.
	DeviceCertLifetime time.Duration
	// EnrollListen, when set, is the HTTPS listen address of the
	// enrolment endpoint (EST simple re-enroll): devices whose
	// certificate expired less than EnrollGrace ago renew there. It needs
	// SigningKeyFile.
	EnrollListen string
	// EnrollGrace is how long after its end a certificate is still taken
	// on EnrollListen; enroll.DefaultGrace when 0.
	EnrollGrace time.Duration
	// EnrollCertFile and EnrollKeyFile are the endpoint's server
	// certificate; CertFile and KeyFile when empty (with the embedded
	// broker they are the fleet's server certificate).
	EnrollCertFile, EnrollKeyFile string
	// HomeAssistant, when its Broker is set, bridges the fleet to Home
	// Assistant's broker (package hass).
	HomeAssistant hass.Options
	// Store, when set, is a PostgreSQL URL, postgres://USER@HOST:PORT/DB:
	// the devices' records live there (package store/pgstore) instead of
	// in DataDir's controller.db, and so does the telemetry history
	// (history.OpenPostgres), so every instance answers every device's.
	Store string
	// Instance and Lease: with Store and Broker, the controller is one of
	// several sharing the database (instances.go). Instance defaults to
	// NAME of the certificate's CN controller-NAME, Lease to
	// lease.DefaultLease.
	Instance string
	Lease    time.Duration
	// Metrics serves Prometheus metrics at /metrics on the API's listener,
	// with the API's authentication (package controllerlite/metrics).
	Metrics bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	// ReleasesDir, when set, turns over-the-air updates on: the release
	// server on OTAListen (ota.DefaultListen if empty) serves it with
	// OTACert/OTAKey (CertFile/KeyFile with the embedded broker), and
	// offers name OTAURL or the device's broker host.
	ReleasesDir, OTAListen, OTAURL, OTACert, OTAKey string
}

// Server is a running controller.
type Server struct {
	cfg    Config
	log    *slog.Logger
	st     deviceStore
	hist   *history.History
	fl     *fleet.Fleet
	br     *broker.Broker
	tc     *transport.Client
	revs   *provisioning.RevocationWatch
	renew  *renewal.Service
	enroll *enroll.Server
	// certs are the server certificates SIGHUP reloads.
	certs []*reloadableCert
	ln    net.Listener
	http  *http.Server
	ota   *ota.Manager
	rel   *ota.ReleaseServer
	// instance is the name among several controllers (instances.go).
	instance string
	cancel   context.CancelFunc
	wg       sync.WaitGroup // the fleet and transport goroutines
	errc     chan error     // a fatal error of a part
	done     chan struct{}  // closed when everything has stopped
	err      error
}

// Start checks cfg, starts every part and returns once the broker and the
// API accept connections. The controller runs until ctx is done or Close
// is called; Wait returns when it has stopped. Nothing is left open when
// Start fails.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if err := check(&cfg); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, errc: make(chan error, 2), done: make(chan struct{})}
	defer func() {
		if err != nil {
			s.shutdown()
		}
	}()

	// The API's listener first: a refused address or a missing token is
	// the likeliest mistake, and nothing else has been opened yet.
	if s.ln, err = api.Listen(cfg.HTTPAddr, cfg.HTTPToken); err != nil {
		return nil, err
	}
	if s.st, err = openStore(ctx, cfg); err != nil {
		return nil, err
	}
	if s.hist, err = openHistory(s.st, cfg.DataDir, history.Options{Logger: s.log.With("part", "history")}); err != nil {
		return nil, err
	}
	fopts := fleet.Options{Store: s.st, Telemetry: s.hist, TopicRoot: cfg.TopicRoot, Logger: s.log.With("part", "fleet")}
	var m *metrics.Metrics
	if cfg.Metrics {
		m = metrics.New(s.log.With("part", "metrics"))
		fopts.Meter = m
	}
	if s.fl, err = fleet.New(fopts); err != nil {
		return nil, err
	}

	// The revocation lists (`controllerlite pki revoke`) of the data
	// directory and of the CA's directory (the PKI directory, where `pki
	// revoke` without --data-dir records), re-read when they change: the
	// embedded broker refuses and cuts what they name, renewal refuses it.
	if s.revs, err = provisioning.NewRevocationWatch(s.log.With("part", "revocation"), cfg.DataDir, filepath.Dir(cfg.CAFile)); err != nil {
		return nil, err
	}
	if cfg.ReleasesDir != "" {
		if err = s.newOTA(); err != nil {
			return nil, err
		}
	}

	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if cfg.SigningKeyFile != "" {
		signer, err := provisioning.LoadSigner(cfg.CAFile, cfg.SigningKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--signing-key: %w", err)
		}
		if s.renew, err = renewal.New(renewal.Options{
			Signer: signer, Revocations: s.revs, DataDir: cfg.DataDir, Root: cfg.TopicRoot,
			Validity: cfg.DeviceCertLifetime, Logger: s.log.With("part", "renewal"),
		}); err != nil {
			return nil, err
		}
	} else {
		s.log.Warn("certificate renewal is off: no --signing-key; devices' certificates will expire and must be replaced by hand")
	}
	if cfg.Broker == "" {
		s.br, err = broker.New(broker.Options{
			Listen: cfg.Listen, CAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile,
			DataDir: cfg.BrokerDataDir, TopicRoot: cfg.TopicRoot, Logger: s.log.With("part", "broker"),
			Revoked: s.revoked, ClientQueue: cfg.BrokerClientQueue,
		})
		if err != nil {
			return nil, err
		}
		// What only the broker sees about a device's identity (a
		// certificate used by two boards, a certificate refused) becomes
		// the device's alert; the fleet logs every raise at ERROR.
		s.br.OnAlert(s.brokerAlert)
		if err = s.br.Start(); err != nil {
			return nil, err
		}
		if err = fleet.AttachBroker(s.fl, s.br); err != nil {
			return nil, err
		}
		if err = s.attachOTA(); err != nil {
			return nil, err
		}
	} else {
		s.tc, err = fleet.Connect(s.fl, transport.Options{
			Handler: s.otherMessage,
			Broker:  cfg.Broker, Failover: cfg.Failover, CAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile,
			KeepAlive: cfg.KeepAlive, Backoff: LinkBackoff, DialStagger: LinkDialStagger,
			OnTrouble: s.linkTrouble,
			Logger:    s.log.With("part", "transport"),
		})
		if err != nil {
			return nil, err
		}
		if err = s.startInstance(runCtx); err != nil {
			return nil, err
		}
		if err = s.attachOTA(); err != nil {
			return nil, err
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.tc.Run(runCtx) }()
	}
	if err = s.startRenewal(runCtx); err != nil {
		return nil, err
	}
	if err = s.startEnroll(); err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.fl.Run(runCtx) }()
	if s.br != nil {
		s.revs.OnChange(func(*provisioning.Revocations) { s.br.CutRevoked() })
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.revs.Run(runCtx, 0) }()
	if cfg.HomeAssistant.Broker != "" {
		bridge, err := hass.New(s.fl, cfg.HomeAssistant)
		if err != nil {
			return nil, err
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); bridge.Run(runCtx) }()
	}

	// The dashboard shares the API's listener: its pages write through
	// the API, which takes its session cookie in place of the token.
	dash := web.New(s.fl, web.Options{Token: cfg.HTTPToken, Logger: s.log.With("part", "web")})
	aopts := api.Options{Token: cfg.HTTPToken, History: s.hist, Logger: s.log.With("part", "api"),
		Session: dash.Session, Events: dash.Events(), Delete: s.retire}
	if s.ota != nil {
		s.runOTA(runCtx)
		aopts.OTA = s.ota
	}
	if m != nil {
		var b metrics.Broker
		if s.br != nil {
			b = s.br
		}
		m.Watch(s.fl, b)
		if s.hist != nil {
			m.WatchHistory(s.hist)
		}
		aopts.Metrics = m.Handler()
	}
	s.http = &http.Server{
		Handler:           dash.Handler(api.NewHandler(s.fl, aopts)),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.With("part", "http").Handler(), slog.LevelWarn),
	}
	s.http.RegisterOnShutdown(dash.Close) // the live feeds would hold Shutdown
	go func() {
		if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- fmt.Errorf("http: %w", err)
		}
	}()

	go func() {
		select {
		case <-ctx.Done():
		case s.err = <-s.errc:
			// Close sends nil: a requested stop, not an error.
			if s.err != nil {
				s.log.Error("stopping on a fatal error", "error", s.err)
			}
		}
		s.shutdown()
		close(s.done)
	}()
	return s, nil
}

// brokerAlert is the embedded broker's AlertFunc. A refused certificate
// alarms only a device the fleet knows: a handshake that failed creates no
// device (a connection that never got in is no member of the fleet, and
// an old certificate of a board since replaced must not bring it back). A
// duplicate identity is raised for any id: both connections got in.
func (s *Server) brokerAlert(id, code string, raised bool, detail string) {
	if !raised {
		s.fl.ClearAlert(id, code)
		return
	}
	if _, known := s.fl.Device(id); !known && code == protocol.AlertTLSRefused {
		s.log.Info("refused certificate of a device the fleet does not know: no alert", "device", id)
		return
	}
	s.fl.RaiseAlert(id, code, detail)
}

// startRenewal subscribes the renewal service to the devices' requests
// and runs it, when there is a signing key.
func (s *Server) startRenewal(ctx context.Context) error {
	if s.renew == nil {
		return nil
	}
	var publish renewal.Publisher
	if s.br != nil {
		if err := s.br.Subscribe(s.renew.Filter(), s.renew.Receive); err != nil {
			return fmt.Errorf("renewal: %w", err)
		}
		publish = func(_ context.Context, topic string, payload []byte, qos byte, retain bool) error {
			return s.br.Publish(topic, payload, retain, qos)
		}
	} else {
		if err := s.tc.Subscribe(s.renew.Filter(), 1); err != nil {
			return fmt.Errorf("renewal: %w", err)
		}
		publish = s.tc.Publish
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.renew.Run(ctx, publish) }()
	s.log.Info("certificate renewal on", "topic", s.renew.Filter())
	return nil
}

// startEnroll starts the enrolment endpoint when asked for.
func (s *Server) startEnroll() error {
	cfg := s.cfg
	if cfg.EnrollListen == "" {
		return nil
	}
	if s.renew == nil {
		return errors.New("--enroll-listen needs --signing-key: the endpoint signs renewals")
	}
	certFile, keyFile := cfg.EnrollCertFile, cfg.EnrollKeyFile
	if certFile == "" {
		certFile, keyFile = cfg.CertFile, cfg.KeyFile
	}
	cert, err := newReloadableCert(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("--enroll-cert: %w", err)
	}
	s.certs = append(s.certs, cert)
	s.enroll, err = enroll.Start(enroll.Options{
		Listen: cfg.EnrollListen, CAFile: cfg.CAFile, Certificate: cert.get, Renewal: s.renew,
		Grace: cfg.EnrollGrace, Logger: s.log.With("part", "enroll"),
	})
	return err
}

// EnrollAddr is the enrolment endpoint's address, nil without one.
func (s *Server) EnrollAddr() net.Addr {
	if s.enroll == nil {
		return nil
	}
	return s.enroll.Addr()
}

// RenewalOn reports whether the controller renews certificates.
func (s *Server) RenewalOn() bool { return s.renew != nil }

// revoked is the embedded broker's Options.Revoked: the list in force.
func (s *Server) revoked(cert *x509.Certificate) (string, bool) {
	e, ok := s.revs.Fresh().Check(cert)
	if !ok {
		return "", false
	}
	why := "revoked " + e.Time.Format(time.RFC3339)
	if e.Reason != "" {
		why += ": " + e.Reason
	}
	return why, true
}

// linkTrouble logs the troubles of the link to an external broker that a
// person must act on. The controller has no alerts of its own to carry
// them: the log says it, at ERROR when one begins.
func (s *Server) linkTrouble(t transport.Trouble, active bool, detail string) {
	if !active {
		s.log.Info("broker link: trouble over", "trouble", t)
		return
	}
	cure := "check the controller's certificate (its dates, its CA) and the broker's"
	if t == transport.TroubleTakeover {
		cure = "another process uses this controller's certificate: give each controller process its own (CN controller-<name>), or stop the other one"
	}
	s.log.Error("broker link: "+t.String(), "detail", detail, "cure", cure)
}

func check(cfg *Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CAFile == "" || cfg.CertFile == "" || cfg.KeyFile == "" {
		return errors.New("--ca, --cert and --key are all required")
	}
	if cfg.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	if cfg.Store != "" && !pgstore.IsURL(cfg.Store) {
		return errors.New("--store: want a PostgreSQL URL postgres://USER@HOST:PORT/DATABASE (without --store, the store is the data directory's)")
	}
	if err := checkInstance(cfg); err != nil {
		return err
	}
	if cfg.HomeAssistant.Broker != "" {
		if cfg.HomeAssistant.Logger == nil {
			cfg.HomeAssistant.Logger = cfg.Logger.With("part", "hass")
		}
		if err := cfg.HomeAssistant.Check(); err != nil {
			return err
		}
	}
	if cfg.TopicRoot == "" {
		cfg.TopicRoot = protocol.DefaultRoot
	}
	if err := protocol.CheckRoot(cfg.TopicRoot); err != nil {
		return fmt.Errorf("--topic-root: %w", err)
	}
	if cfg.KeepAlive != 0 {
		if err := transport.CheckKeepAlive(cfg.KeepAlive); err != nil {
			return fmt.Errorf("--keep-alive %v: %w", cfg.KeepAlive, err)
		}
	}
	if cfg.BrokerClientQueue < 0 {
		return fmt.Errorf("--broker-client-queue %d: want 1 packet or more", cfg.BrokerClientQueue)
	}
	if cfg.Broker == "" && len(cfg.Failover) > 0 {
		return errors.New("failover brokers need a first --broker")
	}
	if cfg.ReleasesDir != "" {
		if cfg.OTAListen == "" {
			cfg.OTAListen = ota.DefaultListen
		}
		if cfg.OTACert == "" && cfg.OTAKey == "" && cfg.Broker == "" {
			cfg.OTACert, cfg.OTAKey = cfg.CertFile, cfg.KeyFile
		}
		if cfg.OTACert == "" || cfg.OTAKey == "" {
			return errors.New("--releases-dir with --broker needs --ota-cert and --ota-key: a server certificate for the release server")
		}
	}
	if cfg.EnrollListen != "" && cfg.Broker != "" && cfg.EnrollCertFile == "" {
		return errors.New("--enroll-listen with --broker needs --enroll-cert and --enroll-key: a server certificate (controllerlite pki server), since --cert is the controller's client certificate")
	}
	if (cfg.EnrollCertFile == "") != (cfg.EnrollKeyFile == "") {
		return errors.New("--enroll-cert and --enroll-key go together")
	}
	if cfg.Broker != "" {
		if cfg.Listen != "" {
			return errors.New("--listen and --broker exclude each other: --listen runs the embedded broker, --broker connects to another")
		}
		for _, b := range append([]string{cfg.Broker}, cfg.Failover...) {
			if _, err := transport.ParseBroker(b); err != nil {
				return fmt.Errorf("--broker: %w", err)
			}
		}
		cn, err := provisioning.CommonName(cfg.CertFile)
		if err != nil {
			return fmt.Errorf("--cert: %w", err)
		}
		if !protocol.IsControllerID(cn) {
			return fmt.Errorf("--cert %s has CN %q: with --broker, --cert and --key must be a controller's client certificate (CN %q, or %q<name> for one of several), made by 'controllerlite pki controller [--name NAME]'", cfg.CertFile, cn, protocol.ControllerID, protocol.ControllerPrefix)
		}
		return nil
	}
	if cfg.Listen == "" {
		cfg.Listen = broker.DefaultListen
	}
	if cfg.BrokerDataDir == "" {
		cfg.BrokerDataDir = filepath.Join(cfg.DataDir, BrokerDir)
	}
	return nil
}

// deviceStore is the fleet's store, which the server closes.
type deviceStore interface {
	fleet.Store
	Close() error
}

// openStore opens PostgreSQL for --store, else the bbolt file in the data
// directory. (A nil *store.Store must not become a non-nil deviceStore.)
func openStore(ctx context.Context, cfg Config) (deviceStore, error) {
	if cfg.Store != "" {
		st, err := pgstore.Open(ctx, cfg.Store)
		if err != nil {
			return nil, fmt.Errorf("--store: %w", err)
		}
		return st, nil
	}
	st, err := store.Open(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// openHistory keeps the telemetry history in PostgreSQL beside the
// devices when the store is there, else in the data directory's file.
func openHistory(st deviceStore, dir string, o history.Options) (*history.History, error) {
	if pg, ok := st.(*pgstore.Store); ok {
		h, err := history.OpenPostgres(pg.Pool(), pg.Path(), o)
		if err != nil {
			return nil, fmt.Errorf("--store: %w", err)
		}
		return h, nil
	}
	return history.Open(dir, o)
}

// shutdown stops the parts in order: no new API requests, then the fleet
// (which writes what it has not yet stored), then the history (its
// samples waiting are written), then the broker (its clients' wills go
// out), then the store.
func (s *Server) shutdown() {
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		if err := s.http.Shutdown(ctx); err != nil {
			s.log.Warn("http shutdown", "error", err)
		}
		cancel()
	}
	// Shutdown closes only the listeners Serve has begun on: a stop right
	// after Start can come before the Serve goroutine runs, and the API's
	// port would stay open until it does. Closing twice is harmless.
	if s.ln != nil {
		s.ln.Close()
	}
	if s.enroll != nil {
		s.enroll.Close()
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.rel != nil {
		if err := s.rel.Close(); err != nil {
			s.log.Warn("release server close", "error", err)
		}
	}
	if s.hist != nil {
		if err := s.hist.Close(); err != nil {
			s.log.Warn("history close", "error", err)
		}
	}
	if s.br != nil {
		if err := s.br.Close(); err != nil {
			s.log.Warn("broker close", "error", err)
		}
	}
	if s.st != nil {
		if err := s.st.Close(); err != nil {
			s.log.Warn("store close", "error", err)
		}
	}
	s.log.Info("controller stopped")
}

// HTTPAddr is the address the API listens on.
func (s *Server) HTTPAddr() net.Addr { return s.ln.Addr() }

// BrokerAddr is the embedded broker's listen address, nil with an
// external broker.
func (s *Server) BrokerAddr() net.Addr {
	if s.br == nil {
		return nil
	}
	return s.br.Addr()
}

// Fleet is the running fleet, for reading state and waiting on Ready.
func (s *Server) Fleet() *fleet.Fleet { return s.fl }

// Wait blocks until the controller has stopped and returns the fatal error
// that stopped it, or nil if it was asked to stop.
func (s *Server) Wait() error {
	<-s.done
	return s.err
}

// Done is closed when the controller has stopped.
func (s *Server) Done() <-chan struct{} { return s.done }

// Close stops the controller (if its context has not already) and waits.
func (s *Server) Close() error {
	select {
	case s.errc <- nil:
	default:
	}
	return s.Wait()
}
