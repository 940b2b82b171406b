// Command demo is the main job of `make demo`: it issues a throwaway PKI,
// starts controllerlite with its embedded broker and three simulated
// thermostats, plays the conflict of PROTOCOL.md's worked example on one of
// them, printing each side's clock and which value won, and then leaves
// the fleet running with the controller's HTTP address printed until
// Ctrl-C. With --exit-after-script (or DEMO_EXIT_AFTER_SCRIPT=1) it stops
// after the script, which is how its test runs it.
//
// Everything goes through the real binaries and their documented command
// lines; the only addition is a proxy in front of one thermostat that holds
// its traffic for a moment, so the two writes really cross in flight.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type options struct {
	bin       string
	speed     float64
	exitAfter bool
	keep      bool
}

func run(args []string, stdout io.Writer) error {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.StringVar(&o.bin, "bin", "bin", "directory holding the thermostat and controllerlite binaries (make build)")
	fs.Float64Var(&o.speed, "sim-speed", 120, "how many times faster than real time the simulated rooms run")
	fs.BoolVar(&o.exitAfter, "exit-after-script", os.Getenv("DEMO_EXIT_AFTER_SCRIPT") == "1", "stop after the scripted part instead of running until Ctrl-C")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (PKI, state, logs) at exit")
	if err := fs.Parse(args); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "thermo-demo-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(dir)
	}
	f := &demoFleet{opts: o, dir: dir, out: stdout}
	defer f.stop()
	if err := f.start(ctx); err != nil {
		return err
	}
	if err := f.script(ctx); err != nil {
		return err
	}
	if o.exitAfter {
		fmt.Fprintln(f.out, "\nScript done; stopping (--exit-after-script).")
		return nil
	}
	return f.runUntilInterrupted(ctx)
}

// proc is a child process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func (f *demoFleet) spawn(name string, args ...string) (*proc, io.Reader, error) {
	logPath := filepath.Join(f.dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	pr, pw := io.Pipe()
	cmd.Stdout = io.MultiWriter(logFile, pw)
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		pw.Close()
		logFile.Close()
		close(p.done)
	}()
	f.procs = append(f.procs, p)
	return p, pr, nil
}

// stop ends every child with SIGTERM, the way a service manager would.
func (f *demoFleet) stop() {
	for i := len(f.procs) - 1; i >= 0; i-- {
		p := f.procs[i]
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	f.procs = nil
	if f.proxy != nil {
		f.proxy.Close()
	}
}

// command runs a binary to completion and returns its output.
func (f *demoFleet) command(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// lines turns r into a channel of lines, closed at EOF.
func lines(r io.Reader) <-chan string {
	ch := make(chan string, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}

// waitLine reads lines until one starts with prefix and returns the rest.
func waitLine(ctx context.Context, ch <-chan string, prefix string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		select {
		case line, ok := <-ch:
			if !ok {
				return "", fmt.Errorf("output ended before %q", prefix)
			}
			if rest, found := strings.CutPrefix(line, prefix); found {
				return strings.TrimSpace(rest), nil
			}
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %q: %w", prefix, ctx.Err())
		}
	}
}

// poll calls cond until it returns true or the deadline passes.
func poll(ctx context.Context, what string, d time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("%s: %w", what, last)
			}
			return errors.New(what + ": timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
