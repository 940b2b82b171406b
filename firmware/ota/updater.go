package ota

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/release"
)

// downloadDir holds partial downloads inside the state directory, so a
// finished one is renamed into its slot on the same file system.
const downloadDir = "ota"

// UpdaterOptions are what the device's updater needs.
type UpdaterOptions struct {
	// Dir is the state directory; ID and Root name the device's topics.
	Dir, ID, Root string
	// Running is this binary's version, Arch its platform (HostArch).
	Running, Arch string
	// Key is the release public key this board trusts.
	Key ed25519.PublicKey
	// TLS is the device's client configuration: its certificate, the
	// fleet CA. Downloads use it; verification is never off.
	TLS *tls.Config
	// BrokerHost is the broker's host, for offers that give a port and a
	// path rather than a URL.
	BrokerHost string
	// Trial is the trial an install starts (Running is filled in).
	Trial InstallOptions
	// Publish sends a state report (QoS 1, retained); it fails while the
	// broker connection is down.
	Publish func(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
	// Healthy is nil once this start has proven healthy: the control loop
	// runs, the broker connection is up, the state is synced.
	Healthy func() error
	// Restart is called after an install: the thermostat stops cleanly
	// (outputs to their safe state) and exits for the service manager to
	// start the launcher, which runs the new slot on trial.
	Restart func()
	Log     *slog.Logger
	// Now is the clock of expiry checks; time.Now when nil.
	Now func() time.Time
	// Retry spaces download retries; 5 s when 0.
	Retry time.Duration
}

// Updater is the device's side of over-the-air updates: it proves a trial
// healthy, reports the outcome of the last one, and takes the
// controller's offers through download, verification and install.
type Updater struct {
	o      UpdaterOptions
	offers chan []byte // the latest offer only
	client *http.Client
}

// NewUpdater checks o.
func NewUpdater(o UpdaterOptions) (*Updater, error) {
	if o.Key == nil || o.TLS == nil || o.Publish == nil || o.Healthy == nil || o.Restart == nil {
		return nil, errors.New("ota: updater needs a key, TLS, Publish, Healthy and Restart")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Retry <= 0 {
		o.Retry = 5 * time.Second
	}
	o.Trial.Running = o.Running
	tr := &http.Transport{
		TLSClientConfig:       o.TLS.Clone(),
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second}).DialContext,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
	return &Updater{o: o, offers: make(chan []byte, 1), client: &http.Client{Transport: tr}}, nil
}

// Handle takes the payload of a message on the device's ota topic. It
// never blocks: a newer offer replaces one not yet taken.
func (u *Updater) Handle(payload []byte) {
	p := append([]byte(nil), payload...)
	for {
		select {
		case u.offers <- p:
			return
		default:
		}
		select {
		case <-u.offers:
		default:
		}
	}
}

// Run proves a trial, reports, and serves offers until ctx is done.
func (u *Updater) Run(ctx context.Context) error {
	if err := u.prove(ctx); err != nil {
		return nil // ctx done
	}
	u.reportOutcome(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case p := <-u.offers:
			u.offer(ctx, p)
		}
	}
}

// prove commits this start if it runs the slot on trial, once Healthy.
func (u *Updater) prove(ctx context.Context) error {
	st, err := Load(u.o.Dir)
	if err != nil || st.Trial == nil || st.Trial.Slot != Running() {
		return nil
	}
	u.o.Log.Info("on trial: proving health", "slot", st.Trial.Slot, "version", st.Trial.Version, "deadline", st.Trial.Deadline())
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		err := u.o.Healthy()
		if err == nil {
			ok, err := CommitTrial(u.o.Dir, st.Trial.Slot, u.o.Now())
			if err != nil {
				u.o.Log.Error("on trial: cannot commit", "err", err)
			} else if ok {
				u.o.Log.Info("proved healthy: the release is kept", "slot", st.Trial.Slot, "version", st.Trial.Version)
			}
			return nil
		}
		if last == nil || err.Error() != last.Error() {
			u.o.Log.Info("on trial: not healthy yet", "reason", err)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// reportOutcome reports the last trial's outcome once: a rollback, or
// the commit of the version running now; otherwise the running version.
func (u *Updater) reportOutcome(ctx context.Context) {
	st, err := Load(u.o.Dir)
	if err != nil {
		u.o.Log.Error("ota: reading the slots", "err", err)
		return
	}
	var s protocol.OTAState
	var mark func(*State)
	switch {
	case st.LastRollback != nil && !st.LastRollback.Reported:
		rb := *st.LastRollback
		s = protocol.OTAState{State: protocol.OTARolledBack, Release: rb.Version, Code: "trial_failed", Reason: rb.Reason}
		mark = func(st *State) {
			if st.LastRollback != nil && st.LastRollback.At.Equal(rb.At) {
				st.LastRollback.Reported = true
			}
		}
	case st.LastCommit != nil && !st.LastCommit.Reported && st.LastCommit.Version == u.o.Running:
		s = protocol.OTAState{State: protocol.OTAHealthy, Release: u.o.Running}
		mark = func(st *State) {
			if st.LastCommit != nil {
				st.LastCommit.Reported = true
			}
		}
	default:
		return
	}
	if u.report(ctx, s) == nil {
		if _, err := Update(u.o.Dir, func(st *State) error { mark(st); return nil }); err != nil {
			u.o.Log.Error("ota: recording the report", "err", err)
		}
	}
}

// report publishes s, retrying while the broker connection is down,
// until it is sent or ctx is done.
func (u *Updater) report(ctx context.Context, s protocol.OTAState) error {
	s.Running, s.Slot, s.TS = u.o.Running, Running(), u.o.Now().UTC()
	b, err := protocol.EncodeOTAState(s)
	if err != nil {
		return err
	}
	topic := protocol.Topic(u.o.Root, u.o.ID, protocol.KindOTAState)
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := u.o.Publish(pctx, topic, b, 1, true)
		cancel()
		if err == nil {
			u.o.Log.Info("ota state", "state", s.State, "release", s.Release, "code", s.Code, "reason", s.Reason)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// refused reports that a release failed a check.
func (u *Updater) refused(ctx context.Context, version string, err error) {
	u.o.Log.Warn("ota: release refused", "release", version, "err", err)
	u.report(ctx, protocol.OTAState{State: protocol.OTARefused, Release: version, Code: release.Reason(err), Reason: err.Error()})
}

// offer takes one offer through its checks, the download and the install.
func (u *Updater) offer(ctx context.Context, payload []byte) {
	if len(payload) == 0 {
		return // withdrawn
	}
	o, err := protocol.DecodeOffer(payload)
	if err != nil {
		u.refused(ctx, "", fmt.Errorf("%w: %w", release.ErrMalformed, err))
		return
	}
	m, err := release.Verify(o.Manifest, u.o.Key, u.o.Now())
	if err != nil {
		version := ""
		if f, perr := release.Parse(o.Manifest); perr == nil {
			version = f.Manifest.Version
		}
		u.refused(ctx, version, err)
		return
	}
	if m.Version == u.o.Running {
		u.report(ctx, protocol.OTAState{State: protocol.OTAHealthy, Release: m.Version})
		return
	}
	if st, err := Load(u.o.Dir); err == nil && st.LastRollback != nil && st.LastRollback.Version == m.Version {
		// Tried and failed here: never again, even if offered again.
		u.report(ctx, protocol.OTAState{State: protocol.OTARolledBack, Release: m.Version, Code: "trial_failed", Reason: st.LastRollback.Reason})
		return
	}
	if err := release.Check(m, release.Target{Arch: u.o.Arch, Running: u.o.Running}); err != nil {
		u.refused(ctx, m.Version, err)
		return
	}
	src := o.URL
	if src == "" {
		src = "https://" + net.JoinHostPort(u.o.BrokerHost, strconv.Itoa(o.Port)) + o.Path
	}
	u.report(ctx, protocol.OTAState{State: protocol.OTAOffered, Release: m.Version, Size: m.Size})
	path, err := u.download(ctx, m, src)
	switch {
	case err == nil:
	case ctx.Err() != nil || errors.Is(err, context.Canceled):
		return
	case errors.Is(err, release.ErrSize) || errors.Is(err, release.ErrHash):
		u.refused(ctx, m.Version, err)
		return
	default:
		u.o.Log.Error("ota: download failed", "release", m.Version, "err", err)
		u.report(ctx, protocol.OTAState{State: protocol.OTAFailed, Release: m.Version, Code: "download", Reason: err.Error()})
		return
	}
	slot, err := Install(u.o.Dir, m, path, u.o.Trial)
	if err != nil {
		u.o.Log.Error("ota: install failed", "release", m.Version, "err", err)
		u.report(ctx, protocol.OTAState{State: protocol.OTAFailed, Release: m.Version, Code: "install", Reason: err.Error()})
		return
	}
	u.report(ctx, protocol.OTAState{State: protocol.OTAInstalled, Release: m.Version})
	u.o.Log.Info("ota: installed; restarting into it", "release", m.Version, "slot", slot)
	u.o.Restart()
}

// download fetches m's binary from src into the download directory,
// resuming a partial file (HTTP Range) across errors and restarts, and
// returns its path once its size and hash match. A file that does not
// match is removed: the next offer starts afresh.
func (u *Updater) download(ctx context.Context, m release.Manifest, src string) (string, error) {
	dir := filepath.Join(u.o.Dir, downloadDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("download: %w", err)
	}
	// Partial files of other releases are of no use now.
	part := filepath.Join(dir, m.SHA256+".part")
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if e.Name() != filepath.Base(part) {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	reported := false
	for {
		have, err := u.fetch(ctx, m, src, part, func(have int64) {
			if !reported {
				reported = true
				u.report(ctx, protocol.OTAState{State: protocol.OTADownloading, Release: m.Version, Progress: have, Size: m.Size})
			}
		})
		if err == nil && have == m.Size {
			break
		}
		if err == nil {
			err = fmt.Errorf("the connection ended at %d of %d bytes", have, m.Size)
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return "", perm.error
		}
		if len(u.offers) > 0 {
			// A newer offer (or a withdrawal) waits: it decides.
			return "", fmt.Errorf("download of %s abandoned for a newer offer: %w", m.Version, context.Canceled)
		}
		u.o.Log.Warn("ota: download interrupted; resuming", "release", m.Version, "have", have, "size", m.Size, "err", err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(u.o.Retry):
		}
	}
	if err := release.CheckFile(m, part); err != nil {
		os.Remove(part)
		return "", err
	}
	return part, nil
}

// permanentError ends the download's retries.
type permanentError struct{ error }

// fetch makes one request for what part lacks and appends it, never
// past m.Size. It returns the size of part afterwards.
func (u *Updater) fetch(ctx context.Context, m release.Manifest, src, part string, started func(int64)) (int64, error) {
	f, err := os.OpenFile(part, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, permanentError{fmt.Errorf("download: %w", err)}
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, permanentError{fmt.Errorf("download: %w", err)}
	}
	if have > m.Size {
		if err := f.Truncate(0); err != nil {
			return 0, permanentError{err}
		}
		have, _ = f.Seek(0, io.SeekStart)
	}
	if have == m.Size {
		return have, nil
	}
	if _, err := url.Parse(src); err != nil {
		return have, permanentError{fmt.Errorf("download: %w", err)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return have, permanentError{fmt.Errorf("download: %w", err)}
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return have, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		// Appends at have.
	case http.StatusOK:
		if err := f.Truncate(0); err != nil {
			return 0, permanentError{err}
		}
		have, _ = f.Seek(0, io.SeekStart)
	case http.StatusRequestedRangeNotSatisfiable:
		// The file there is shorter than ours: start again.
		f.Truncate(0)
		return 0, fmt.Errorf("download: %s", resp.Status)
	case http.StatusNotFound, http.StatusForbidden, http.StatusUnauthorized:
		return have, permanentError{fmt.Errorf("download %s: %s", src, resp.Status)}
	default:
		return have, fmt.Errorf("download %s: %s", src, resp.Status)
	}
	started(have)
	n, err := io.Copy(f, io.LimitReader(resp.Body, m.Size-have))
	have += n
	if err != nil {
		return have, err
	}
	if err := f.Sync(); err != nil {
		return have, permanentError{err}
	}
	return have, nil
}
