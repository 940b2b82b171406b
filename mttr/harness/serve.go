package harness

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/server"
	"github.com/thermofleet/thermo/protocol"
)

// ServeCommand is the mttr subcommand that runs controllerlite with its
// embedded broker, as `controllerlite serve` does (both are package
// server), so that `mttr --broker embedded` needs no other binary.
const ServeCommand = "embedded-serve"

// Serve runs controllerlite with its embedded broker until ctx is done.
// It takes the flags of `controllerlite serve` that the harness passes.
func Serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(ServeCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg server.Config
	var level, tokenFile string
	fs.StringVar(&cfg.CAFile, "ca", "", "fleet CA certificate `FILE`")
	fs.StringVar(&cfg.CertFile, "cert", "", "the embedded broker's server certificate `FILE`")
	fs.StringVar(&cfg.KeyFile, "key", "", "its private key `FILE`")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "`DIR` of the controller's and the broker's stores")
	fs.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:0", "HTTP API listen `ADDR`")
	fs.StringVar(&tokenFile, "http-token-file", "", "`FILE` holding the API's bearer token")
	fs.StringVar(&cfg.Listen, "listen", "", "embedded broker's TLS listen `ADDR`")
	fs.StringVar(&cfg.TopicRoot, "topic-root", protocol.DefaultRoot, "first topic level")
	fs.StringVar(&level, "log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s takes no arguments, got %q", ServeCommand, fs.Arg(0))
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("--log-level %q: %w", level, err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	if tokenFile != "" {
		tok, err := api.ReadTokenFile(tokenFile)
		if err != nil {
			return err
		}
		cfg.HTTPToken = tok
	}
	s, err := server.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "controllerlite: mqtt broker listening on %s\ncontrollerlite: http listening on %s\n", s.BrokerAddr(), s.HTTPAddr())
	return s.Wait()
}
