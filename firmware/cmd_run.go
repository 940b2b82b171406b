package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/renew"
	"github.com/thermofleet/thermo/firmware/runner"
	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/systemd"
)

// runCmd is `thermostat run`: it runs until SIGINT or SIGTERM, then stops
// cleanly (status offline published, every output off).
func runCmd(args []string, stderr io.Writer) error {
	fs := cli.NewFlags("run", "thermostat run [--config FILE] --broker mqtts://HOST:PORT [flags]", stderr)
	flags := config.RegisterFlags(fs)
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	cfg, err := flags.Config()
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	// A certificate renewal cut short (a kill, a power cut) is finished or
	// undone before the pair is checked.
	if did, err := renew.Recover(cfg.Cert, cfg.Key); err != nil {
		return err
	} else if did != "" {
		fmt.Fprintf(stderr, "thermostat: certificate swap recovered: %s\n", did)
	}
	// Before the state directory or the control socket exist: a wrong
	// --ca, --cert or --key would otherwise show only as a TLS error on
	// every connection, after the state was created.
	leaf, err := provisioning.CheckCertificates(provisioning.CertCheck{
		CAFile: cfg.CA, CertFile: cfg.Cert, KeyFile: cfg.Key, Use: provisioning.UseDevice,
		// No validity check: a board without a real-time clock may start
		// with its clock far behind, and must heat even offline.
	})
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	level, _ := config.ParseLevel(cfg.LogLevel)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	log.Info("thermostat", "version", version, "commit", commit, "config", cfg.File)
	if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		log.Warn("the device certificate is not valid now: the broker will refuse it unless this board's clock is wrong",
			"file", cfg.Cert, "not_before", leaf.NotBefore, "not_after", leaf.NotAfter, "now", now)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t, err := runner.New(cfg, runner.Options{Logger: log})
	if err != nil {
		return err
	}
	// Under systemd: READY=1 once the control loop has the outputs in a
	// known state, then watchdog pings only while it stays healthy.
	ctx, cancel := context.WithCancel(ctx)
	supervised := make(chan struct{})
	go func() {
		defer close(supervised)
		if err := systemd.Supervise(ctx, t.Loop().Healthy, log); err != nil {
			log.Error("systemd supervision off", "err", err)
		}
	}()
	err = t.Run(ctx)
	cancel()
	<-supervised
	return err
}

// checkRunArgs parses the flags given to `thermostat install` as run
// would, so a typo fails at install time rather than in a restart loop.
func checkRunArgs(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("run flags: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("run flags: unexpected argument %q", fs.Arg(0))
	}
	return nil
}
