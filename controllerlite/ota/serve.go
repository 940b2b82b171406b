package ota

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// DefaultListen is the release server's address when --releases-dir is
// given without --ota-listen.
const DefaultListen = ":8884"

// ReleasesPath prefixes every release URL.
const ReleasesPath = "/releases/"

// ReleaseServer serves the releases directory over HTTPS to clients with
// a certificate of the fleet: a device (CN a device id) or a controller.
// Range requests are answered, so a device resumes a broken download.
type ReleaseServer struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// ServerOptions configure a ReleaseServer.
type ServerOptions struct {
	// Listen is the address; Dir the releases directory.
	Listen, Dir string
	// CAFile is the fleet CA that client certificates must chain to.
	CAFile string
	// Certificate returns the server certificate for each handshake, so
	// that it can be replaced while the server runs (serve's SIGHUP).
	Certificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	Logger      *slog.Logger
}

// ListenReleases opens the release server with the controller's server
// certificate, requiring client certificates issued by the fleet CA.
func ListenReleases(o ServerOptions) (*ReleaseServer, error) {
	log, dir := o.Logger, o.Dir
	if log == nil {
		log = slog.Default()
	}
	if o.Certificate == nil {
		return nil, errors.New("release server: no server certificate")
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("--releases-dir: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("--releases-dir %s is not a directory", dir)
	}
	pool, err := provisioning.LoadCertPool(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("release server: %w", err)
	}
	conf := &tls.Config{
		ClientCAs:      pool,
		ClientAuth:     tls.RequireAndVerifyClientCert,
		GetCertificate: o.Certificate,
		MinVersion:     tls.VersionTLS12,
	}
	// Only the fleet's own identities: the handshake fails for any other
	// CN the CA may have signed.
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		cn, err := provisioning.PeerCommonName(cs)
		if err != nil {
			return err
		}
		if protocol.CheckDeviceID(cn) != nil && !protocol.IsControllerID(cn) {
			return fmt.Errorf("release server: certificate CN %q is neither a device nor a controller", cn)
		}
		return nil
	}
	raw, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("release server: %w", err)
	}
	s := &ReleaseServer{ln: tls.NewListener(raw, conf), done: make(chan struct{})}
	s.srv = &http.Server{
		Handler:           Handler(dir, log),
		ReadHeaderTimeout: 15 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("release server stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is the listening address.
func (s *ReleaseServer) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server, waiting a little for downloads in flight.
func (s *ReleaseServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.srv.Close()
	}
	<-s.done
	return err
}

// Handler serves GET /releases/NAME from dir: plain file names only.
func Handler(dir string, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+ReleasesPath+"{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if name == "" || strings.HasPrefix(name, ".") || strings.ContainsAny(name, `/\`) {
			http.Error(w, "no such release", http.StatusNotFound)
			return
		}
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			http.Error(w, "no such release", http.StatusNotFound)
			return
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			http.Error(w, "no such release", http.StatusNotFound)
			return
		}
		cn := ""
		if r.TLS != nil {
			cn, _ = provisioning.PeerCommonName(*r.TLS)
		}
		log.Info("release download", "client", cn, "file", name, "range", r.Header.Get("Range"))
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, name, fi.ModTime(), f)
	})
	return mux
}
