package harness

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress writes the one-line status and the table of cycles. On a
// terminal the status line rewrites itself; elsewhere (a log, CI) a status
// is printed only every few seconds, so the output stays readable.
type progress struct {
	w   io.Writer
	tty bool

	mu      sync.Mutex
	showing bool // a status line is on the terminal
	last    time.Time
}

const quietEvery = 5 * time.Second

func (p *progress) status(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", msg)
		p.showing = true
		return
	}
	if time.Since(p.last) >= quietEvery {
		p.last = time.Now()
		fmt.Fprintf(p.w, "… %s\n", msg)
	}
}

func (p *progress) line(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.showing {
		fmt.Fprint(p.w, "\r\033[K")
		p.showing = false
	}
	fmt.Fprintln(p.w, s)
}

func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.showing {
		fmt.Fprint(p.w, "\r\033[K")
		p.showing = false
	}
}
