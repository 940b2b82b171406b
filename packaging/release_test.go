package packaging

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"
)

// Goreleaser is how the tests run goreleaser: the version the Makefile
// pins, built from the Go module proxy (cached after the first run).
var Goreleaser = []string{"go", "run", "github.com/goreleaser/goreleaser/v2@v2.15.1"}

// release is one snapshot build of the repository.
type release struct {
	Version string // as in the package names, e.g. 0.1.1~next
	Dist    string // goreleaser's dist directory
}

// File is the path of a file of the release, which must exist.
func (r release) File(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(r.Dist, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("release %s: %v", r.Version, err)
	}
	return p
}

// Deb is the path of package pkg's .deb for arch.
func (r release) Deb(t testing.TB, pkg, arch string) string {
	return r.File(t, fmt.Sprintf("%s_%s_%s.deb", pkg, r.Version, arch))
}

var (
	releasesOnce sync.Once
	releases     [2]release
	releasesErr  error
	releasesDir  string
)

// TestMain removes the snapshot builds shared by the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if releasesDir != "" {
		os.RemoveAll(releasesDir)
	}
	os.Exit(code)
}

// snapshots returns two snapshot releases of the repository's work tree,
// an older and a newer version, built once per test run with the
// repository's .goreleaser.yaml. To keep `make test` fast, the copy builds
// only linux/amd64 (what dpkg can install here) and, for the older one,
// linux/arm_6 (the armhf .deb); `make release-snapshot` builds every target.
//
// goreleaser reads the version from the last tag, and only in a clone with
// a remote: the copy gets a remote it never contacts and tags v0.1.0 and
// v0.2.0, so the snapshots are 0.1.1~next and 0.2.1~next. Nothing is
// tagged in the real repository.
func snapshots(t *testing.T) [2]release {
	t.Helper()
	if testing.Short() {
		t.Skip("builds two goreleaser snapshots; skipped with -short")
	}
	if emulated(t) {
		t.Skip("release builds run natively, not under make test-arm")
	}
	for _, tool := range []string{"git", "dpkg-deb", "dpkg"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install dpkg-dev git)", tool)
		}
	}
	releasesOnce.Do(func() { releases, releasesErr = buildSnapshots(t) })
	if releasesErr != nil {
		t.Fatal(releasesErr)
	}
	return releases
}

func buildSnapshots(t *testing.T) ([2]release, error) {
	var rs [2]release
	root := repoRoot(t)
	dir, err := os.MkdirTemp("", "thermo-release-")
	if err != nil {
		return rs, err
	}
	releasesDir = dir
	src := filepath.Join(dir, "src")

	// The work tree's files, as the other tests build them (tracked and
	// untracked, less what .gitignore names).
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "-co", "--exclude-standard").Output()
	if err != nil {
		return rs, fmt.Errorf("git ls-files: %w", err)
	}
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		data, err := os.ReadFile(filepath.Join(root, f))
		if os.IsNotExist(err) {
			continue // deleted in the work tree
		}
		if err != nil {
			return rs, err
		}
		fi, err := os.Lstat(filepath.Join(root, f))
		if err != nil {
			return rs, err
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, f)), 0o755); err != nil {
			return rs, err
		}
		if err := os.WriteFile(filepath.Join(src, f), data, fi.Mode().Perm()); err != nil {
			return rs, err
		}
	}
	if _, err := os.Stat(filepath.Join(src, "README.md")); err != nil {
		return rs, fmt.Errorf("README.md is not in the repository: the release archives need it: %w", err)
	}

	git := func(args ...string) error {
		cmd := exec.Command("git", args...)
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=release test", "GIT_AUTHOR_EMAIL=test@example.invalid",
			"GIT_COMMITTER_NAME=release test", "GIT_COMMITTER_EMAIL=test@example.invalid",
			"GIT_AUTHOR_DATE=2026-11-24T12:00:00Z", "GIT_COMMITTER_DATE=2026-11-24T12:00:00Z")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	for i, step := range []struct {
		tag     string
		targets []string
		version string
	}{
		{"v0.1.0", []string{"linux_amd64_v1", "linux_arm_6"}, "0.1.1~next"},
		{"v0.2.0", []string{"linux_amd64_v1"}, "0.2.1~next"},
	} {
		cfg, err := os.ReadFile(filepath.Join(root, ".goreleaser.yaml"))
		if err != nil {
			return rs, err
		}
		cfg, err = restrictTargets(cfg, step.targets)
		if err != nil {
			return rs, fmt.Errorf(".goreleaser.yaml: %w", err)
		}
		if err := os.WriteFile(filepath.Join(src, ".goreleaser.yaml"), cfg, 0o644); err != nil {
			return rs, err
		}
		if i == 0 {
			if err := git("init", "-q"); err != nil {
				return rs, err
			}
			if err := git("remote", "add", "origin", "https://example.invalid/thermo.git"); err != nil {
				return rs, err
			}
		}
		if err := git("add", "-A"); err != nil {
			return rs, err
		}
		if err := git("commit", "-q", "--allow-empty", "-m", "release "+step.tag); err != nil {
			return rs, err
		}
		if err := git("tag", step.tag); err != nil {
			return rs, err
		}
		args := append(slices.Clone(Goreleaser[1:]), "release", "--snapshot", "--clean")
		out, err := tryRun(src, []string{"GOFLAGS=-buildvcs=false"}, 15*60e9, Goreleaser[0], args...)
		if err != nil {
			return rs, fmt.Errorf("goreleaser %s: %w\n%s", step.tag, err, out)
		}
		dist := filepath.Join(dir, "dist-"+step.tag)
		if err := os.Rename(filepath.Join(src, "dist"), dist); err != nil {
			return rs, err
		}
		rs[i] = release{Version: step.version, Dist: dist}
		t.Logf("goreleaser snapshot %s (%s): %s", step.version, strings.Join(step.targets, ", "), dist)
	}
	return rs, nil
}

// restrictTargets sets every build's targets to those of targets it
// builds (a build keeping none is dropped: the armv7 ones). Decoding
// resolves the config's anchors and merge keys, so every build is whole.
func restrictTargets(cfg []byte, targets []string) ([]byte, error) {
	var c map[string]any
	if err := yaml.Unmarshal(cfg, &c); err != nil {
		return nil, err
	}
	builds, ok := c["builds"].([]any)
	if !ok {
		return nil, fmt.Errorf("no builds")
	}
	var kept []any
	for _, b := range builds {
		build, ok := b.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("build %v is not a mapping", b)
		}
		own, _ := build["targets"].([]any)
		var keep []string
		for _, tg := range own {
			if s, _ := tg.(string); slices.Contains(targets, s) {
				keep = append(keep, s)
			}
		}
		if len(keep) > 0 {
			build["targets"] = keep
			kept = append(kept, build)
		}
	}
	c["builds"] = kept
	return yaml.Marshal(c)
}

func TestRestrictTargets(t *testing.T) {
	cfg, err := os.ReadFile(filepath.Join(repoRoot(t), ".goreleaser.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		targets []string
		ids     []string
	}{
		{[]string{"linux_amd64_v1"}, []string{"thermostat", "controllerlite"}},
		{[]string{"linux_arm_7"}, []string{"thermostat-armv7", "controllerlite-armv7"}},
	} {
		out, err := restrictTargets(cfg, tc.targets)
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			Builds []struct {
				ID      string   `yaml:"id"`
				Targets []string `yaml:"targets"`
			} `yaml:"builds"`
		}
		if err := yaml.Unmarshal(out, &c); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, b := range c.Builds {
			ids = append(ids, b.ID)
			if !slices.Equal(b.Targets, tc.targets) {
				t.Errorf("%v: build %s targets %v", tc.targets, b.ID, b.Targets)
			}
		}
		if !slices.Equal(ids, tc.ids) {
			t.Errorf("%v: builds %v, want %v", tc.targets, ids, tc.ids)
		}
	}
}
