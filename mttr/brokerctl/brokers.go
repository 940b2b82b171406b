package brokerctl

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// MosquittoBinary is where Debian installs Mosquitto.
const MosquittoBinary = "/usr/sbin/mosquitto"

// Options describe a broker to run.
type Options struct {
	// Dir is the broker's working directory: config, log, data.
	Dir string
	// Host and Port to listen on; Host is also what clients dial.
	Host string
	Port int
	// CAFile, CertFile and KeyFile: the fleet CA and the broker's server
	// certificate and key.
	CAFile, CertFile, KeyFile string
	// TopicRoot defaults to "thermo".
	TopicRoot string
	// NetNS, if set, runs the broker in that namespace.
	NetNS *NetNS
}

func (o Options) addr() string { return net.JoinHostPort(o.Host, strconv.Itoa(o.Port)) }

func (o Options) check() error {
	if o.Dir == "" || o.Host == "" || o.Port <= 0 || o.CAFile == "" || o.CertFile == "" || o.KeyFile == "" {
		return errors.New("broker options: Dir, Host, Port, CAFile, CertFile and KeyFile are required")
	}
	return os.MkdirAll(o.Dir, 0o700)
}

// Mosquitto returns a Mosquitto broker with the TLS configuration that
// `controllerlite pki mosquitto` writes (package provisioning), in memory
// (persistence off: a kill loses every retained message, the harder
// case for recovery).
func Mosquitto(o Options) (*Process, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	bin := MosquittoBinary
	if _, err := os.Stat(bin); err != nil {
		p, lerr := exec.LookPath("mosquitto")
		if lerr != nil {
			return nil, fmt.Errorf("mosquitto is not installed (%s): apt-get install mosquitto", MosquittoBinary)
		}
		bin = p
	}
	global := []string{
		"log_dest stderr",
		"log_timestamp_format %Y-%m-%dT%H:%M:%S",
		"persistence false",
	}
	if os.Geteuid() == 0 {
		// Started as root, Mosquitto drops to user "mosquitto", which
		// cannot read 0600 keys in a private directory.
		global = append(global, "user root")
	}
	conf, _, err := provisioning.WriteMosquittoConfig(o.Dir, provisioning.MosquittoOptions{
		Port: o.Port, BindAddress: o.Host,
		CAFile: o.CAFile, CertFile: o.CertFile, KeyFile: o.KeyFile,
		TopicRoot: o.TopicRoot, Global: global,
	})
	if err != nil {
		return nil, err
	}
	return &Process{
		Kind:    "mosquitto",
		Argv:    []string{bin, "-c", conf},
		Address: o.addr(),
		LogFile: filepath.Join(o.Dir, "mosquitto.log"),
		NetNS:   o.NetNS,
	}, nil
}

// Aedes returns the node aedes broker of brokers/aedes; dir is that
// directory, with node_modules installed (`make aedes`).
func Aedes(dir string, o Options) (*Process, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, errors.New("aedes needs node (Node.js) on the PATH")
	}
	server := filepath.Join(dir, "server.js")
	if _, err := os.Stat(server); err != nil {
		return nil, fmt.Errorf("aedes: %w (give the brokers/aedes directory with --aedes-dir)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "aedes")); err != nil {
		return nil, fmt.Errorf("aedes: its node modules are not installed: run `make aedes` (npm ci in %s)", dir)
	}
	root := o.TopicRoot
	if root == "" {
		root = protocol.DefaultRoot
	}
	return &Process{
		Kind: "aedes",
		Argv: []string{node, server, "--port", strconv.Itoa(o.Port), "--host", o.Host,
			"--ca", o.CAFile, "--cert", o.CertFile, "--key", o.KeyFile, "--topic-root", root},
		Address: o.addr(),
		LogFile: filepath.Join(o.Dir, "aedes.log"),
		NetNS:   o.NetNS,
	}, nil
}

// Embedded returns controllerlite with its embedded broker, run as
// `argv... --listen HOST:PORT --ca --cert --key --data-dir DIR/data --http
// httpAddr --http-token-file tokenFile`: argv is a command that takes the
// flags of `controllerlite serve`, such as the controllerlite binary with
// "serve", or the mttr binary's own embedded-serve command. The
// controller lives in the broker's process, so a kill or a hang takes
// both.
func Embedded(argv []string, httpAddr, tokenFile string, o Options) (*Process, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		return nil, errors.New("embedded broker: no command")
	}
	args := append(append([]string(nil), argv...),
		"--listen", o.addr(), "--ca", o.CAFile, "--cert", o.CertFile, "--key", o.KeyFile,
		"--data-dir", filepath.Join(o.Dir, "data"), "--http", httpAddr, "--http-token-file", tokenFile)
	if o.TopicRoot != "" {
		args = append(args, "--topic-root", o.TopicRoot)
	}
	return &Process{
		Kind:    "embedded",
		Argv:    args,
		Address: o.addr(),
		LogFile: filepath.Join(o.Dir, "controllerlite.log"),
		NetNS:   o.NetNS,
	}, nil
}

// FreePort returns a TCP port free on host now.
func FreePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
