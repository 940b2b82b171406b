package harness

import (
	"context"
	"io"

	"github.com/thermofleet/thermo/controllerlite/server"
)

// ServeCommand is the mttr subcommand that runs controllerlite with its
// embedded broker, as `controllerlite serve` does (both are package
// server), so that `mttr --broker embedded` needs no other binary.
const ServeCommand = "embedded-serve"

// Serve runs controllerlite with its embedded broker until ctx is done:
// `controllerlite serve` itself, with the flags the harness passes.
func Serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return server.Command(ctx, args, stdout, stderr)
}
