// Package localctl is the thermostat's local control interface: a unix
// socket on which `thermostat set` and `thermostat status` talk to the
// running agent, one JSON request and one JSON response per connection.
//
// It is how a person at the device (or a display, or a script on the board)
// changes the settings without the network: a set made here is a device
// event and works while the broker is unreachable. The socket is created
// 0660, so access is granted by group membership, the way a unix daemon's
// control socket usually is; nothing else authenticates the caller.
//
// The package knows nothing of the protocol: the agent behind it, through
// Handler, validates values and says why it refuses one.
package localctl

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Operations of a Request.
const (
	OpSet    = "set"
	OpStatus = "status"
)

// MaxRequest bounds a request, in bytes.
const MaxRequest = 64 << 10

// Timeout bounds one exchange on the server side, from accept to the last
// byte of the response.
const Timeout = 15 * time.Second

// MaxConns bounds the exchanges served at once. Each holds a file
// descriptor and a goroutine; the thermostat shares its descriptors with
// the broker connection and the state file, so a flood of local clients
// must not use them all. Connections beyond it wait, unaccepted, in the
// kernel's listen queue (costing this process nothing) until one ends.
const MaxConns = 16

// Backoff after a failed accept (out of file descriptors and the like):
// it starts at minAcceptBackoff and doubles up to maxAcceptBackoff, so the
// loop neither spins nor gives up on every future client. Giving up would
// stop the thermostat; the broker's listener behaves the same way.
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// Request is what a client sends.
type Request struct {
	Op string `json:"op"`
	// Set holds the properties to change for OpSet, by their protocol
	// names: {"setpoint_c": 22.5, "mode": "heat"}.
	Set map[string]any `json:"set,omitempty"`
}

// Response is what the server answers. Status is the agent's status after
// the request, for both operations, when OK.
type Response struct {
	OK     bool            `json:"ok"`
	Error  string          `json:"error,omitempty"`
	Status json.RawMessage `json:"status,omitempty"`
}

// Handler is the agent behind the socket.
type Handler interface {
	// Set applies a local change and returns once it is stored, so an
	// acknowledged set survives a crash. The error says why a value is
	// refused.
	Set(ctx context.Context, changes map[string]any) error
	// Status returns the agent's status, rendered as JSON.
	Status(ctx context.Context) (any, error)
}

// Server is a listening control socket.
type Server struct {
	path string
	ln   net.Listener
	log  *slog.Logger

	slots     chan struct{} // one per exchange in progress, MaxConns at most
	done      chan struct{} // closed by Close: ends waits for a slot or a backoff
	wg        sync.WaitGroup
	closeOnce sync.Once
}

func newServer(path string, ln net.Listener, log *slog.Logger) *Server {
	return &Server{path: path, ln: ln, log: log.With("component", "localctl"),
		slots: make(chan struct{}, MaxConns), done: make(chan struct{})}
}

// Listen creates the socket at path with mode 0660, and its directory
// (0750) if missing. A socket file left by a process that died is
// replaced; one that a live process answers on is refused, as is a path
// that is not a socket.
func Listen(path string, log *slog.Logger) (*Server, error) {
	if path == "" {
		return nil, errors.New("control socket: no path given")
	}
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	// Connecting needs write permission on the socket, which the usual
	// umask (022) gives nobody but the owner until the chmod below.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return newServer(path, ln, log), nil
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("control socket: %s exists and is not a socket; remove it or choose another --control-socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("control socket: another thermostat agent is listening on %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control socket: remove stale %s: %w", path, err)
	}
	return nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Serve answers requests with h until ctx is done or Close is called, then
// waits for exchanges in progress and removes the socket. It returns nil on
// such a stop, and never returns because of a client: a failed accept is
// retried with backoff, and at most MaxConns exchanges run at once.
func (s *Server) Serve(ctx context.Context, h Handler) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	defer s.wg.Wait()
	backoff := minAcceptBackoff
	for {
		// A slot first, so a connection is never accepted (and its
		// descriptor taken) while MaxConns are being served.
		select {
		case s.slots <- struct{}{}:
		case <-s.done:
			return nil
		}
		c, err := s.ln.Accept()
		if err != nil {
			<-s.slots
			if errors.Is(err, net.ErrClosed) || s.closed() {
				return nil
			}
			s.log.Error("control socket: accept failed; retrying", "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				return nil
			}
			backoff = min(2*backoff, maxAcceptBackoff)
			continue
		}
		backoff = minAcceptBackoff
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.slots }()
			s.serveConn(ctx, c, h)
		}()
	}
}

// Close stops accepting and removes the socket.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.done)
		err = s.ln.Close()
	})
	return err
}

func (s *Server) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn, h Handler) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	_ = c.SetDeadline(time.Now().Add(Timeout))
	resp := s.answer(ctx, c, h)
	b, err := json.Marshal(resp)
	if err != nil {
		b, _ = json.Marshal(Response{Error: "encode response: " + err.Error()})
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		s.log.Debug("write response", "err", err)
	}
}

func (s *Server) answer(ctx context.Context, c io.Reader, h Handler) Response {
	var req Request
	dec := json.NewDecoder(bufio.NewReader(io.LimitReader(c, MaxRequest+1)))
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		return Response{Error: fmt.Sprintf("bad request: %v", err)}
	}
	switch req.Op {
	case OpSet:
		if len(req.Set) == 0 {
			return Response{Error: "set: no property to change"}
		}
		if err := h.Set(ctx, req.Set); err != nil {
			s.log.Info("local set refused", "set", req.Set, "err", err)
			return Response{Error: err.Error()}
		}
	case OpStatus:
	default:
		return Response{Error: fmt.Sprintf("unknown op %q (want %q or %q)", req.Op, OpSet, OpStatus)}
	}
	st, err := h.Status(ctx)
	if err != nil {
		return Response{Error: err.Error()}
	}
	raw, err := json.Marshal(st)
	if err != nil {
		return Response{Error: fmt.Sprintf("encode status: %v", err)}
	}
	return Response{OK: true, Status: raw}
}

// Do sends req to the agent listening on path and returns its response. A
// refusal by the agent is returned as an error carrying its reason; the
// response is returned too.
func Do(ctx context.Context, path string, req Request) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Response{}, fmt.Errorf("cannot reach the thermostat agent on %s (is `thermostat run` running, and may you use its socket?): %w", path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return Response{}, fmt.Errorf("encode request: %w", err)
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		return Response{}, fmt.Errorf("send request to %s: %w", path, err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("read response from %s: %w", path, err)
	}
	if !resp.OK {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}
