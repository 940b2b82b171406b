// Command fakefw stands in for the thermostat in the launcher's tests: it
// runs the real Launcher first, as `thermostat run` does, then behaves as
// its build says (-X main.mode=...): "healthy" proves health at once and
// runs until SIGTERM; "crash" exits 3 at start; "hang" says READY=1, pings
// the watchdog once and stops (a hung loop); "noconnect" keeps the
// watchdog fed but never proves health. Every start appends
// "VERSION SLOT PID" to STATE/ran.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/firmware/ota"
	"github.com/thermofleet/thermo/systemd"
)

var (
	version = "dev"
	mode    = "healthy"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Printf("thermostat %s (fake)\n", version)
		return
	}
	dir := os.Args[len(os.Args)-1] // the state directory, last
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	l := &ota.Launcher{Dir: dir, Version: version, Args: os.Args[1:], Poll: 50 * time.Millisecond, StopGrace: 2 * time.Second}
	if out := l.Launch(ctx); !out.RunSelf {
		os.Exit(out.Exit)
	}
	f, err := os.OpenFile(filepath.Join(dir, "ran"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err == nil {
		fmt.Fprintf(f, "%s %s %d\n", version, ota.Running(), os.Getpid())
		f.Close()
	}
	n := systemd.FromEnv()
	wd, _ := systemd.WatchdogInterval()
	switch mode {
	case "crash":
		os.Exit(3)
	case "hang":
		n.Ready("running")
		n.Watchdog()
		select {}
	}
	n.Ready("running")
	if mode == "healthy" {
		if _, err := ota.CommitTrial(dir, ota.Running(), time.Now()); err != nil {
			fmt.Fprintln(os.Stderr, "commit:", err)
			os.Exit(1)
		}
	}
	tick := time.NewTicker(max(wd/4, 10*time.Millisecond))
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			n.Watchdog()
		}
	}
}
