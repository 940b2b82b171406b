package packaging

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/thermofleet/thermo/firmware/state"
	"github.com/thermofleet/thermo/protocol"
)

// dpkgRoot is a throwaway system for dpkg --root: an empty package
// database, an /etc with only root in it, and a "running systemd"
// (/run/systemd/system) whose systemctl is a fake that logs its calls.
// Maintainer scripts run on the host without chroot
// (--force-script-chrootless) with $DPKG_ROOT set, which ours honour.
type dpkgRoot struct {
	t     *testing.T
	dir   string
	calls string
	path  string
}

func newDpkgRoot(t *testing.T) *dpkgRoot {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("dpkg --root with maintainer scripts needs root")
	}
	r := &dpkgRoot{t: t, dir: t.TempDir()}
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "etc", "run/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(r.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range map[string]string{
		"var/lib/dpkg/status":    "",
		"var/lib/dpkg/available": "",
		"etc/passwd":             "root:x:0:0:root:/root:/bin/bash\n",
		"etc/group":              "root:x:0:\n",
		"etc/shadow":             "root:*:20000:0:99999:7:::\n",
		"etc/gshadow":            "root:*::\n",
	} {
		if err := os.WriteFile(filepath.Join(r.dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := t.TempDir()
	r.calls = filepath.Join(bin, "systemctl.log")
	script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %q\n", r.calls)
	if err := os.WriteFile(filepath.Join(bin, "systemctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	r.path = bin + ":" + os.Getenv("PATH")
	return r
}

// dpkg runs dpkg on the root and returns its output.
func (r *dpkgRoot) dpkg(args ...string) string {
	r.t.Helper()
	args = append([]string{"--root=" + r.dir, "--force-script-chrootless", "--log=/dev/null"}, args...)
	cmd := exec.Command("dpkg", args...)
	cmd.Env = append(os.Environ(), "PATH="+r.path, "DEBIAN_FRONTEND=noninteractive")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out // no stdin: a conffile prompt fails
	if err := cmd.Run(); err != nil {
		r.t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// takeCalls returns the systemctl calls since the last takeCalls.
func (r *dpkgRoot) takeCalls() []string {
	r.t.Helper()
	b, err := os.ReadFile(r.calls)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		r.t.Fatal(err)
	}
	os.Remove(r.calls)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func (r *dpkgRoot) path_(p string) string { return filepath.Join(r.dir, p) }

func (r *dpkgRoot) read(p string) string {
	r.t.Helper()
	b, err := os.ReadFile(r.path_(p))
	if err != nil {
		r.t.Fatal(err)
	}
	return string(b)
}

func (r *dpkgRoot) exists(p string) bool {
	_, err := os.Lstat(r.path_(p))
	return err == nil
}

// account returns the uid and gid of user in the root's /etc/passwd, or -1.
func (r *dpkgRoot) account(user string) (uid, gid int) {
	for _, l := range strings.Split(r.read("etc/passwd"), "\n") {
		f := strings.Split(l, ":")
		if len(f) == 7 && f[0] == user {
			uid, _ = strconv.Atoi(f[2])
			gid, _ = strconv.Atoi(f[3])
			return uid, gid
		}
	}
	return -1, -1
}

// members returns the members of group in the root's /etc/group, or nil
// when there is no such group.
func (r *dpkgRoot) members(group string) []string {
	for _, l := range strings.Split(r.read("etc/group"), "\n") {
		f := strings.Split(l, ":")
		if len(f) == 4 && f[0] == group {
			return append(strings.Split(f[3], ","), "") // "" marks a group that exists
		}
	}
	return nil
}

func restarts(calls []string) []string {
	var rs []string
	for _, c := range calls {
		verb, _, _ := strings.Cut(c, " ")
		if slices.Contains([]string{"start", "stop", "restart", "try-restart", "reload-or-restart", "kill"}, verb) {
			rs = append(rs, c)
		}
	}
	return rs
}

// TestUpgradeKeepsState installs the older thermostat .deb, uses it as a
// device would, upgrades to the newer one, then removes and purges it.
func TestUpgradeKeepsState(t *testing.T) {
	rs := snapshots(t)
	r := newDpkgRoot(t)
	oldDeb, newDeb := rs[0].Deb(t, "thermostat", "amd64"), rs[1].Deb(t, "thermostat", "amd64")

	// First install: account, groups, state directory; not started.
	out := r.dpkg("-i", oldDeb)
	if !strings.Contains(out, "the service is not started yet") {
		t.Errorf("install output lacks the next steps:\n%s", out)
	}
	if c := r.takeCalls(); !slices.Equal(c, []string{"daemon-reload"}) {
		t.Errorf("first install: systemctl %q, want only daemon-reload", c)
	}
	uid, gid := r.account("thermostat")
	if uid <= 0 {
		t.Fatalf("no thermostat user:\n%s", r.read("etc/passwd"))
	}
	if !strings.Contains(r.read("etc/passwd"), ":/var/lib/thermostat:/usr/sbin/nologin") {
		t.Errorf("thermostat user is not a no-login system user:\n%s", r.read("etc/passwd"))
	}
	for _, g := range []string{"gpio", "i2c"} {
		if !slices.Contains(r.members(g), "thermostat") {
			t.Errorf("thermostat not in group %s:\n%s", g, r.read("etc/group"))
		}
	}
	fi, err := os.Stat(r.path_("var/lib/thermostat"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o700 || int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("state directory %v owned %d:%d, want 0700 %d:%d", fi.Mode(), st.Uid, st.Gid, uid, gid)
	}

	// The device in use: an edited config, its key, its clock, an enabled
	// service with flags recorded by `thermostat install`.
	config := r.read("etc/thermostat/config.yaml") + "# edited on the device\nbroker: mqtts://controller.lan:8883\n"
	must(t, os.WriteFile(r.path_("etc/thermostat/config.yaml"), []byte(config), 0o644))
	const key = "-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n"
	must(t, os.WriteFile(r.path_("etc/thermostat/device.key"), []byte(key), 0o600))
	must(t, os.Chown(r.path_("etc/thermostat/device.key"), uid, gid))
	clock := protocol.Clock{41, 17}
	saveState(t, r.path_("var/lib/thermostat"), clock)
	must(t, os.MkdirAll(r.path_("etc/systemd/system/multi-user.target.wants"), 0o755))
	must(t, os.Symlink("/lib/systemd/system/thermostat.service", r.path_("etc/systemd/system/multi-user.target.wants/thermostat.service")))
	must(t, os.MkdirAll(r.path_("etc/systemd/system/thermostat.service.d"), 0o755))
	must(t, os.WriteFile(r.path_("etc/systemd/system/thermostat.service.d/10-install-flags.conf"), []byte("[Service]\nExecStart=\nExecStart=/usr/bin/thermostat run --hal sim\n"), 0o644))

	// Upgrade.
	out = r.dpkg("-i", newDeb)
	if strings.Contains(out, "not started yet") {
		t.Errorf("upgrade printed the first-install message:\n%s", out)
	}
	calls := r.takeCalls()
	if rs := restarts(calls); !slices.Equal(rs, []string{"try-restart thermostat.service"}) {
		t.Errorf("upgrade: systemctl %q; want exactly one try-restart (a restart if running)", calls)
	}
	if v := run(t, "", nil, r.path_("usr/bin/thermostat"), "version"); !strings.Contains(v, rs[1].Version) {
		t.Errorf("after upgrade: %q, want %s", v, rs[1].Version)
	}
	if got := r.read("etc/thermostat/config.yaml"); got != config {
		t.Errorf("upgrade replaced the edited config:\n%s", got)
	}
	for _, p := range []string{"etc/thermostat/config.yaml.dpkg-new", "etc/thermostat/config.yaml.dpkg-dist"} {
		if r.exists(p) {
			t.Errorf("upgrade left %s", p)
		}
	}
	if got := r.read("etc/thermostat/device.key"); got != key {
		t.Error("upgrade changed the device key")
	}
	if fi, err := os.Stat(r.path_("etc/thermostat/device.key")); err != nil || fi.Mode().Perm() != 0o600 || int(fi.Sys().(*syscall.Stat_t).Uid) != uid {
		t.Errorf("device key after upgrade: %v %v", fi.Mode(), err)
	}
	if got := loadState(t, r.path_("var/lib/thermostat")); got != clock {
		t.Errorf("clock after upgrade %v, want %v", got, clock)
	}
	if u, _ := r.account("thermostat"); u != uid {
		t.Errorf("thermostat uid %d after upgrade, was %d", u, uid)
	}
	for _, p := range []string{"etc/systemd/system/multi-user.target.wants/thermostat.service", "etc/systemd/system/thermostat.service.d/10-install-flags.conf"} {
		if !r.exists(p) {
			t.Errorf("upgrade removed %s", p)
		}
	}

	// Remove: the service is stopped; config, state, key and user stay.
	r.dpkg("--remove", "thermostat")
	if rs := restarts(r.takeCalls()); !slices.Equal(rs, []string{"stop thermostat.service"}) {
		t.Errorf("remove: %q, want a stop", rs)
	}
	for _, p := range []string{"usr/bin/thermostat", "lib/systemd/system/thermostat.service"} {
		if r.exists(p) {
			t.Errorf("remove left %s", p)
		}
	}
	if r.read("etc/thermostat/config.yaml") != config || r.read("etc/thermostat/device.key") != key {
		t.Error("remove touched the config or the key")
	}
	if got := loadState(t, r.path_("var/lib/thermostat")); got != clock {
		t.Errorf("clock after remove %v", got)
	}
	if u, _ := r.account("thermostat"); u != uid {
		t.Error("remove deleted the user")
	}

	// Purge: state, config, account, links and drop-ins go; the key stays.
	out = r.dpkg("--purge", "thermostat")
	if !strings.Contains(out, "kept your files in /etc/thermostat") {
		t.Errorf("purge does not say what it kept:\n%s", out)
	}
	if rs := restarts(r.takeCalls()); len(rs) != 0 {
		t.Errorf("purge: %q", rs)
	}
	for _, p := range []string{"var/lib/thermostat", "etc/thermostat/config.yaml", "etc/systemd/system/multi-user.target.wants/thermostat.service", "etc/systemd/system/thermostat.service.d"} {
		if r.exists(p) {
			t.Errorf("purge left %s", p)
		}
	}
	if u, _ := r.account("thermostat"); u != -1 {
		t.Error("purge kept the thermostat user")
	}
	if r.members("thermostat") != nil {
		t.Error("purge kept the thermostat group")
	}
	if r.read("etc/thermostat/device.key") != key {
		t.Error("purge deleted the user's key")
	}
	if r.members("gpio") == nil || r.members("i2c") == nil {
		t.Error("purge deleted the shared gpio/i2c groups")
	}
}

// TestControllerlitePackageLifecycle: the controller's package makes its
// account and data directory, upgrades with one restart, and purges.
func TestControllerlitePackageLifecycle(t *testing.T) {
	rs := snapshots(t)
	r := newDpkgRoot(t)
	r.dpkg("-i", rs[0].Deb(t, "controllerlite", "amd64"))
	r.takeCalls()
	uid, _ := r.account("controllerlite")
	if uid <= 0 {
		t.Fatalf("no controllerlite user:\n%s", r.read("etc/passwd"))
	}
	if r.members("gpio") != nil {
		t.Error("controllerlite made a gpio group")
	}
	fi, err := os.Stat(r.path_("var/lib/controllerlite"))
	if err != nil || fi.Mode().Perm() != 0o700 || int(fi.Sys().(*syscall.Stat_t).Uid) != uid {
		t.Fatalf("data directory: %v", err)
	}
	if fi, err := os.Stat(r.path_("etc/controllerlite")); err != nil || !fi.IsDir() {
		t.Errorf("no /etc/controllerlite: %v", err)
	}
	must(t, os.WriteFile(r.path_("var/lib/controllerlite/controller.db"), []byte("data"), 0o600))

	r.dpkg("-i", rs[1].Deb(t, "controllerlite", "amd64"))
	if rs := restarts(r.takeCalls()); !slices.Equal(rs, []string{"try-restart controllerlite.service"}) {
		t.Errorf("upgrade: %q", rs)
	}
	if r.read("var/lib/controllerlite/controller.db") != "data" {
		t.Error("upgrade touched the data directory")
	}
	r.dpkg("--purge", "controllerlite")
	if r.exists("var/lib/controllerlite") || r.exists("usr/bin/controllerlite") {
		t.Error("purge left the data directory or the binary")
	}
	if u, _ := r.account("controllerlite"); u != -1 {
		t.Error("purge kept the controllerlite user")
	}
}

func saveState(t *testing.T, dir string, vc protocol.Clock) {
	t.Helper()
	s, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st := protocol.DeviceState{Replica: &protocol.Replica{
		Side:  protocol.DeviceSide,
		VC:    vc,
		Props: protocol.Props{protocol.PropSetpoint: {Val: 21.5, W: protocol.Clock{vc[0], 3}}},
		Src:   protocol.SrcLocal,
	}}
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
}

func loadState(t *testing.T, dir string) protocol.Clock {
	t.Helper()
	s, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	return st.Replica.VC
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
