package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/runner"
)

// runCmd is `thermostat run`: it runs until SIGINT or SIGTERM, then stops
// cleanly (status offline published, every output off).
func runCmd(args []string, stderr io.Writer) error {
	fs := newFlagSet("run", "run [--config FILE] --broker mqtts://HOST:PORT [flags]", stderr)
	flags := config.RegisterFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return helpOK(err)
	}
	cfg, err := flags.Config()
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	level, _ := config.ParseLevel(cfg.LogLevel)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	log.Info("thermostat", "version", version, "commit", commit, "config", cfg.File)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t, err := runner.New(cfg, runner.Options{Logger: log})
	if err != nil {
		return err
	}
	return t.Run(ctx)
}
