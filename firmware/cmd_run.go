package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/ota"
	"github.com/thermofleet/thermo/firmware/renew"
	"github.com/thermofleet/thermo/firmware/runner"
	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/release"
	"github.com/thermofleet/thermo/systemd"
	"github.com/thermofleet/thermo/transport"
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
	// The packaged binary is the launcher: a release on trial, or the
	// active OTA slot, runs instead of it (docs/ota.md).
	launcher := &ota.Launcher{Dir: cfg.StateDir, Version: version, Args: append([]string{"run"}, args...), Log: log}
	if out := launcher.Launch(ctx); !out.RunSelf {
		if out.Exit != 0 {
			return fmt.Errorf("%w (exit status %d)", ota.ErrExitFailure, out.Exit)
		}
		return nil
	}
	key, err := releaseKey(cfg, log)
	if err != nil {
		return err
	}
	var updater *ota.Updater
	opts := runner.Options{Logger: log, Firmware: version}
	if key != nil {
		opts.OnOTA = func(p []byte) { updater.Handle(p) }
	}
	t, err := runner.New(cfg, opts)
	if err != nil {
		return err
	}
	ctx, restart := context.WithCancel(ctx)
	defer restart()
	var restarting atomic.Bool
	if key != nil {
		if updater, err = newUpdater(cfg, key, t, log, func() { restarting.Store(true); restart() }); err != nil {
			return err
		}
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
	updaterDone := make(chan struct{})
	go func() {
		defer close(updaterDone)
		if updater != nil {
			updater.Run(ctx)
		}
	}()
	err = t.Run(ctx)
	cancel()
	<-supervised
	restart()
	<-updaterDone
	if err == nil && restarting.Load() {
		// Outputs are off; the service manager starts the launcher again
		// (Restart=on-failure), which runs the new release on trial.
		return errRestartForUpdate
	}
	return err
}

// errRestartForUpdate ends `thermostat run` after an update is installed:
// a failure status, so that the service manager restarts it.
var errRestartForUpdate = errors.New("update installed: exiting for the service manager to start it (outputs are off)")

// releaseKey reads the release public key: nil (updates off) when the
// default file is absent; an error for a key given but unreadable.
// The .deb installs an empty file at the default path when it was built
// without the fleet's key: that is "off" too.
func releaseKey(cfg config.Config, log *slog.Logger) (ed25519.PublicKey, error) {
	if cfg.ReleaseKey == config.DefaultReleaseKey {
		fi, err := os.Stat(cfg.ReleaseKey)
		if errors.Is(err, fs.ErrNotExist) || err == nil && fi.Size() == 0 {
			log.Info("over-the-air updates off: no release key (put the fleet's release.pub there)", "file", cfg.ReleaseKey)
			return nil, nil
		}
	}
	key, err := release.ReadPublicKey(cfg.ReleaseKey)
	if err != nil {
		return nil, fmt.Errorf("--release-key: %w", err)
	}
	log.Info("over-the-air updates on", "release_key", release.KeyID(key))
	return key, nil
}

// newUpdater makes the OTA updater of a running thermostat.
func newUpdater(cfg config.Config, key ed25519.PublicKey, t *runner.Thermostat, log *slog.Logger, restart func()) (*ota.Updater, error) {
	tlsConf, err := provisioning.LoadClientTLS(cfg.CA, cfg.Cert, cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("ota: %w", err)
	}
	b, err := transport.ParseBroker(cfg.Broker)
	if err != nil {
		return nil, err
	}
	return ota.NewUpdater(ota.UpdaterOptions{
		Dir: cfg.StateDir, ID: t.ID, Root: cfg.TopicRoot, Running: version, Arch: release.HostArch(), Key: key,
		TLS: tlsConf, BrokerHost: b.Hostname(),
		Trial:   ota.InstallOptions{Deadline: cfg.OTATrialDeadline},
		Publish: t.Client().Publish,
		Healthy: func() error {
			if err := t.Loop().Healthy(); err != nil {
				return fmt.Errorf("control loop: %w", err)
			}
			return t.Synced()
		},
		Restart: restart,
		Log:     log.With("part", "ota"),
	})
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
