// Command badfw is a bad release for the OTA tests: signed and offered as
// a thermostat, it misbehaves as its build says (-X main.mode=...):
// "crash" exits 3 at once; "hang" tells the service manager it is ready,
// pings the watchdog once and then nothing more (a hung control loop);
// "noconnect" keeps the watchdog fed but never connects to the broker.
// It never proves healthy, so every board must roll it back by itself.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/systemd"
)

var (
	version = "dev"
	mode    = "crash"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Printf("thermostat %s (badfw %s)\n", version, mode)
		return
	}
	fmt.Fprintf(os.Stderr, "badfw %s %s starting\n", version, mode)
	n := systemd.FromEnv()
	switch mode {
	case "crash":
		os.Exit(3)
	case "hang":
		n.Ready("running")
		n.Watchdog()
		for {
			time.Sleep(time.Hour) // hung: no more pings, no exit
		}
	}
	n.Ready("running")
	wd, _ := systemd.WatchdogInterval()
	tick := time.NewTicker(max(wd/4, 50*time.Millisecond))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	for {
		select {
		case <-sig:
			return
		case <-tick.C:
			n.Watchdog()
		}
	}
}
