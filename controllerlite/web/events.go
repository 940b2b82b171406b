package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// The live feed, GET /api/events (text/event-stream):
//
//	event: snapshot   data: every device, a JSON array as GET /api/devices
//	event: device     data: one device whose view changed, as GET /api/devices/{id}
//	event: removed    data: {"id":"d1"}: the device is gone
//
// plus a comment line every Options.Heartbeat so that proxies keep the
// connection open. A reconnecting browser gets a new snapshot.
const (
	// writeTimeout bounds one write to the client: a client that does not
	// read is dropped instead of holding a goroutine for ever. It loses
	// nothing: the watcher coalesces, and a reconnect starts from a
	// snapshot.
	writeTimeout = 10 * time.Second
	// retryMillis is how soon EventSource reconnects after a drop.
	retryMillis = 2000
)

// Events returns the live feed's handler, to be mounted behind the API's
// authentication (api.Options.Events).
func (d *Dashboard) Events() http.Handler { return http.HandlerFunc(d.events) }

func (d *Dashboard) events(w http.ResponseWriter, r *http.Request) {
	select {
	case d.slots <- struct{}{}:
		defer func() { <-d.slots }()
	default:
		http.Error(w, fmt.Sprintf("too many live feeds open (%d)", cap(d.slots)), http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel)
	defer stop()

	// Watch before the snapshot, so that no change falls between them.
	watcher := d.f.Watch()
	defer watcher.Close()

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	s := &stream{w: w, rc: rc, sent: map[string][]byte{}}
	fmt.Fprintf(&s.buf, "retry: %d\n\n", retryMillis)
	devs := d.f.Devices()
	for _, dev := range devs {
		b, err := json.Marshal(dev)
		if err != nil {
			d.log.Error("web: encode device", "device", dev.ID, "error", err)
			return
		}
		s.sent[dev.ID] = b
	}
	snap, err := json.Marshal(devs)
	if err != nil {
		d.log.Error("web: encode devices", "error", err)
		return
	}
	s.event("snapshot", snap)
	if s.flush() != nil {
		return
	}

	for {
		wait, cancelWait := context.WithTimeout(ctx, d.opts.Heartbeat)
		ids, err := watcher.Next(wait)
		cancelWait()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, context.DeadlineExceeded):
			s.buf.WriteString(": ping\n\n")
		case err != nil: // the fleet stopped
			return
		}
		for _, id := range ids {
			dev, ok := d.f.Device(id)
			if !ok {
				delete(s.sent, id)
				b, _ := json.Marshal(map[string]string{"id": id})
				s.event("removed", b)
				continue
			}
			b, err := json.Marshal(dev)
			if err != nil {
				d.log.Error("web: encode device", "device", id, "error", err)
				return
			}
			// The first Next repeats the snapshot; a change may also
			// leave the JSON as it was. Neither is sent.
			if bytes.Equal(s.sent[id], b) {
				continue
			}
			s.sent[id] = b
			s.event("device", b)
		}
		if s.flush() != nil {
			return
		}
	}
}

// stream is one client's feed: events gather in buf and go out together,
// one flush per batch of changes.
type stream struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	buf  bytes.Buffer
	sent map[string][]byte // the JSON last sent for each device
}

// event appends one event; data is JSON, which has no newline.
func (s *stream) event(name string, data []byte) {
	fmt.Fprintf(&s.buf, "event: %s\ndata: %s\n\n", name, data)
}

func (s *stream) flush() error {
	if s.buf.Len() == 0 {
		return nil
	}
	// A server without write deadlines (httptest's recorder) still works.
	if err := s.rc.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	_, err := s.w.Write(s.buf.Bytes())
	s.buf.Reset()
	if err != nil {
		return err
	}
	return s.rc.Flush()
}
