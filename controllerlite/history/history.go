// Package history keeps the controller's telemetry history: for every
// device, the room temperature, the setpoint in force, the mode and the
// heating and cooling outputs over time, for the dashboard's chart and
// the API's GET /api/devices/{id}/history.
//
// It is the fleet's telemetry sink (fleet.TelemetrySink). A sample is kept
// in memory on the fleet's loop, which must never wait, and written by a
// goroutine of its own, in batches, to a bbolt file of its own in the data
// directory (FileName): wiping it loses the charts, nothing else. The
// buffer is bounded: when the disk is slower than the fleet (or full, or
// failing), samples are dropped and counted, and the count is logged,
// rather than the fleet waiting or memory growing.
//
// Samples are kept at full resolution for RawWindow (48 hours); a
// background compaction then folds them into BucketSize (15-minute)
// buckets: temperature min/mean/max, setpoint mean and last, and the
// seconds the heating and the cooling were on, kept for Retention (400
// days). docs/history.md has the figures: about 1.4 MB per device per
// year.
package history

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/lograte"
	"github.com/thermofleet/thermo/protocol"
)

// FileName is the history's database inside the data directory.
const FileName = "history.db"

const (
	// RawWindow is how long samples are kept at full resolution.
	RawWindow = 48 * time.Hour
	// BucketSize is the resolution of what is older than RawWindow.
	BucketSize = 15 * time.Minute
	// Retention is how long buckets are kept.
	Retention = 400 * 24 * time.Hour
	// DefaultMaxGap caps how long a sample's outputs are taken to hold
	// when no next sample comes: a device sends telemetry every 30 s and
	// whenever an output changes, so a longer silence is a device gone
	// (offline, powered off), and its last "heating" must not count for
	// the whole of its absence.
	DefaultMaxGap = 5 * time.Minute
	// DefaultBuffer bounds the samples waiting to be written: ten flush
	// intervals of a 300-device fleet, about 320 KB.
	DefaultBuffer = 10000
	// DefaultFlushEvery is how often waiting samples are written: one
	// fsync per interval rather than per sample spares an SD card; a
	// crash loses at most this much history.
	DefaultFlushEvery = 10 * time.Second
	// CompactEvery is how often compaction runs (and once at start).
	CompactEvery = BucketSize
	// DefaultCheckWait is how long Open waits for the check of every page
	// of the file before it lets the controller start and finishes the
	// check in the background: a year's history of 10,000 devices is
	// ~13 GB, seconds to read from the page cache and minutes from an SD
	// card after a reboot, and the fleet must not wait for its charts.
	DefaultCheckWait = time.Second
)

// ErrChecking is the error of a query while the history's file is still
// being checked after a start (the API answers 503 with Retry-After).
var ErrChecking = errors.New("the telemetry history is being checked after the controller's start; try again in a moment")

// schemaVersion is written in the meta bucket; a file of another layout is
// refused rather than misread.
const schemaVersion = "1"

var (
	bucketDevices = []byte("devices") // one nested bucket per device id
	subRaw        = []byte("r")       // in a device's bucket: raw samples
	subBuckets    = []byte("b")       // in a device's bucket: 15-minute buckets
	keyCompacted  = []byte("c")       // in a device's bucket: unix s compacted up to
)

// Options configure a History. The zero value means the defaults.
type Options struct {
	// Now is the clock; time.Now if nil. Compaction and the query rules
	// read it: a test advances it instead of waiting.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Buffer bounds the samples waiting to be written (DefaultBuffer).
	Buffer int
	// FlushEvery defaults to DefaultFlushEvery.
	FlushEvery time.Duration
	// MaxGap defaults to DefaultMaxGap.
	MaxGap time.Duration
	// CheckWait defaults to DefaultCheckWait.
	CheckWait time.Duration
}

// Stats are counters for logs and metrics.
type Stats struct {
	Pending int    // samples waiting to be written
	Written uint64 // samples written since Open
	Dropped uint64 // samples lost since Open: buffer full or write failed
	// Checking is true while the file is checked after a start (Open);
	// Failed once it could not be opened then (logged with the cure).
	Checking, Failed bool
}

// History is an open history. Its methods are safe for concurrent use.
type History struct {
	// be is set once, before ready is closed; read it after ready.
	be backend
	// ready is closed when the file has been checked and opened (be set)
	// or could not be (openErr set). Until then samples wait in the
	// buffer, queries get ErrChecking and deletions wait in deletes.
	ready   chan struct{}
	openErr error
	cancel  context.CancelFunc // stops the check; Close calls it

	path string
	o    Options
	log  *slog.Logger
	lim  *lograte.Limiter

	mu      sync.Mutex // guards the fields below; held briefly by Telemetry
	pending []sample
	spare   []sample
	deletes []string // devices deleted while the file was being checked
	closed  bool
	dropped uint64 // buffer full
	lost    uint64 // write failed
	written uint64
	full    chan struct{} // a token when pending reaches half the buffer

	writeMu  sync.Mutex // serializes flushes, compactions and deletes
	reported uint64     // dropped+lost already logged, under writeMu

	stop chan struct{}
	done chan struct{}
	bg   sync.WaitGroup // the check and the catch-up compaction, when in the background
}

// Open opens (creating if needed) the history in dir, compacts it, and
// starts its writer and compaction. A corrupt file is refused with
// store.ErrCorrupt and the cure; Close flushes and closes.
//
// Every page of the file is read and checked before it is used (see
// store.OpenVersioned). When that takes longer than CheckWait, Open
// returns at once and the check goes on in the background: samples wait
// in the buffer (bounded, as ever), queries get ErrChecking, and a file
// found corrupt then is logged with its cure and leaves the controller
// running without history (its queries and writes fail with the error).
func Open(dir string, o Options) (*History, error) {
	if dir == "" {
		return nil, errors.New("open history: no data directory")
	}
	o = o.defaults()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open history: create data directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan opened, 1)
	began := time.Now()
	go func() {
		db, err := store.OpenVersioned(ctx, path, store.CureHistory, schemaVersion, bucketDevices)
		result <- openedBolt(db, err)
	}()
	wait := time.NewTimer(o.CheckWait)
	defer wait.Stop()
	select {
	case r := <-result:
		cancel()
		if r.err != nil {
			return nil, fmt.Errorf("open history: %w", r.err)
		}
		return start(r.be, path, o, false), nil
	case <-wait.C:
	}
	h := newHistory(path, o)
	h.cancel = cancel
	var size int64
	if fi, err := os.Stat(path); err == nil {
		size = fi.Size()
	}
	h.log.Info("history: checking every page of the file in the background; the charts come back when it ends",
		"file", path, "bytes", size)
	h.bg.Add(1)
	go func() { defer h.bg.Done(); h.attach(began, result) }()
	go h.run()
	return h, nil
}

// opened is the outcome of opening a backend.
type opened struct {
	be  backend
	err error
}

func openedBolt(db *bbolt.DB, err error) opened {
	if err != nil {
		return opened{err: err}
	}
	return opened{be: &boltBackend{db: db, release: store.NewMapReleaser(db)}}
}

// attach waits for the check Open left running, then lets the history be
// used: the deletions made meanwhile first, then the catch-up compaction.
func (h *History) attach(began time.Time, ch <-chan opened) {
	r := <-ch
	h.writeMu.Lock()
	if r.err != nil {
		h.openErr = fmt.Errorf("open history: %w", r.err)
		if !errors.Is(r.err, context.Canceled) {
			h.log.Error("history: the file cannot be used: the controller runs without telemetry history", "error", r.err)
		}
		close(h.ready)
		h.writeMu.Unlock()
		return
	}
	h.be = r.be
	h.mu.Lock()
	deletes := h.deletes
	h.deletes = nil
	h.mu.Unlock()
	for _, id := range deletes {
		if err := h.be.remove(id); err != nil {
			h.log.Error("history: delete of a retired device failed", "device", id, "error", err)
		}
	}
	// Closed under writeMu: a Delete either saw the history not ready and
	// queued its id above, or sees it ready.
	close(h.ready)
	h.writeMu.Unlock()
	h.log.Info("history: check done; the charts are back", "file", h.path, "took", time.Since(began).Round(time.Millisecond))
	h.compactLogged()
}

// usable says whether the backend may be used: false while the file is
// being checked; err when it could not be opened.
func (h *History) usable() (ok bool, err error) {
	select {
	case <-h.ready:
		return h.openErr == nil, h.openErr
	default:
		return false, nil
	}
}

// defaults fills in o's zero fields.
func (o Options) defaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Buffer <= 0 {
		o.Buffer = DefaultBuffer
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = DefaultFlushEvery
	}
	if o.MaxGap <= 0 {
		o.MaxGap = DefaultMaxGap
	}
	if o.CheckWait <= 0 {
		o.CheckWait = DefaultCheckWait
	}
	return o
}

// start compacts be and starts the writer and the compaction over it.
// The catch-up compaction runs before start returns, or, when background
// (a database shared by instances, where a catch-up of every device may
// take minutes), beside the writer, so the controller starts at once.
func start(be backend, path string, o Options, background bool) *History {
	h := newHistory(path, o)
	h.be = be
	close(h.ready)
	// Catch up now, before any sample: after a stop of days the raw
	// window holds what is due, and a controller restarted more often
	// than CompactEvery would otherwise never compact.
	if background {
		h.bg.Add(1)
		go func() { defer h.bg.Done(); h.compactLogged() }()
	} else {
		h.compactLogged()
	}
	go h.run()
	return h
}

// newHistory is a History without its backend yet (not ready).
func newHistory(path string, o Options) *History {
	return &History{
		ready: make(chan struct{}), cancel: func() {},
		path: path, o: o, log: o.Logger, lim: lograte.New(0, nil),
		pending: make([]sample, 0, o.Buffer), spare: make([]sample, 0, o.Buffer),
		full: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
}

// Path is the database file, or where the PostgreSQL database is.
func (h *History) Path() string { return h.path }

// Telemetry records a sample of a live telemetry message (it implements
// fleet.TelemetrySink). It runs on the fleet's loop and never waits: the
// sample joins the buffer, or, when the buffer is full, is dropped and
// counted (the writer logs the count).
func (h *History) Telemetry(id string, at time.Time, t protocol.Telemetry, props protocol.Props) {
	s := makeSample(id, at, t, props)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	if len(h.pending) >= h.o.Buffer {
		h.dropped++
		h.mu.Unlock()
		return
	}
	h.pending = append(h.pending, s)
	half := len(h.pending) == h.o.Buffer/2
	h.mu.Unlock()
	if half {
		select {
		case h.full <- struct{}{}:
		default:
		}
	}
}

// Stats returns the counters.
func (h *History) Stats() Stats {
	ok, err := h.usable()
	h.mu.Lock()
	defer h.mu.Unlock()
	return Stats{Pending: len(h.pending), Written: h.written, Dropped: h.dropped + h.lost,
		Checking: !ok && err == nil, Failed: err != nil}
}

// run is the writer: it flushes every FlushEvery (sooner when the buffer
// is half full) and compacts every CompactEvery, and flushes at Close.
func (h *History) run() {
	defer close(h.done)
	select {
	case <-h.ready:
	case <-h.stop:
		<-h.ready // Close has stopped the check
		h.Flush()
		return
	}
	flush := time.NewTicker(h.o.FlushEvery)
	defer flush.Stop()
	compact := time.NewTicker(CompactEvery)
	defer compact.Stop()
	for {
		select {
		case <-flush.C:
			h.Flush()
		case <-h.full:
			h.Flush()
		case <-compact.C:
			h.compactLogged()
		case <-h.stop:
			h.Flush()
			return
		}
	}
}

func (h *History) compactLogged() {
	if err := h.Compact(); err != nil {
		if ok, n := h.lim.Allow("compact"); ok {
			h.log.Error("history: compaction failed", "error", err, "times", n)
		}
	}
}

// Flush writes the samples waiting, in one transaction. A batch that
// cannot be written (disk full, I/O error) is dropped and counted, not
// kept: the buffer stays bounded. It returns the write's error. While the
// file is being checked the samples stay waiting.
func (h *History) Flush() error {
	if ok, err := h.usable(); !ok && err == nil {
		return nil
	}
	h.writeMu.Lock()
	defer h.writeMu.Unlock()
	h.mu.Lock()
	batch := h.pending
	h.pending, h.spare = h.spare[:0], nil
	h.mu.Unlock()

	err := h.write(batch)
	h.mu.Lock()
	if err != nil {
		h.lost += uint64(len(batch))
	} else {
		h.written += uint64(len(batch))
	}
	h.spare = batch[:0]
	lostNow := h.dropped + h.lost
	h.mu.Unlock()

	if err != nil {
		if ok, n := h.lim.Allow("write"); ok {
			h.log.Error("history: write failed: samples lost", "samples", len(batch), "error", err, "times", n)
		}
	}
	if lostNow > h.reported {
		if ok, _ := h.lim.Allow("dropped"); ok {
			h.log.Warn("history: samples dropped: the disk is slower than the fleet's telemetry, full or failing",
				"dropped", lostNow-h.reported, "total", lostNow, "buffer", h.o.Buffer)
			h.reported = lostNow
		}
	}
	if err != nil {
		return fmt.Errorf("history: write %d samples: %w", len(batch), err)
	}
	return nil
}

// write stores samples (backend.write).
func (h *History) write(batch []sample) error {
	if len(batch) == 0 {
		return nil
	}
	if _, err := h.usable(); err != nil {
		return err
	}
	return h.be.write(batch)
}

// Delete removes a device's whole history, including samples not yet
// written (for the device-retire command). An unknown id is no error.
func (h *History) Delete(id string) error {
	h.writeMu.Lock()
	defer h.writeMu.Unlock()
	h.mu.Lock()
	kept := h.pending[:0]
	for _, s := range h.pending {
		if s.id != id {
			kept = append(kept, s)
		}
	}
	h.pending = kept
	ok, err := h.usable()
	if !ok && err == nil {
		h.deletes = append(h.deletes, id)
		h.mu.Unlock()
		return nil
	}
	h.mu.Unlock()
	if err != nil {
		return fmt.Errorf("history: delete %s: %w", id, err)
	}
	if err := h.be.remove(id); err != nil {
		return fmt.Errorf("history: delete %s: %w", id, err)
	}
	return nil
}

// Close writes the samples waiting and closes the file. Samples told
// after Close are ignored.
func (h *History) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	h.mu.Unlock()
	close(h.stop)
	h.cancel()
	<-h.done
	h.bg.Wait()
	if h.be == nil {
		return nil
	}
	if err := h.be.close(); err != nil {
		return fmt.Errorf("close history: %w", err)
	}
	return nil
}
