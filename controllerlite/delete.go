package main

import (
	"context"
	"fmt"
	"io"

	"github.com/thermofleet/thermo/internal/cli"
)

// runDelete is `controllerlite delete DEVICE`: DELETE /api/devices/{id}.
func runDelete(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("delete", "controllerlite delete [--http ADDR] DEVICE", stderr)
	var af apiFlags
	af.register(fs)
	pos, err := cli.ParseN(fs, args, "DEVICE")
	if err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	res, err := c.Delete(ctx, pos[0])
	if err != nil {
		return fmt.Errorf("delete %s: %w", pos[0], err)
	}
	if af.json {
		return writeJSON(stdout, res)
	}
	if res.Revoked {
		fmt.Fprintf(stdout, "%s deleted and revoked: its retained messages and records are gone, its certificates refused.\n", res.ID)
	} else {
		fmt.Fprintf(stdout, "%s deleted: its retained messages and records are gone.\n", res.ID)
	}
	if res.Note != "" {
		fmt.Fprintln(stdout, res.Note)
	}
	return nil
}
