package release

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

// Version is a release version: MAJOR.MINOR.PATCH with an optional leading
// "v" and an optional pre-release part after '-' or '~' ("1.3.0-rc.1",
// goreleaser's snapshot "1.3.1~next"), which sorts before the release it
// precedes, as in SemVer and Debian. Build metadata after '+' is ignored.
type Version struct {
	Major, Minor, Patch uint64
	// Pre is the pre-release part, "" for a release.
	Pre string
}

// ParseVersion parses s, refusing anything that is not a version ("dev",
// the version of a build without -X main.version, included): such a build
// cannot be ordered, so it can neither be offered nor be upgraded by one.
func ParseVersion(s string) (Version, error) {
	orig := s
	s = strings.TrimPrefix(s, "v")
	if i := strings.IndexByte(s, '+'); i >= 0 {
		s = s[:i]
	}
	var v Version
	if i := strings.IndexAny(s, "-~"); i >= 0 {
		v.Pre, s = s[i+1:], s[:i]
		if v.Pre == "" {
			return Version{}, fmt.Errorf("version %q: empty pre-release part", orig)
		}
	}
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return Version{}, fmt.Errorf("version %q: want MAJOR.MINOR.PATCH (such as 1.4.0)", orig)
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return Version{}, fmt.Errorf("version %q: %q is not a number", orig, p)
		}
		*[]*uint64{&v.Major, &v.Minor, &v.Patch}[i] = n
	}
	return v, nil
}

// String is the version as ParseVersion reads it back.
func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// Compare returns -1, 0 or +1 as v is older than, the same as or newer
// than w. A pre-release is older than its release; two pre-releases compare
// by their dot-separated identifiers, numbers numerically (SemVer 11).
func (v Version) Compare(w Version) int {
	if c := cmp.Compare(v.Major, w.Major); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Minor, w.Minor); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Patch, w.Patch); c != 0 {
		return c
	}
	switch {
	case v.Pre == w.Pre:
		return 0
	case v.Pre == "":
		return 1
	case w.Pre == "":
		return -1
	}
	a, b := strings.Split(v.Pre, "."), strings.Split(w.Pre, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		na, ea := strconv.ParseUint(a[i], 10, 64)
		nb, eb := strconv.ParseUint(b[i], 10, 64)
		var c int
		switch {
		case ea == nil && eb == nil:
			c = cmp.Compare(na, nb)
		case ea == nil:
			c = -1 // numeric identifiers sort first
		case eb == nil:
			c = 1
		default:
			c = strings.Compare(a[i], b[i])
		}
		if c != 0 {
			return c
		}
	}
	return cmp.Compare(len(a), len(b))
}
