package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/controllerlite/fleet"
)

// Error is an error answer of the API.
type Error struct {
	Status  int    // HTTP status code
	Message string // the API's reason
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// ErrUnreachable wraps the error of a request that reached no controller.
var ErrUnreachable = errors.New("controllerlite is not reachable")

// Client talks to a running controllerlite's API.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// NewClient makes a client for the API at addr: a listen address as given
// to --http ("127.0.0.1:8080", ":8080", "[::]:8080" all mean this machine)
// or a URL ("http://host:8080"). token may be empty.
func NewClient(addr, token string) (*Client, error) {
	u, err := BaseURL(addr)
	if err != nil {
		return nil, err
	}
	// Keep up to clientConns connections to the controller idle rather
	// than net/http's default two: a caller sending many requests at once
	// (mttr's writes for a whole fleet) otherwise opens and closes a
	// connection per request.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = clientConns
	return &Client{base: u, token: token, http: &http.Client{Timeout: 30 * time.Second, Transport: tr}}, nil
}

// clientConns is how many idle connections a Client keeps to its controller.
const clientConns = 64

// BaseURL turns a listen address or URL into the API's base URL.
func BaseURL(addr string) (*url.URL, error) {
	if addr == "" {
		addr = DefaultAddr
	}
	if !strings.Contains(addr, "://") {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("API address %q: want HOST:PORT or http://HOST:PORT", addr)
		}
		// A wildcard listen address is reached on loopback.
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "127.0.0.1"
		}
		addr = "http://" + net.JoinHostPort(host, port)
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("API address %q: %w", addr, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("API address %q: want HOST:PORT or http(s)://HOST:PORT", addr)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// URL is the API's base URL.
func (c *Client) URL() string { return c.base.String() }

// Devices returns every device.
func (c *Client) Devices(ctx context.Context) ([]fleet.Device, error) {
	var out []fleet.Device
	err := c.do(ctx, http.MethodGet, "/api/devices", nil, &out)
	for i := range out {
		fixNull(&out[i])
	}
	return out, err
}

// Device returns one device.
func (c *Client) Device(ctx context.Context, id string) (fleet.Device, error) {
	var out fleet.Device
	err := c.do(ctx, http.MethodGet, "/api/devices/"+url.PathEscape(id), nil, &out)
	fixNull(&out)
	return out, err
}

// Set sets properties of a device and returns it as the controller now
// holds it.
func (c *Client) Set(ctx context.Context, id string, changes map[string]any) (fleet.Device, error) {
	var out fleet.Device
	err := c.do(ctx, http.MethodPut, "/api/devices/"+url.PathEscape(id), changes, &out)
	fixNull(&out)
	return out, err
}

// Health returns the fleet's status; it needs no token. A controller that
// is not ready yet answers with its status and no error.
func (c *Client) Health(ctx context.Context) (fleet.Status, error) {
	var out fleet.Status
	err := c.do(ctx, http.MethodGet, "/healthz", nil, &out)
	var apiErr *Error
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusServiceUnavailable && out != (fleet.Status{}) {
		return out, nil
	}
	return out, err
}

// fixNull makes a null telemetry nil, as the fleet has it (a
// json.RawMessage keeps the literal null).
func fixNull(d *fleet.Device) {
	if string(d.Telemetry) == "null" {
		d.Telemetry = nil
	}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	u := *c.base
	u.Path += path
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w at %s: connection refused (is 'controllerlite serve' running, with this --http address?)", ErrUnreachable, c.base)
		}
		return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, u.String(), err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		} else if path == "/healthz" {
			// 503 from /healthz carries the status, not an error.
			json.Unmarshal(b, out)
		}
		if resp.StatusCode == http.StatusUnauthorized {
			msg += "; give the token with --http-token-file FILE or CONTROLLERLITE_TOKEN"
		}
		return &Error{Status: resp.StatusCode, Message: msg}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: answer is not what the API returns (is %s a controllerlite?): %w", method, u.String(), c.base, err)
	}
	return nil
}
