package packaging

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/systemd"
)

// entry is one line of `dpkg-deb -c`.
type entry struct{ mode, owner string }

// debContents lists a package's files (directories end in "/").
func debContents(t *testing.T, deb string) map[string]entry {
	t.Helper()
	out := run(t, "", nil, "dpkg-deb", "-c", deb)
	m := map[string]entry{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			t.Fatalf("dpkg-deb -c line %q", sc.Text())
		}
		m[f[5]] = entry{f[0], f[1]}
	}
	return m
}

type debSpec struct {
	pkg       string
	files     map[string]string // path -> mode of every regular file
	unit      string
	conffiles string
}

var debs = []debSpec{
	{"thermostat", map[string]string{
		"./usr/bin/thermostat":                               "-rwxr-xr-x",
		"./lib/systemd/system/thermostat.service":            "-rw-r--r--",
		"./etc/thermostat/config.yaml":                       "-rw-r--r--",
		"./etc/thermostat/release.pub":                       "-rw-r--r--",
		"./usr/share/doc/thermostat/copyright":               "-rw-r--r--",
		"./usr/share/doc/thermostat/thermostat.example.yaml": "-rw-r--r--",
	}, systemd.ThermostatUnit, "/etc/thermostat/config.yaml\n/etc/thermostat/release.pub\n"},
	{"controllerlite", map[string]string{
		"./usr/bin/controllerlite":                    "-rwxr-xr-x",
		"./lib/systemd/system/controllerlite.service": "-rw-r--r--",
		"./usr/share/doc/controllerlite/copyright":    "-rw-r--r--",
	}, systemd.ControllerliteUnit, ""},
}

// TestDebPackages checks each .deb from the outside, as dpkg-deb shows it:
// the files, their modes and owners, the control fields, the conffiles
// and the maintainer scripts.
func TestDebPackages(t *testing.T) {
	rs := snapshots(t)
	root := repoRoot(t)
	for _, d := range debs {
		t.Run(d.pkg, func(t *testing.T) {
			deb := rs[0].Deb(t, d.pkg, "amd64")
			files := debContents(t, deb)
			for path, e := range files {
				if e.owner != "root/root" {
					t.Errorf("%s owned by %s", path, e.owner)
				}
				if strings.HasSuffix(path, "/") {
					if e.mode != "drwxr-xr-x" {
						t.Errorf("directory %s mode %s", path, e.mode)
					}
					continue
				}
				want, ok := d.files[path]
				if !ok {
					t.Errorf("unexpected file %s", path)
				} else if e.mode != want {
					t.Errorf("%s mode %s, want %s", path, e.mode, want)
				}
			}
			for path := range d.files {
				if _, ok := files[path]; !ok {
					t.Errorf("missing %s", path)
				}
			}

			fields := run(t, "", nil, "dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Maintainer", "Description")
			for _, want := range []string{"Package: " + d.pkg + "\n", "Version: " + rs[0].Version + "\n", "Architecture: amd64\n", "Maintainer: ", "Description: "} {
				if !strings.Contains(fields, want) {
					t.Errorf("control fields lack %q:\n%s", want, fields)
				}
			}

			// Maintainer scripts: ours, executable; the conffile list.
			ctl := t.TempDir()
			run(t, "", nil, "dpkg-deb", "-e", deb, ctl)
			for _, s := range []string{"postinst", "prerm", "postrm"} {
				fi, err := os.Stat(filepath.Join(ctl, s))
				if err != nil {
					t.Errorf("no %s: %v", s, err)
					continue
				}
				if fi.Mode().Perm() != 0o755 {
					t.Errorf("%s mode %v", s, fi.Mode())
				}
				got, _ := os.ReadFile(filepath.Join(ctl, s))
				want, _ := os.ReadFile(filepath.Join(root, "packaging", s))
				if string(got) != string(want) {
					t.Errorf("%s differs from packaging/%s", s, s)
				}
			}
			if _, err := os.Stat(filepath.Join(ctl, "preinst")); err == nil {
				t.Error("unexpected preinst")
			}
			conf, _ := os.ReadFile(filepath.Join(ctl, "conffiles"))
			if string(conf) != d.conffiles {
				t.Errorf("conffiles %q, want %q", conf, d.conffiles)
			}
		})
	}
}

// TestDebLayout unpacks each .deb into a throwaway root, as dpkg -x does:
// the unit is ours and passes systemd-analyze verify there, the config is
// the example, and the binary runs and carries the release's version.
func TestDebLayout(t *testing.T) {
	rs := snapshots(t)
	repo := repoRoot(t)
	for _, d := range debs {
		t.Run(d.pkg, func(t *testing.T) {
			root := t.TempDir()
			run(t, "", nil, "dpkg", "-x", rs[1].Deb(t, d.pkg, "amd64"), root)

			unit, err := os.ReadFile(filepath.Join(root, "lib/systemd/system", d.pkg+".service"))
			if err != nil {
				t.Fatal(err)
			}
			if string(unit) != d.unit {
				t.Errorf("packaged unit differs from systemd/%s.service", d.pkg)
			}
			if d.pkg == "thermostat" {
				conf, _ := os.ReadFile(filepath.Join(root, "etc/thermostat/config.yaml"))
				example, _ := os.ReadFile(filepath.Join(repo, "firmware/thermostat.example.yaml"))
				if len(conf) == 0 || string(conf) != string(example) {
					t.Error("/etc/thermostat/config.yaml is not firmware/thermostat.example.yaml")
				}
			}
			out := run(t, "", nil, filepath.Join(root, "usr/bin", d.pkg), "version")
			if !strings.Contains(out, rs[1].Version) {
				t.Errorf("%s version: %q lacks %s", d.pkg, out, rs[1].Version)
			}

			analyze, err := exec.LookPath("systemd-analyze")
			if err != nil {
				t.Log("systemd-analyze not installed: unit not verified")
				return
			}
			if err := os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755); err != nil {
				t.Fatal(err)
			}
			run(t, "", nil, "cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/"))
			out, err = tryRun("", nil, 60e9, analyze, "verify", "--root="+root, d.pkg+".service")
			if err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("systemd-analyze verify of the packaged unit: %v\n%s", err, out)
			}
		})
	}
}

// TestArmhfDeb: Debian's armhf is armv6 and armv7 alike, so the armhf .deb
// must carry the GOARM=6 build, which every Pi runs.
func TestArmhfDeb(t *testing.T) {
	rs := snapshots(t)
	for _, pkg := range []string{"thermostat", "controllerlite"} {
		deb := rs[0].Deb(t, pkg, "armhf")
		if arch := strings.TrimSpace(run(t, "", nil, "dpkg-deb", "-f", deb, "Architecture")); arch != "armhf" {
			t.Errorf("%s: Architecture %q", pkg, arch)
		}
		root := t.TempDir()
		run(t, "", nil, "dpkg", "-x", deb, root)
		bin := filepath.Join(root, "usr/bin", pkg)
		info := run(t, "", nil, "go", "version", "-m", bin)
		for _, want := range []string{"GOARCH=arm\n", "GOARM=6\n", "CGO_ENABLED=0\n", "-trimpath=true\n"} {
			if !strings.Contains(info, want) {
				t.Errorf("%s build settings lack %q:\n%s", pkg, want, info)
			}
		}
		if _, err := exec.LookPath("qemu-arm"); err == nil {
			out := run(t, "", nil, "qemu-arm", "-cpu", "arm1176", bin, "version")
			if !strings.Contains(out, rs[0].Version) {
				t.Errorf("%s version under qemu-arm: %q", pkg, out)
			}
		}
	}
}

// TestArchivesAndChecksums: each archive holds the binary, the README, the
// LICENSE, the install guide, the unit and (thermostat) the example
// config; checksums.txt covers every archive and package, correctly.
func TestArchivesAndChecksums(t *testing.T) {
	rs := snapshots(t)
	for _, tc := range []struct {
		archive string
		want    []string
	}{
		{"thermostat_%s_linux_amd64.tar.gz", []string{"thermostat", "README.md", "LICENSE", "docs/install.md", "thermostat.example.yaml", "thermostat.service"}},
		{"thermostat_%s_linux_armv6.tar.gz", []string{"thermostat", "README.md", "LICENSE", "docs/install.md", "thermostat.example.yaml", "thermostat.service"}},
		{"controllerlite_%s_linux_amd64.tar.gz", []string{"controllerlite", "README.md", "LICENSE", "docs/install.md", "controllerlite.service"}},
	} {
		name := strings.Replace(tc.archive, "%s", rs[0].Version, 1)
		got := tarNames(t, rs[0].File(t, name))
		slices.Sort(got)
		slices.Sort(tc.want)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s holds %q, want %q", name, got, tc.want)
		}
	}

	sums, err := os.ReadFile(rs[0].File(t, "checksums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("checksums.txt line %q", line)
		}
		data, err := os.ReadFile(rs[0].File(t, name))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(data)
		if hex.EncodeToString(h[:]) != sum {
			t.Errorf("checksum of %s is wrong", name)
		}
		listed[name] = true
	}
	for _, pattern := range []string{"*.deb", "*.tar.gz"} {
		matches, _ := filepath.Glob(filepath.Join(rs[0].Dist, pattern))
		for _, m := range matches {
			if !listed[filepath.Base(m)] {
				t.Errorf("%s not in checksums.txt", filepath.Base(m))
			}
		}
	}
}

func tarNames(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			names = append(names, h.Name)
		}
	}
}
