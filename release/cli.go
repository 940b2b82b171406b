package release

import (
	"crypto/ed25519"
	"errors"

	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/thermofleet/thermo/internal/atomicfile"
	"github.com/thermofleet/thermo/internal/cli"
)

// DefaultValidity is how long a manifest signed without --expires stays
// good: long enough for a staged rollout, short enough that a release
// withdrawn for a flaw cannot be replayed for years.
const DefaultValidity = 90 * 24 * time.Hour

const cliUsage = `Usage: controllerlite release COMMAND [flags]

Commands:
  keygen [--dir DIR] [--force]            make the fleet's ed25519 release key: DIR/release.key (0600)
                                          and DIR/release.pub (what every thermostat is installed with)
  sign --key FILE [flags] BINARY          write BINARY.manifest.json: version, architecture, size,
                                          SHA-256, minimum version, expiry, signed
  verify --pub FILE MANIFEST [BINARY]     check a manifest as a board would (and the binary against it)

Keep release.key off the fleet: whoever holds it can update every board.
`

// RunCLI runs `controllerlite release ...`.
func RunCLI(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, cliUsage)
		return cli.Usagef("release: a command is required")
	}
	switch args[0] {
	case "keygen":
		return keygenCmd(args[1:], stdout, stderr)
	case "sign":
		return signCmd(args[1:], stdout, stderr)
	case "verify":
		return verifyCmd(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, cliUsage)
		return nil
	}
	fmt.Fprint(stderr, cliUsage)
	return cli.Usagef("release: unknown command %q", args[0])
}

func keygenCmd(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("keygen", "controllerlite release keygen [--dir DIR] [--force]", stderr)
	dir := fs.String("dir", ".", "`DIR` to write release.key and release.pub in")
	force := fs.Bool("force", false, "replace an existing key (boards trusting the old one refuse releases signed by the new)")
	if _, err := cli.ParseN(fs, args); err != nil {
		return cli.HelpOK(err)
	}
	id, err := WriteKeyPair(*dir, *force)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "release key %s: %s/%s (private, keep it off the fleet), %s/%s (install on every thermostat)\n",
		id, strings.TrimSuffix(*dir, "/"), PrivateKeyFile, strings.TrimSuffix(*dir, "/"), PublicKeyFile)
	return nil
}

func signCmd(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("sign", "controllerlite release sign --key FILE [--version V] [--arch OS/ARCH] [--min-version V] [--allow-downgrade] [--expires DURATION|DATE] [--out FILE] BINARY", stderr)
	key := fs.String("key", "", "`FILE` of the release private key (release.key)")
	version := fs.String("version", "", "the binary's `VERSION`, when it cannot say it itself (a cross build)")
	arch := fs.String("arch", "", "the binary's platform `OS/ARCH[/vN]`, when its build information does not say")
	minVersion := fs.String("min-version", "", "the oldest running `VERSION` this release may replace")
	allowDowngrade := fs.Bool("allow-downgrade", false, "let boards running a newer version install this one (a fleet rollback)")
	expires := fs.String("expires", DefaultValidity.String(), "how long the manifest stays good (`DURATION` such as 2160h) or until when (RFC 3339 DATE)")
	out := fs.String("out", "", "manifest `FILE` (default BINARY"+ManifestSuffix+")")
	pos, err := cli.ParseN(fs, args, "BINARY")
	if err != nil {
		return cli.HelpOK(err)
	}
	if *key == "" {
		return cli.Usagef("sign: --key is required")
	}
	now := time.Now()
	until, err := parseExpiry(*expires, now)
	if err != nil {
		return cli.Usagef("sign: --expires: %v", err)
	}
	sk, err := ReadPrivateKey(*key)
	if err != nil {
		return err
	}
	m, err := Describe(pos[0], *version, *arch, until)
	if err != nil {
		return err
	}
	m.MinVersion, m.AllowDowngrade = *minVersion, *allowDowngrade
	data, err := Sign(m, sk, now)
	if err != nil {
		return err
	}
	path := *out
	if path == "" {
		path = pos[0] + ManifestSuffix
	}
	if err := atomicfile.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s %s, %d bytes, sha256 %s, expires %s, key %s\n",
		path, m.Binary, m.Version, m.Size, m.SHA256, until.UTC().Format(time.RFC3339), KeyID(sk.Public().(ed25519.PublicKey)))
	return nil
}

func verifyCmd(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlags("verify", "controllerlite release verify --pub FILE MANIFEST [BINARY]", stderr)
	pub := fs.String("pub", "", "`FILE` of the release public key (release.pub)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return cli.HelpOK(err)
	}
	if *pub == "" || len(pos) < 1 || len(pos) > 2 {
		fs.Usage()
		return cli.Usagef("verify: --pub and a MANIFEST (and optionally its BINARY) are required")
	}
	pk, err := ReadPublicKey(*pub)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(pos[0])
	if err != nil {
		return err
	}
	m, err := Verify(data, pk, time.Now())
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	if len(pos) == 2 {
		if err := CheckFile(m, pos[1]); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "%s: good signature by key %s: %s %s for %s, expires %s\n",
		pos[0], m.KeyID, m.Binary, m.Version, m.Arch, m.Expires.Format(time.RFC3339))
	return nil
}

// parseExpiry reads --expires: a duration from now or an RFC 3339 time.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, errors.New("the duration must be positive")
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration (2160h) nor an RFC 3339 time (2027-03-01T00:00:00Z)", s)
	}
	if !t.After(now) {
		return time.Time{}, fmt.Errorf("%s is not in the future", s)
	}
	return t, nil
}
