package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/protocol"
)

// device is one simulated thermostat under the soak, and what the soak
// learned of it from its processes.
type device struct {
	id       string
	loc      *time.Location
	sched    protocol.Schedule
	spec     childSpec
	killable bool

	p *proc // the running process

	mu       sync.Mutex
	changes  []outputChange       // relay changes; a zero at marks a new process
	applied  map[string]time.Time // schedule occurrence → when applied
	writes   []write              // the device's own writes
	ctl      []write              // the controller's writes of this device
	downs    []window             // from a kill to the new process's ready
	kills    int
	memStart record
	memEnd   record
}

// write is one write with its stamp and the properties it wrote.
type write struct {
	src   string
	names []string
	w     protocol.Clock
}

type window struct{ from, to time.Time }

type outputChange struct {
	at time.Time // zero: a new process starts here
	o  hal.Outputs
}

// proc is one thermostat process.
type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready chan time.Time // the simulated time it became ready
	reply chan record    // snap and mem answers
	done  chan struct{}  // closed when its stdout ended
}

// start runs a new process for d.
func (d *device) start(exe string) error {
	spec, err := json.Marshal(d.spec)
	if err != nil {
		return err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	logf, err := os.OpenFile(filepath.Join(d.spec.Dir, "thermostat.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stderr = logf
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", d.id, err)
	}
	p := &proc{cmd: cmd, stdin: stdin, ready: make(chan time.Time, 1), reply: make(chan record, 4), done: make(chan struct{})}
	d.mu.Lock()
	d.p = p
	d.changes = append(d.changes, outputChange{})
	d.mu.Unlock()
	go d.read(p, stdout)
	return nil
}

// read takes in the process's records until its stdout ends.
func (d *device) read(p *proc, r io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			continue
		}
		d.mu.Lock()
		switch rec.K {
		case "ready":
			p.ready <- rec.At
		case "out":
			d.changes = append(d.changes, outputChange{rec.At, hal.Outputs{Heat: rec.Heat, Cool: rec.Cool}})
		case "entry":
			if _, seen := d.applied[rec.Entry]; !seen {
				d.applied[rec.Entry] = rec.At
			}
		case "write":
			d.writes = append(d.writes, write{src: rec.Src, names: rec.Names, w: rec.W})
		case "snap", "mem":
			p.reply <- rec
		}
		d.mu.Unlock()
	}
}

// waitReady waits until the process is synced with the controller.
func (d *device) waitReady(timeout time.Duration) (time.Time, error) {
	select {
	case at := <-d.p.ready:
		return at, nil
	case <-d.p.done:
		return time.Time{}, fmt.Errorf("%s: the thermostat process ended before it was ready (see %s)", d.id, filepath.Join(d.spec.Dir, "thermostat.log"))
	case <-time.After(timeout):
		return time.Time{}, fmt.Errorf("%s: not synced after %v", d.id, timeout)
	}
}

// ask sends a command and waits for its answer.
func (d *device) ask(cmd string) (record, error) {
	if _, err := fmt.Fprintln(d.p.stdin, cmd); err != nil {
		return record{}, fmt.Errorf("%s: %w", d.id, err)
	}
	select {
	case rec := <-d.p.reply:
		return rec, nil
	case <-d.p.done:
		return record{}, fmt.Errorf("%s: the thermostat process ended", d.id)
	case <-time.After(30 * time.Second):
		return record{}, fmt.Errorf("%s: no answer to %q", d.id, cmd)
	}
}

// press presses a wall button.
func (d *device) press(b string) { fmt.Fprintln(d.p.stdin, "press "+b) }

// kill ends the process with SIGKILL, as a power cut or a crash does.
func (d *device) kill() {
	d.p.cmd.Process.Signal(syscall.SIGKILL)
	<-d.p.done
	d.p.cmd.Wait()
	d.kills++
}

// stop ends the process cleanly (stdin closed) and waits.
func (d *device) stop() error {
	if d.p == nil {
		return nil
	}
	d.p.stdin.Close()
	select {
	case <-d.p.done:
	case <-time.After(30 * time.Second):
		d.p.cmd.Process.Kill()
		<-d.p.done
	}
	err := d.p.cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == -1 {
		return nil // killed after the timeout above: reported by the checks
	}
	return err
}
