package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/release"
)

const otaUsage = `Usage: controllerlite ota COMMAND [flags]

Commands (through a running 'controllerlite serve --releases-dir DIR'):
  rollout MANIFEST --percent P   offer the signed release to P% of the devices (10, then 50, then 100:
                                 each stage keeps the devices of the one before); again after a pause resumes
  status                         the rollout and each device's state: offered, downloading, installed,
                                 healthy, rolled_back, refused, failed
  pause                          stop offering; offers not yet taken up are withdrawn

A rollout pauses itself when a device rolls the release back.
`

func runOTA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, otaUsage)
		return cli.Usagef("ota: a command is required")
	}
	switch args[0] {
	case "rollout":
		return otaRollout(ctx, args[1:], stdout, stderr)
	case "status":
		return otaStatus(ctx, args[1:], stdout, stderr)
	case "pause":
		return otaPause(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, otaUsage)
		return nil
	}
	fmt.Fprint(stderr, otaUsage)
	return cli.Usagef("ota: unknown command %q", args[0])
}

func otaRollout(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("rollout", "controllerlite ota rollout MANIFEST --percent P [--http ADDR]", stderr)
	var af apiFlags
	af.register(fs)
	percent := fs.Float64("percent", 0, "share of the fleet, 0 < `P` <= 100")
	pos, err := cli.ParseN(fs, args, "MANIFEST")
	if err != nil {
		return cli.HelpOK(err)
	}
	if *percent <= 0 || *percent > 100 {
		return cli.Usagef("rollout: --percent %v: give 0 < P <= 100", *percent)
	}
	data, err := readManifest(pos[0])
	if err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	r, err := c.Rollout(ctx, data, *percent)
	if err != nil {
		return err
	}
	if af.json {
		return json.NewEncoder(stdout).Encode(r)
	}
	fmt.Fprintf(stdout, "rolling out %s (%s) to %v%% of the fleet\n", r.Version, r.Binary, r.Percent)
	return nil
}

func otaStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("status", "controllerlite ota status [--http ADDR] [--json]", stderr)
	var af apiFlags
	af.register(fs)
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	s, err := c.OTAStatus(ctx)
	if err != nil {
		return err
	}
	if af.json {
		return json.NewEncoder(stdout).Encode(s)
	}
	switch r := s.Rollout; {
	case r == nil:
		fmt.Fprintln(stdout, "no rollout")
	case r.Paused:
		fmt.Fprintf(stdout, "rollout of %s at %v%%: PAUSED (%s)\n", r.Version, r.Percent, r.PauseReason)
	default:
		fmt.Fprintf(stdout, "rollout of %s at %v%%\n", r.Version, r.Percent)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTATE\tRUNNING\tSLOT\tREASON")
	for _, d := range s.Devices {
		state := d.State
		if state == "" {
			state = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.ID, strings.ReplaceAll(state, "_", " "), dash(d.Running), dash(d.Slot), d.Reason)
	}
	return tw.Flush()
}

// readManifest reads the manifest file MANIFEST, or BINARY's manifest
// (BINARY.manifest.json) when given the release binary.
func readManifest(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if _, perr := release.Parse(data); perr != nil {
		if alt, err := os.ReadFile(path + release.ManifestSuffix); err == nil {
			return alt, nil
		}
		return nil, fmt.Errorf("%s: %w (give the BINARY%s that 'controllerlite release sign' wrote)", path, perr, release.ManifestSuffix)
	}
	return data, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func otaPause(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("pause", "controllerlite ota pause [--http ADDR]", stderr)
	var af apiFlags
	af.register(fs)
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	r, err := c.PauseRollout(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "rollout of %s paused at %v%%\n", r.Version, r.Percent)
	return nil
}
