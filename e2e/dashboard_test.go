package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/history"
	"github.com/thermofleet/thermo/controllerlite/web"
	"github.com/thermofleet/thermo/protocol"
)

// The dashboard in a real browser: headless Chromium (Debian's chromium,
// which .ci/run installs) driven by chromedp against the controllerlite
// binary and real thermostats. Each step reads like what a person does;
// each page is saved as a PNG in THERMO_ARTIFACTS (e2e/artifacts by
// default), and with THERMO_DOCS_IMG=1 also into docs/img for the docs.

// chromiumPath is Debian's Chromium.
const chromiumPath = "/usr/bin/chromium"

// Viewports of the screenshots: a laptop and a phone.
var (
	desktop = [2]int64{1280, 900}
	phone   = [2]int64{390, 844}
)

// browser starts a headless Chromium for the test and returns a tab. Any
// uncaught JavaScript exception on a page fails the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the dashboard tests need Chromium at %s (apt-get install chromium; .ci/run installs it): %v", chromiumPath, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		// Without these Chromium tries the network on its own, and on a
		// closed machine its connections are refused.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(int(desktop[0]), int(desktop[1])),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })

	var mu sync.Mutex
	var exceptions []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			msg := e.ExceptionDetails.Text
			if x := e.ExceptionDetails.Exception; x != nil {
				msg += " " + x.Description
			}
			mu.Lock()
			exceptions = append(exceptions, fmt.Sprintf("%s:%d: %s", e.ExceptionDetails.URL, e.ExceptionDetails.LineNumber+1, msg))
			mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	// Anything the pages' Content-Security-Policy blocks is a bug: it
	// would silently not work for the user.
	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
		Source: `window.cspViolations = []; document.addEventListener('securitypolicyviolation', (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));`,
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range exceptions {
			t.Errorf("javascript exception: %s", e)
		}
	})
	return ctx
}

// do runs browser steps, bounded by waitTimeout.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	if err := chromedp.Do(c, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// js evaluates an expression in the page.
func evalJS[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitPage waits until the page's expression is true; seen is evaluated
// for the failure message.
func waitPage(t *testing.T, ctx context.Context, what, cond, seen string) {
	t.Helper()
	eventually(t, what, func() (bool, string) {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		ok, err := chromedp.Run(c, chromedp.Evaluate[bool]("!!("+cond+")"))
		if err != nil {
			return false, err.Error()
		}
		s, _ := chromedp.Run(c, chromedp.Evaluate[string]("String("+seen+")"))
		return ok, s
	})
}

// screenshot saves the page as NAME.png (at the viewport's size).
func screenshot(t *testing.T, ctx context.Context, name string, size [2]int64) {
	t.Helper()
	var png []byte
	do(t, ctx, "screenshot "+name,
		chromedp.EmulateViewport(size[0], size[1]),
		// Let the layout settle at the new width (the chart resizes).
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			_, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))", chromedp.EvalAwaitPromise))
			return err
		}),
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) (err error) {
			png, err = chromedp.Run(ctx, chromedp.FullScreenshot(100))
			return err
		}),
		chromedp.EmulateViewport(desktop[0], desktop[1]),
	)
	if v := evalJS[[]string](t, ctx, `window.cspViolations || []`); len(v) > 0 {
		t.Errorf("%s: the Content-Security-Policy blocked %q", name, v)
	}
	dirs := []string{os.Getenv("THERMO_ARTIFACTS")}
	if dirs[0] == "" {
		dirs[0] = "artifacts"
	}
	if os.Getenv("THERMO_DOCS_IMG") == "1" {
		dirs = append(dirs, filepath.Join("..", "docs", "img"))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(d, name+".png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s", p)
	}
}

// TestDashboard: the fleet renders and follows the thermostats live; a
// setpoint, a mode, a preset and a week program set on the device page
// reach the thermostat; a refused value shows the controller's reason
// next to its control; a change made at the thermostat appears without a
// reload; a stopped thermostat greys out; the history chart draws.
func TestDashboard(t *testing.T) {
	if testing.Short() {
		t.Skip("runs both binaries and Chromium")
	}
	ctx := browser(t)
	w := newBareWorld(t, embedded)
	dataDir := t.TempDir()
	seedHistory(t, dataDir, "d1", 8*24*time.Hour)
	ctl := startBinController(t, w, dataDir)
	fast := []string{"--telemetry-interval", "1s", "--sim-speed", "60"}
	d1 := newBinThermostat(t, w, "d1", fast...).start()
	d2 := newBinThermostat(t, w, "d2", fast...).start()
	d1.synced()
	d2.synced()
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "d1", "--mode", "heat", "--setpoint", "21")
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "d2", "--mode", "cool", "--setpoint", "16")
	d1.synced()
	d2.synced()
	base := "http://" + ctl.apiAddr

	// The fleet: a card per device with its temperature.
	do(t, ctx, "open the fleet", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("dev-d1")), chromedp.WaitVisible(chromedp.ID("dev-d2")))
	waitPage(t, ctx, "the fleet's feed is live", `document.getElementById('feed').dataset.state === 'live'`, `document.getElementById('feed').dataset.state`)
	waitPage(t, ctx, "d1's card shows its room temperature",
		`/^\d+\.\d °C$/.test(document.querySelector('#dev-d1 .temp').textContent)`, `document.querySelector('#dev-d1').innerText`)
	if card := evalJS[string](t, ctx, `document.querySelector('#dev-d1').innerText`); !strings.Contains(card, "online") || !strings.Contains(card, "heat") {
		t.Errorf("d1's card says %q, want online and its mode", card)
	}

	// °F by the user's choice, kept in the browser; the wire stays °C.
	do(t, ctx, "switch to °F", chromedp.Click(chromedp.ID("unit")))
	waitPage(t, ctx, "temperatures in °F", `document.querySelector('#dev-d1 .setpoint').textContent.endsWith('°F')`, `document.querySelector('#dev-d1 .setpoint').textContent`)
	do(t, ctx, "reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("dev-d1")))
	waitPage(t, ctx, "°F kept across a reload", `document.querySelector('#dev-d1 .setpoint').textContent.endsWith('°F')`, `document.querySelector('#dev-d1 .setpoint').textContent`)
	do(t, ctx, "back to °C", chromedp.Click(chromedp.ID("unit")))

	// The device page: the setpoint typed in the field reaches the thermostat.
	do(t, ctx, "open d1", chromedp.Click(chromedp.CSS(`#dev-d1 a`)), chromedp.WaitVisible(chromedp.ID("sp")))
	waitPage(t, ctx, "d1's setpoint in the field", `document.getElementById('sp').value !== ''`, `document.getElementById('sp').value`)
	// The firmware the thermostat reports, as the fleet holds it.
	if c, err := w.ctl("d1"); err != nil || c.Firmware == "" {
		t.Errorf("the fleet holds no firmware version for d1: %+v, %v", c, err)
	} else {
		waitPage(t, ctx, "d1's firmware on its page", fmt.Sprintf(`document.getElementById('firmware').textContent === 'firmware %s'`, c.Firmware),
			`document.getElementById('firmware').textContent`)
	}
	typeInto(t, ctx, "#sp", "23.5\r")
	waitPage(t, ctx, "saved next to the setpoint", `document.getElementById('sp-msg').textContent.startsWith('saved')`, `document.getElementById('sp-msg').textContent`)
	waitThermostat(t, d1, "setpoint 23.5 from the page", func(sp float64, mode, preset string) bool { return sp == 23.5 && preset == "none" })

	// The + button, twice: one write of 24.5.
	do(t, ctx, "press + twice", chromedp.Click(chromedp.ID("sp-up")), chromedp.Click(chromedp.ID("sp-up")))
	waitThermostat(t, d1, "setpoint 24.5 from +", func(sp float64, _, _ string) bool { return sp == 24.5 })

	// In °F the field shows and takes °F; the thermostat gets Celsius,
	// rounded to 0.1: 72 °F is 22.2 °C.
	do(t, ctx, "switch to °F", chromedp.Click(chromedp.ID("unit")))
	waitPage(t, ctx, "the setpoint in °F", `document.getElementById('sp').value === '76.1' && document.getElementById('sp-unit').textContent === '°F'`,
		`document.getElementById('sp').value + document.getElementById('sp-unit').textContent`)
	typeInto(t, ctx, "#sp", "72\r")
	waitThermostat(t, d1, "72 °F as 22.2 °C", func(sp float64, _, _ string) bool { return sp == 22.2 })
	do(t, ctx, "back to °C", chromedp.Click(chromedp.ID("unit")))

	// A refused value: the controller's reason beside the control, nothing sent.
	typeInto(t, ctx, "#sp", "40\r")
	waitPage(t, ctx, "the reason 40 is refused", `document.getElementById('sp-msg').classList.contains('error') && /setpoint/.test(document.getElementById('sp-msg').textContent)`, `document.getElementById('sp-msg').textContent`)
	t.Logf("refusal shown: %q", evalJS[string](t, ctx, `document.getElementById('sp-msg').textContent`))
	if st, err := d1.status(); err != nil || mustSetpoint(st.Props.Setpoint()) != 22.2 {
		t.Errorf("after a refused 40: thermostat %v %v, want 22.2 still", st.Props, err)
	}

	// Mode and preset.
	do(t, ctx, "choose cool", chromedp.Click(chromedp.CSS(`#mode button[data-mode="cool"]`)))
	waitThermostat(t, d1, "mode cool from the page", func(_ float64, mode, _ string) bool { return mode == "cool" })
	setInput(t, ctx, "#preset", "away")
	waitThermostat(t, d1, "preset away from the page", func(sp float64, _, preset string) bool { return preset == "away" && sp == 16 })
	do(t, ctx, "back to heat", chromedp.Click(chromedp.CSS(`#mode button[data-mode="heat"]`)))
	waitThermostat(t, d1, "mode heat from the page", func(_ float64, mode, _ string) bool { return mode == "heat" })

	// A change at the thermostat appears on the open page, no reload.
	evalJS[bool](t, ctx, `window.noReload = true`)
	command(t, d1.bin, "set", "--control-socket", d1.socket, "--setpoint", "19.5")
	waitPage(t, ctx, "19.5 set at the thermostat shown on the page", `document.getElementById('sp').value === '19.5'`, `document.getElementById('sp').value`)
	if !evalJS[bool](t, ctx, `window.noReload === true`) {
		t.Error("the page reloaded to show the thermostat's change")
	}

	// The week program: two entries on Monday, one moved to Tuesday,
	// Monday copied to Wednesday, saved.
	do(t, ctx, "add two entries on Monday",
		chromedp.Click(chromedp.CSS(`[data-day="mon"] button.add`)),
		chromedp.Click(chromedp.CSS(`[data-day="mon"] button.add`)))
	setInput(t, ctx, `[data-day="mon"] .entry:nth-child(1) .at`, "06:30")
	setInput(t, ctx, `[data-day="mon"] .entry:nth-child(1) .temp-in`, "21")
	setInput(t, ctx, `[data-day="mon"] .entry:nth-child(2) .at`, "22:15")
	setInput(t, ctx, `[data-day="mon"] .entry:nth-child(2) .kind`, "sleep")
	setInput(t, ctx, `[data-day="mon"] .entry:nth-child(2) .move`, "tue")
	// The page refuses what the protocol refuses: two entries at one time.
	do(t, ctx, "two entries on Wednesday",
		chromedp.Click(chromedp.CSS(`[data-day="wed"] button.add`)),
		chromedp.Click(chromedp.CSS(`[data-day="wed"] button.add`)))
	setInput(t, ctx, `[data-day="wed"] .entry:nth-child(2) .at`, "07:00")
	waitPage(t, ctx, "Wednesday marked and save disabled",
		`document.querySelector('[data-day="wed"] .day-errors').textContent.includes('two entries at 07:00') && document.getElementById('sched-save').disabled`,
		`document.querySelector('[data-day="wed"] .day-errors').textContent`)
	do(t, ctx, "delete one of Wednesday's", chromedp.Click(chromedp.CSS(`[data-day="wed"] .entry:nth-child(2) .del`)),
		chromedp.Click(chromedp.CSS(`[data-day="wed"] .entry:nth-child(1) .del`)))
	setInput(t, ctx, `[data-day="mon"] .copy`, "wed")
	do(t, ctx, "run it and save", chromedp.Click(chromedp.ID("sched-enabled")), chromedp.Click(chromedp.ID("sched-save")))
	waitPage(t, ctx, "week program saved", `document.getElementById('sched-msg').textContent.startsWith('saved')`, `document.getElementById('sched-msg').textContent`)
	eventually(t, "d1 runs the page's week program", func() (bool, string) {
		st, err := d1.status()
		if err != nil {
			return false, err.Error()
		}
		s, ok := st.Props.Schedule()
		b, _ := json.Marshal(s)
		mon, tue := s.Week["mon"], s.Week["tue"]
		return ok && s.Enabled && len(mon) == 1 && mon[0].At == "06:30" && mon[0].SetpointC != nil && *mon[0].SetpointC == 21 &&
			len(tue) == 1 && tue[0].At == "22:15" && tue[0].Preset == "sleep" &&
			len(s.Week["wed"]) == 1 && s.Week["wed"][0].At == "06:30", string(b)
	})

	// What only the controller can check, it refuses with the reason,
	// shown beside the week program; the device keeps its program.
	do(t, ctx, "a zone that does not exist", chromedp.SendKeys(chromedp.ID("sched-tz"), "Mars/Olympus"), chromedp.Click(chromedp.ID("sched-save")))
	waitPage(t, ctx, "the zone refused with the reason", `document.getElementById('sched-msg').classList.contains('error') && document.getElementById('sched-msg').textContent.includes('Mars/Olympus')`,
		`document.getElementById('sched-msg').textContent`)
	t.Logf("refusal shown: %q", evalJS[string](t, ctx, `document.getElementById('sched-msg').textContent`))
	if st, err := d1.status(); err != nil {
		t.Error(err)
	} else if sch, _ := st.Props.Schedule(); sch.TZ != "" || len(sch.Week["mon"]) != 1 {
		t.Errorf("after a refused zone the thermostat holds %+v", sch)
	}
	do(t, ctx, "revert", chromedp.Click(chromedp.ID("sched-revert")))
	waitPage(t, ctx, "the zone reverted", `document.getElementById('sched-tz').value === ''`, `document.getElementById('sched-tz').value`)

	// The history chart draws from the controller's history: a week
	// recorded before this controller started, and what it records now.
	waitPage(t, ctx, "the 24-hour chart", `document.querySelector('#chart canvas') && +document.getElementById('chart').dataset.points >= 250`,
		`document.getElementById('chart').dataset.points + ' ' + document.getElementById('chart-msg').textContent`)
	for _, c := range []struct {
		button string
		min    int
	}{
		{"7d", 7 * 24}, // an hour a point
		{"30d", 8 * 4}, // six hours a point, 8 days recorded
		{"24h", 250},   // five minutes a point
	} {
		do(t, ctx, "choose "+c.button, chromedp.Click(chromedp.CSS(`#range button[data-range="`+c.button+`"]`)))
		waitPage(t, ctx, fmt.Sprintf("the %s chart with at least %d points", c.button, c.min),
			fmt.Sprintf(`document.querySelector('#chart canvas') && +document.getElementById('chart').dataset.points >= %d`, c.min),
			`document.getElementById('chart').dataset.points + ' ' + document.getElementById('chart-msg').textContent`)
	}
	do(t, ctx, "choose 7 days", chromedp.Click(chromedp.CSS(`#range button[data-range="7d"]`)))
	waitPage(t, ctx, "the 7-day chart", `+document.getElementById('chart').dataset.points >= 168`, `document.getElementById('chart').dataset.points`)
	screenshot(t, ctx, "dashboard-device", desktop)
	screenshot(t, ctx, "dashboard-device-phone", phone)

	// Back to the fleet; a stopped thermostat greys out within a second of
	// the controller knowing it is offline.
	do(t, ctx, "open the fleet", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("dev-d2")))
	waitPage(t, ctx, "the feed is live", `document.getElementById('feed').dataset.state === 'live'`, `document.getElementById('feed').dataset.state`)
	// d1's card shows its week program's next entry, from its telemetry.
	waitPage(t, ctx, "d1's next entry on its card", `(document.querySelector('#dev-d1 .next') || {}).textContent?.startsWith('next: ')`,
		`document.querySelector('#dev-d1').innerText`)
	screenshot(t, ctx, "dashboard-fleet", desktop)
	screenshot(t, ctx, "dashboard-fleet-phone", phone)
	evalJS[bool](t, ctx, `window.greyAt = 0; new MutationObserver(() => {
		const c = document.getElementById('dev-d2');
		if (c && c.classList.contains('offline') && !window.greyAt) window.greyAt = Date.now();
	}).observe(document.getElementById('fleet'), {subtree: true, childList: true, attributes: true}); true`)
	d2.stop()
	var offlineAt time.Time
	eventually(t, "the controller to see d2 go offline", func() (bool, string) {
		d, err := w.ctl("d2")
		if err != nil || d.Online {
			return false, fmt.Sprint(d.Online, err)
		}
		offlineAt = time.Now()
		return true, ""
	})
	waitPage(t, ctx, "d2's card greyed out", `document.getElementById('dev-d2').classList.contains('offline')`, `document.getElementById('dev-d2').className`)
	lag := time.UnixMilli(int64(evalJS[float64](t, ctx, `window.greyAt`))).Sub(offlineAt)
	t.Logf("d2 greyed out %v after the API reported it offline", lag)
	if lag > time.Second {
		t.Errorf("d2 greyed out %v after the controller knew it was offline, want within 1s", lag)
	}
	if txt := evalJS[string](t, ctx, `document.querySelector('#dev-d2 .online').textContent`); !strings.HasPrefix(txt, "offline since") {
		t.Errorf("d2's card says %q, want offline since ...", txt)
	}
	screenshot(t, ctx, "dashboard-fleet-offline", desktop)
}

// TestDashboardLogin: with --http-token-file the page asks for the token
// once and keeps an HttpOnly, SameSite=Strict session cookie; a wrong
// token is refused with the reason; another site cannot post to the
// controller with the browser's cookie.
func TestDashboardLogin(t *testing.T) {
	if testing.Short() {
		t.Skip("runs both binaries and Chromium")
	}
	ctx := browser(t)
	w := newBareWorld(t, embedded)
	tokenFile := filepath.Join(t.TempDir(), "token")
	const token = "s3cret-token-for-the-test"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctl := startBinController(t, w, t.TempDir(), "--http-token-file", tokenFile)
	var err error
	if w.api, err = api.NewClient(ctl.apiAddr, token); err != nil {
		t.Fatal(err)
	}
	newBinThermostat(t, w, "d1").start()
	eventually(t, "d1 known to the controller", func() (bool, string) {
		req, _ := http.NewRequest("GET", "http://"+ctl.apiAddr+"/api/devices/d1", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error()
		}
		res.Body.Close()
		return res.StatusCode == 200, res.Status
	})
	base := "http://" + ctl.apiAddr

	// The device page sends the browser to the login, and back.
	do(t, ctx, "open d1", chromedp.Navigate(base+"/devices/d1"), chromedp.WaitVisible(chromedp.ID("token")))
	if loc := evalJS[string](t, ctx, `location.pathname + location.search`); loc != "/login?next="+url.QueryEscape("/devices/d1") {
		t.Errorf("sent to %s, want the login with next=/devices/d1", loc)
	}
	screenshot(t, ctx, "dashboard-login", desktop)
	screenshot(t, ctx, "dashboard-login-phone", phone)
	do(t, ctx, "a wrong token", chromedp.SendKeys(chromedp.ID("token"), "guess\r"), chromedp.WaitVisible(chromedp.ID("login-error")))
	if msg := evalJS[string](t, ctx, `document.getElementById('login-error').textContent`); !strings.Contains(msg, "not the controller's token") {
		t.Errorf("wrong token: %q", msg)
	}
	do(t, ctx, "the token", chromedp.SendKeys(chromedp.ID("token"), token+"\r"), chromedp.WaitVisible(chromedp.ID("sp")))
	if loc := evalJS[string](t, ctx, `location.pathname`); loc != "/devices/d1" {
		t.Errorf("after the login at %s, want /devices/d1", loc)
	}
	waitPage(t, ctx, "the feed is live with the cookie", `document.getElementById('feed').dataset.state === 'live' && document.getElementById('sp').value !== ''`,
		`document.getElementById('feed').dataset.state`)

	c, cancel := context.WithTimeout(ctx, waitTimeout)
	res, err := chromedp.Call(c, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/"}})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	var session *network.Cookie
	for _, ck := range res.Cookies {
		if ck.Name == web.CookieName {
			session = ck
		}
	}
	if session == nil {
		t.Fatalf("no %s cookie after the login: %+v", web.CookieName, res.Cookies)
	}
	if !session.HTTPOnly || session.SameSite != network.CookieSameSiteStrict || session.Path != "/" {
		t.Errorf("session cookie HttpOnly=%v SameSite=%q Path=%q, want HttpOnly, Strict, /", session.HTTPOnly, session.SameSite, session.Path)
	}
	if got := evalJS[string](t, ctx, `document.cookie`); got != "" {
		t.Errorf("the page's script reads the cookie %q", got)
	}

	// A write from the page works with the cookie alone.
	do(t, ctx, "press +", chromedp.Click(chromedp.ID("sp-up")))
	waitPage(t, ctx, "saved with the cookie", `document.getElementById('sp-msg').textContent.startsWith('saved')`, `document.getElementById('sp-msg').textContent`)
	before := w.mustCtl("d1")

	// Another site's page posts to the controller: the browser sends the
	// cookie with a same-site request, and the controller refuses it.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s/logout"></form><script>document.getElementById('f').submit()</script>`, base)
	}))
	defer evil.Close()
	do(t, ctx, "visit the other site", chromedp.Navigate(evil.URL))
	waitPage(t, ctx, "the controller refused the other site's post", `location.href.endsWith('/logout') && document.body.innerText.includes('cross-origin request refused')`, `location.href + ' ' + document.body.innerText`)
	do(t, ctx, "back to d1", chromedp.Navigate(base+"/devices/d1"), chromedp.WaitVisible(chromedp.ID("sp")))
	if loc := evalJS[string](t, ctx, `location.pathname`); loc != "/devices/d1" {
		t.Errorf("after the other site's post the browser is at %s: the session was ended", loc)
	}

	// The same from outside a browser: a cross-site PUT with the cookie.
	req, _ := http.NewRequest("PUT", base+"/api/devices/d1", strings.NewReader(`{"setpoint_c": 30}`))
	req.Header.Set("Cookie", web.CookieName+"="+session.Value)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	req.Header.Set("Origin", "http://evil.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site PUT with the session cookie: %s, want 403", resp.Status)
	}
	if after := w.mustCtl("d1"); mustSetpoint(after.Props.Setpoint()) != mustSetpoint(before.Props.Setpoint()) {
		t.Errorf("the refused PUT changed the setpoint to %v", after.Props[("setpoint_c")])
	}

	// Logging out ends the session: the page asks for the token again.
	do(t, ctx, "log out", chromedp.Click(chromedp.CSS(`form.logout button`)), chromedp.WaitVisible(chromedp.ID("token")))
	req, _ = http.NewRequest("GET", base+"/api/devices", nil)
	req.Header.Set("Cookie", web.CookieName+"="+session.Value)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the API with the logged-out cookie: %v %v, want 401", resp.Status, err)
	}
}

// typeInto clears a field with the cursor in it, as a person selecting
// its text does, and types keys.
func typeInto(t *testing.T, ctx context.Context, sel, keys string) {
	t.Helper()
	do(t, ctx, "type "+keys+" into "+sel,
		chromedp.Evaluate[chromedp.Void](`(() => { const e = document.querySelector(`+strconv.Quote(sel)+`); e.focus(); e.value = ''; return true; })()`),
		chromedp.SendKeys(chromedp.CSS(sel), keys))
}

// seedHistory writes span of a room's life for device id into the
// controller's history in dataDir, as the controller records telemetry
// (history.Open, Telemetry): a heated room following a day and night
// setpoint, a sample every two minutes, up to a minute ago.
func seedHistory(t *testing.T, dataDir, id string, span time.Duration) {
	t.Helper()
	h, err := history.Open(dataDir, history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for at := now.Add(-span); at.Before(now.Add(-time.Minute)); at = at.Add(2 * time.Minute) {
		sp := 18.0
		if hr := at.Hour(); hr >= 7 && hr < 22 {
			sp = 21
		}
		temp := sp - 0.4 + 0.5*math.Sin(float64(at.Unix())/1500) + 0.1*math.Sin(float64(at.Unix())/97)
		heat := temp < sp-0.2
		action := protocol.ActionIdle
		if heat {
			action = protocol.ActionHeating
		}
		h.Telemetry(id, at, protocol.Telemetry{V: 1, TS: at, TempC: &temp, Heat: heat, SensorOK: true, Action: action},
			protocol.Props{protocol.PropSetpoint: {Val: sp}, protocol.PropMode: {Val: protocol.ModeHeat}})
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
}

// setInput sets an input or select as a person would: chromedp's SetValue
// fires its input and change events.
func setInput(t *testing.T, ctx context.Context, sel, value string) {
	t.Helper()
	do(t, ctx, "set "+sel+" to "+value, chromedp.SetValue(chromedp.CSS(sel), value))
}

// waitThermostat waits until `thermostat status` shows what ok wants.
func waitThermostat(t *testing.T, d *binThermostat, what string, ok func(sp float64, mode, preset string) bool) {
	t.Helper()
	eventually(t, d.id+": "+what, func() (bool, string) {
		st, err := d.status()
		if err != nil {
			return false, err.Error()
		}
		sp, _ := st.Props.Setpoint()
		mode, _ := st.Props.Mode()
		preset, _ := st.Props.Preset()
		return ok(sp, mode, preset), fmt.Sprintf("setpoint %v mode %q preset %q", sp, mode, preset)
	})
}

func mustSetpoint(v float64, _ bool) float64 { return v }
