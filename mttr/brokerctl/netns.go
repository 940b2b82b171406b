package brokerctl

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
)

// NetNS is a network namespace for a broker, reached from the harness's
// namespace over two veth pairs: a data link the clients use, which Cut
// takes down, and a control link (for controllerlite's HTTP API) that
// stays up.
//
// Cut sets the namespace's end of the data link down. The harness's end
// keeps a permanent neighbour entry for the broker's address, so nothing
// fails fast: established connections and new connection attempts alike
// go unanswered, as in a real partition, until Heal.
type NetNS struct {
	// Name of the namespace.
	Name string
	// BrokerIP is the broker's address on the data link; HostIP the
	// harness's end of it.
	BrokerIP, HostIP string
	// ControlIP is the broker's address on the control link.
	ControlIP string

	dataHost, dataNS, ctlHost, ctlNS string
}

// NetNSAvailable reports why network namespaces cannot be used here, or
// nil: they need root and iproute2's ip.
func NetNSAvailable() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("network namespaces need iproute2's ip command")
	}
	return nil
}

// NewNetNS creates a namespace with its links. index (0-249) picks the
// subnet 10.213.index.0/29 and keeps concurrent runs apart; it must not
// be in use already.
func NewNetNS(name string, index int) (_ *NetNS, err error) {
	if err := NetNSAvailable(); err != nil {
		return nil, err
	}
	if index < 0 || index > 249 {
		return nil, fmt.Errorf("netns: subnet index %d out of 0-249", index)
	}
	n := &NetNS{
		Name:      name,
		HostIP:    fmt.Sprintf("10.213.%d.1", index),
		BrokerIP:  fmt.Sprintf("10.213.%d.2", index),
		ControlIP: fmt.Sprintf("10.213.%d.6", index),
		// Interface names are at most 15 bytes.
		dataHost: fmt.Sprintf("mt%dd0", index),
		dataNS:   fmt.Sprintf("mt%dd1", index),
		ctlHost:  fmt.Sprintf("mt%dc0", index),
		ctlNS:    fmt.Sprintf("mt%dc1", index),
	}
	if addrInUse(n.HostIP) {
		return nil, fmt.Errorf("netns: subnet 10.213.%d.0/29 is already in use here", index)
	}
	if err := ip("netns", "add", name); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	hostCtl := fmt.Sprintf("10.213.%d.5", index)
	steps := [][]string{
		{"link", "add", n.dataHost, "type", "veth", "peer", "name", n.dataNS},
		{"link", "add", n.ctlHost, "type", "veth", "peer", "name", n.ctlNS},
		{"link", "set", n.dataNS, "netns", name},
		{"link", "set", n.ctlNS, "netns", name},
		{"addr", "add", n.HostIP + "/30", "dev", n.dataHost},
		{"addr", "add", hostCtl + "/30", "dev", n.ctlHost},
		{"link", "set", n.dataHost, "up"},
		{"link", "set", n.ctlHost, "up"},
		{"-n", name, "link", "set", "lo", "up"},
		{"-n", name, "addr", "add", n.BrokerIP + "/30", "dev", n.dataNS},
		{"-n", name, "addr", "add", n.ControlIP + "/30", "dev", n.ctlNS},
		{"-n", name, "link", "set", n.dataNS, "up"},
		{"-n", name, "link", "set", n.ctlNS, "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, err
		}
	}
	mac, err := ipOut("-n", name, "-br", "link", "show", n.dataNS)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(mac)
	if len(f) < 3 {
		return nil, fmt.Errorf("netns: cannot read the MAC address of %s from %q", n.dataNS, mac)
	}
	if err := ip("neigh", "replace", n.BrokerIP, "lladdr", f[2], "dev", n.dataHost, "nud", "permanent"); err != nil {
		return nil, err
	}
	return n, nil
}

// Wrap prefixes argv to run it inside the namespace.
func (n *NetNS) Wrap(argv []string) []string {
	return append([]string{"ip", "netns", "exec", n.Name}, argv...)
}

// Cut drops every packet between the broker and its clients.
func (n *NetNS) Cut() error { return ip("-n", n.Name, "link", "set", n.dataNS, "down") }

// Heal restores the data link.
func (n *NetNS) Heal() error { return ip("-n", n.Name, "link", "set", n.dataNS, "up") }

// Close deletes the namespace and its links.
func (n *NetNS) Close() error {
	ip("link", "del", n.dataHost)
	ip("link", "del", n.ctlHost)
	return ip("netns", "del", n.Name)
}

func ip(args ...string) error {
	_, err := ipOut(args...)
	return err
}

func ipOut(args ...string) (string, error) {
	cmd := exec.Command("ip", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// addrInUse reports whether an interface here already has the address.
func addrInUse(addr string) bool {
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range ifs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.String() == addr {
			return true
		}
	}
	return false
}
