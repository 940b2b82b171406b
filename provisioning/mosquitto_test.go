package provisioning_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/provisioning"
)

func TestMosquittoConfig(t *testing.T) {
	base := provisioning.MosquittoOptions{CAFile: "/p/ca.crt", CertFile: "/p/server.crt", KeyFile: "/p/server.key", ACLFile: "/p/mosquitto.acl"}
	with := func(f func(*provisioning.MosquittoOptions)) provisioning.MosquittoOptions {
		o := base
		f(&o)
		return o
	}
	tests := []struct {
		name     string
		opts     provisioning.MosquittoOptions
		wantConf []string // lines, in this order
		wantACL  []string
		wantErr  string
	}{
		{"defaults", base,
			[]string{"acl_file /p/mosquitto.acl", "max_packet_size 8192", "listener 8883", "cafile /p/ca.crt", "certfile /p/server.crt", "keyfile /p/server.key",
				"require_certificate true", "use_identity_as_username true", "use_username_as_clientid true", "set_tcp_nodelay true"},
			[]string{
				"pattern write thermo/%u/event", "pattern read thermo/%u/event", "pattern write thermo/%u/telemetry",
				"pattern write thermo/%u/status", "pattern read thermo/%u/cmd",
				"user controller", "topic deny thermo/controller/#", "topic write thermo/+/cmd", "topic read thermo/#",
			}, ""},
		{"port, bind, root, globals, controllers", with(func(o *provisioning.MosquittoOptions) {
			o.Port, o.BindAddress, o.TopicRoot, o.Global = 18883, "127.0.0.1", "site/a", []string{"user root", "persistence true"}
			o.Controllers = []string{"controller-b", "controller", "controller-b"}
		}),
			[]string{"user root", "persistence true", "acl_file /p/mosquitto.acl", "listener 18883 127.0.0.1", "require_certificate true"},
			[]string{
				"pattern write site/a/%u/event", "pattern read site/a/%u/cmd",
				"user controller", "topic deny site/a/controller/#", "topic write site/a/+/cmd", "topic read site/a/#",
				"user controller-b", "topic deny site/a/controller-b/#", "topic write site/a/+/cmd", "topic read site/a/#",
			}, ""},
		{"a device as controller", with(func(o *provisioning.MosquittoOptions) { o.Controllers = []string{"d1"} }), nil, nil, "not a controller's CN"},
		{"a controller name with a slash", with(func(o *provisioning.MosquittoOptions) { o.Controllers = []string{"controller-a/b"} }), nil, nil, "not a controller's CN"},
		{"root too long", with(func(o *provisioning.MosquittoOptions) { o.TopicRoot = strings.Repeat("r", 257) }), nil, nil, "at most 256"},
		{"port out of range", with(func(o *provisioning.MosquittoOptions) { o.Port = 70000 }), nil, nil, "out of range"},
		{"no key file", with(func(o *provisioning.MosquittoOptions) { o.KeyFile = "" }), nil, nil, "key file not set"},
		{"line break in a path", with(func(o *provisioning.MosquittoOptions) { o.CAFile = "/p\nallow_anonymous true" }), nil, nil, "line break"},
		{"wildcard root", with(func(o *provisioning.MosquittoOptions) { o.TopicRoot = "thermo/#" }), nil, nil, "not allowed"},
		{"plus root", with(func(o *provisioning.MosquittoOptions) { o.TopicRoot = "a+" }), nil, nil, "not allowed"},
		{"percent root", with(func(o *provisioning.MosquittoOptions) { o.TopicRoot = "%u" }), nil, nil, "not allowed"},
		{"trailing slash", with(func(o *provisioning.MosquittoOptions) { o.TopicRoot = "thermo/" }), nil, nil, "empty topic level"},
		{"system root", with(func(o *provisioning.MosquittoOptions) { o.TopicRoot = "$SYS" }), nil, nil, "'$'"},
		{"space in root", with(func(o *provisioning.MosquittoOptions) { o.TopicRoot = "a b" }), nil, nil, "not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, acl, err := provisioning.MosquittoConfig(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("MosquittoConfig: %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			assertLinesInOrder(t, "mosquitto.conf", string(conf), tt.wantConf)
			assertLinesInOrder(t, "acl", string(acl), tt.wantACL)
			if strings.Contains(string(conf), "allow_anonymous true") {
				t.Error("config allows anonymous clients")
			}
			// Exactly the contract's topics: nothing broader than a
			// device's own topics or the controller's reading.
			for _, l := range strings.Split(string(acl), "\n") {
				if strings.HasPrefix(l, "pattern") && (strings.Contains(l, "#") || strings.Contains(l, "readwrite")) {
					t.Errorf("ACL line %q is broader than a topic of the contract", l)
				}
			}
			if n := strings.Count(string(acl), "user controller-b\n"); n > 1 {
				t.Errorf("controller-b listed %d times", n)
			}
		})
	}
}

// assertLinesInOrder checks that every wanted line is a whole line of text,
// in the order given.
func assertLinesInOrder(t *testing.T, name, text string, want []string) {
	t.Helper()
	lines := strings.Split(text, "\n")
	i := 0
	for _, w := range want {
		for i < len(lines) && lines[i] != w {
			i++
		}
		if i == len(lines) {
			t.Errorf("%s lacks line %q (in this order):\n%s", name, w, text)
			return
		}
	}
}

func TestWriteMosquittoConfig(t *testing.T) {
	dir := t.TempDir()
	conf, acl, err := provisioning.WriteMosquittoConfig(dir, provisioning.MosquittoOptions{CAFile: "/c", CertFile: "/s", KeyFile: "/k"})
	if err != nil {
		t.Fatal(err)
	}
	if conf != filepath.Join(dir, "mosquitto.conf") || acl != filepath.Join(dir, "mosquitto.acl") {
		t.Errorf("paths %s %s", conf, acl)
	}
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(acl)
	assertLinesInOrder(t, conf, string(b), []string{"acl_file " + abs})
	if m := fileMode(t, acl); m != 0o644 {
		t.Errorf("ACL mode %v", m)
	}
}
