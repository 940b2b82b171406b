package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// dialTCP resolves the broker's host within ctx and connects to its
// addresses in turn, each bounded by DialTimeout.
func (c *Client) dialTCP(ctx context.Context, u *url.URL) (net.Conn, error) {
	host, port := u.Hostname(), u.Port()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	var errs []error
	for _, ip := range ips {
		addr := net.JoinHostPort(ip.Unmap().String(), port)
		raw, err := c.dialAddr(ctx, addr)
		if err == nil {
			return raw, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// dialAddr connects to one address within DialTimeout. With a DialStagger
// it starts a fresh connect every DialStagger while none has finished, and
// the first to finish decides: its connection, or its error (a refusal
// means the host answered; more SYNs would change nothing).
func (c *Client) dialAddr(ctx context.Context, addr string) (net.Conn, error) {
	timeout, stagger := c.opts.DialTimeout, c.opts.DialStagger
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// noAnswer names an attempt cut by DialTimeout (called before cancel).
	noAnswer := func(err error) error {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("tcp connect to %s: no answer in %v", addr, timeout)
		}
		return err
	}
	if stagger <= 0 || stagger >= timeout {
		conn, err := c.opts.Dial(ctx, "tcp", addr)
		if err != nil {
			return nil, noAnswer(err)
		}
		return conn, nil
	}

	type result struct {
		conn net.Conn
		err  error
	}
	most := int(timeout/stagger) + 1
	results := make(chan result, most) // no attempt ever blocks on sending
	launched := 0
	launch := func() {
		launched++
		go func() {
			conn, err := c.opts.Dial(ctx, "tcp", addr)
			results <- result{conn, err}
		}()
	}
	// closeRest closes whatever the attempts still running connect.
	closeRest := func(n int) {
		go func() {
			for range n {
				if r := <-results; r.conn != nil {
					r.conn.Close()
				}
			}
		}()
	}
	launch()
	tick := time.NewTicker(stagger)
	defer tick.Stop()
	for {
		select {
		case r := <-results:
			if r.err != nil {
				r.err = noAnswer(r.err)
			}
			cancel()
			closeRest(launched - 1)
			return r.conn, r.err
		case <-tick.C:
			if launched < most {
				launch()
			}
		}
	}
}
