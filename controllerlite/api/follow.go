package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"

	"github.com/thermofleet/thermo/controllerlite/fleet"
)

// Change is one event of the live feed (GET /api/events): exactly one of
// its fields is set.
type Change struct {
	// Snapshot is every device: the feed's first event.
	Snapshot []fleet.Device
	// Device is a device whose view changed, as GET /api/devices/{id}
	// returns it.
	Device *fleet.Device
	// Removed is the id of a device that is gone (deleted).
	Removed string
}

// maxFeedLine bounds one line of the feed: a snapshot is one line, about
// 600 bytes a device.
const maxFeedLine = 256 << 20

// Follow reads the live feed and calls fn with each event, in order, on
// the caller's goroutine, until ctx is done (it then returns ctx's error)
// or the feed ends: the controller stopped or dropped a reader that did
// not keep up. A new Follow starts again from a snapshot. Polling the
// whole fleet instead costs the controller a JSON document of every device
// each time, and tells a change late by up to the polling interval.
func (c *Client) Follow(ctx context.Context, fn func(Change)) error {
	u := *c.base
	u.Path += "/api/events"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// The feed lasts: not the requests' timeout, the caller's ctx.
	resp, err := (&http.Client{Transport: c.http.Transport}).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w at %s: connection refused", ErrUnreachable, c.base)
		}
		return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b bytes.Buffer
		b.ReadFrom(io.LimitReader(resp.Body, 4096))
		return &Error{Status: resp.StatusCode, Message: strings.TrimSpace(b.String())}
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return fmt.Errorf("follow %s: answer is %q, not a live feed (is %s a controllerlite?)", u.String(), ct, c.base)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxFeedLine)
	var name string
	var data bytes.Buffer
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0: // the end of an event
			if err := dispatch(name, data.Bytes(), fn); err != nil {
				return fmt.Errorf("follow %s: %w", u.String(), err)
			}
			name = ""
			data.Reset()
		case line[0] == ':': // a heartbeat
		default:
			field, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(field) {
			case "event":
				name = string(value)
			case "data":
				if data.Len() > 0 {
					data.WriteByte('\n')
				}
				data.Write(value)
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("follow %s: %w", u.String(), err)
	}
	return fmt.Errorf("follow %s: the feed ended", u.String())
}

// dispatch decodes one event of the feed and hands it to fn; events of
// other names (retry has no data) are skipped, as EventSource does.
func dispatch(name string, data []byte, fn func(Change)) error {
	switch name {
	case "snapshot":
		var devs []fleet.Device
		if err := json.Unmarshal(data, &devs); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		for i := range devs {
			fixNull(&devs[i])
		}
		fn(Change{Snapshot: devs})
	case "device":
		var d fleet.Device
		if err := json.Unmarshal(data, &d); err != nil {
			return fmt.Errorf("device: %w", err)
		}
		fixNull(&d)
		fn(Change{Device: &d})
	case "removed":
		var r struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(data, &r); err != nil || r.ID == "" {
			return fmt.Errorf("removed: %q is not {\"id\":...}", data)
		}
		fn(Change{Removed: r.ID})
	}
	return nil
}
