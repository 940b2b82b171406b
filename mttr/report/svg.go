package report

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/thermofleet/thermo/mttr/stats"
)

// Chart geometry, in SVG user units.
const (
	svgW, svgH                         = 960, 480
	padLeft, padRight, padTop, padBott = 72, 24, 68, 64
)

var (
	clientColor = map[string]string{ClientOurs: "#1f6fb4", ClientBaseline: "#e6780e"}
	faultShade  = map[string]string{"kill": "#f4f4f4", "hang": "#eef3fa", "partition": "#f7f0f7",
		"kill-instance": "#f4f4f4", "kill-node": "#eef3fa", "restart-postgres": "#f3f7ee", "partition-postgres": "#f7f0f7"}
)

// spread is one client's resync times in one cycle.
type spread struct {
	min, p50, p99, max float64
	n, unrecovered     int
}

func spreadOf(samples []Sample, client string) (spread, bool) {
	var xs []float64
	sp := spread{}
	for _, s := range samples {
		if s.Client != client || !s.ResyncS.Valid() {
			continue
		}
		xs = append(xs, float64(s.ResyncS))
		if !s.Recovered {
			sp.unrecovered++
		}
	}
	if len(xs) == 0 {
		return sp, false
	}
	sm := stats.Summarize(xs)
	sp.min, sp.p50, sp.p99, sp.max, sp.n = slices.Min(xs), sm.P50, sm.P99, sm.Max, sm.N
	return sp, true
}

// WriteSVG draws the recovery (resync) times of every cycle on a
// logarithmic axis: per cycle and client a line from the fastest to the
// slowest device, a box from p50 to p99 and a dot at p50; a triangle marks
// a cycle where some devices had not recovered when it gave up waiting.
// Kill cycles get the targets as dashed lines.
func (r *Result) WriteSVG(w io.Writer) error {
	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }
	esc := func(s string) string {
		var b strings.Builder
		xml.EscapeText(&b, []byte(s))
		return b.String()
	}
	clients := []string{ClientOurs}
	if r.Config.BaselineDevices > 0 {
		clients = append(clients, ClientBaseline)
	}

	lo, hi := math.Inf(1), math.Inf(-1)
	for _, c := range r.Cycles {
		for _, s := range c.Samples {
			if v := float64(s.ResyncS); s.ResyncS.Valid() && v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	hasKill := slices.Contains(r.Faults(), "kill")
	p50T, tailName, tailT, _ := killTargets(r.Config.Devices, Summary{})
	if hasKill {
		lo, hi = math.Min(lo, p50T.Seconds()), math.Max(hi, tailT.Seconds())
	}
	if math.IsInf(lo, 0) {
		lo, hi = 0.01, 10
	}
	lo = math.Max(lo, 1e-3)
	dLo, dHi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if dHi <= dLo {
		dHi = dLo + 1
	}
	plotW, plotH := float64(svgW-padLeft-padRight), float64(svgH-padTop-padBott)
	y := func(v float64) float64 {
		v = math.Max(v, math.Pow(10, dLo))
		return padTop + plotH*(1-(math.Log10(v)-dLo)/(dHi-dLo))
	}
	n := len(r.Cycles)
	slot := plotW / float64(max(n, 1))
	x := func(i int) float64 { return padLeft + slot*(float64(i)+0.5) }

	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	p(`<rect width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	title := fmt.Sprintf("mttr: recovery time per cycle, %s broker, %d devices", r.Config.Broker, r.Config.Devices)
	if r.Config.BaselineDevices > 0 {
		title += fmt.Sprintf(" + %d baseline", r.Config.BaselineDevices)
	}
	from := "broker accepting again"
	if r.Config.Instances > 0 {
		// The cluster's failover faults measure from the device's last
		// change (docs/mttr.md).
		from = "the device's last change (restart-postgres: its return)"
		title += fmt.Sprintf(", %d nodes, %d instances", r.Config.Nodes, r.Config.Instances)
	}
	p(`<text x="%d" y="20" font-size="15" font-weight="bold">%s</text>`+"\n", padLeft, esc(title))
	p(`<text x="%d" y="36" font-size="11" fill="#555">%s</text>`+"\n", padLeft, esc(fmt.Sprintf(
		"resync: %s → controller holds every local change made in the outage · keep-alive %s", from, FormatSeconds(r.Config.KeepAliveS))))

	// Fault mode bands.
	for i, c := range r.Cycles {
		if shade, ok := faultShade[c.Fault]; ok {
			p(`<rect x="%.1f" y="%d" width="%.1f" height="%.1f" fill="%s"/>`+"\n", padLeft+slot*float64(i), padTop, slot, plotH, shade)
		}
	}
	// Decades.
	for d := dLo; d <= dHi; d++ {
		v := math.Pow(10, d)
		yy := y(v)
		p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ccc"/>`+"\n", padLeft, svgW-padRight, yy, yy)
		p(`<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", padLeft-6, yy, esc(strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")+" s"))
	}
	p(`<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">resync time (log scale)</text>`+"\n", padTop+plotH/2)
	// Targets.
	if hasKill {
		for _, t := range []struct {
			v     float64
			label string
		}{{p50T.Seconds(), "kill target p50 ≤ " + trimSeconds(p50T)}, {tailT.Seconds(), "kill target " + tailName + " ≤ " + trimSeconds(tailT)}} {
			yy := y(t.v)
			p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#c0392b" stroke-dasharray="6 4"/>`+"\n", padLeft, svgW-padRight, yy, yy)
			p(`<text x="%d" y="%.1f" text-anchor="end" fill="#c0392b" font-size="11">%s</text>`+"\n", svgW-padRight-4, yy-4, esc(t.label))
		}
	}
	// Cycles.
	off := map[string]float64{ClientOurs: 0}
	if len(clients) == 2 {
		off[ClientOurs], off[ClientBaseline] = -slot/6, slot/6
	}
	box := math.Max(math.Min(slot/5, 10), 2)
	for i, c := range r.Cycles {
		for _, cl := range clients {
			sp, ok := spreadOf(c.Samples, cl)
			if !ok {
				continue
			}
			col, xx := clientColor[cl], x(i)+off[cl]
			p(`<g><title>%s</title>`, esc(fmt.Sprintf("cycle %d (%s), %s: min %s, p50 %s, p99 %s, max %s, %d devices, %d unrecovered",
				c.N, c.Fault, cl, FormatSeconds(Seconds(sp.min)), FormatSeconds(Seconds(sp.p50)), FormatSeconds(Seconds(sp.p99)), FormatSeconds(Seconds(sp.max)), sp.n, sp.unrecovered)))
			p(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s"/>`, xx, xx, y(sp.min), y(sp.max), col)
			p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.35" stroke="%s"/>`, xx-box/2, y(sp.p99), box, math.Max(y(sp.p50)-y(sp.p99), 1), col, col)
			p(`<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>`, xx, y(sp.p50), math.Max(box/3, 1.5), col)
			if sp.unrecovered > 0 {
				ty := y(sp.max) - 6
				p(`<path d="M%.1f %.1f l-5 8 h10 z" fill="%s"/>`, xx, ty-8, col)
			}
			p("</g>\n")
		}
	}
	// X axis: cycle numbers, at most about 25 labels.
	step := max(1, (n+24)/25)
	for i, c := range r.Cycles {
		if i%step == 0 || i == n-1 {
			p(`<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(i), svgH-padBott+16, c.N)
		}
	}
	p(`<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>`+"\n", padLeft, svgW-padRight, svgH-padBott, svgH-padBott)
	p(`<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>`+"\n", padLeft, padLeft, padTop, svgH-padBott)
	// "cycle" at the start of the cycle numbers' line, out of the way of
	// the fault modes' shades below.
	p(`<text x="%d" y="%d" text-anchor="end">cycle</text>`+"\n", padLeft-6, svgH-padBott+16)
	// Legend.
	lx := float64(padLeft)
	for _, cl := range clients {
		name := "ours (transport)"
		if cl == ClientBaseline {
			name = "baseline (" + r.Config.BaselineClient + ")"
		}
		p(`<circle cx="%.1f" cy="52" r="5" fill="%s"/><text x="%.1f" y="56">%s</text>`+"\n", lx+5, clientColor[cl], lx+14, esc(name))
		lx += 24 + 7*float64(len([]rune(name)))
	}
	legend := "dot p50 · box p50–p99 · line fastest–slowest device · ▲ some devices not recovered in the cycle"
	p(`<text x="%d" y="%d" font-size="11" fill="#555">%s</text>`+"\n", padLeft, svgH-10, esc(legend))
	// The fault modes' shades, right-aligned on a line of their own
	// above the legend (about 6 px a character at 11 px).
	var shaded []string
	width := 0
	for _, f := range r.Faults() {
		if _, ok := faultShade[f]; ok {
			shaded = append(shaded, f)
			width += 24 + 6*len([]rune(f))
		}
	}
	sx := svgW - padRight - width
	for _, f := range shaded {
		p(`<rect x="%d" y="%d" width="10" height="10" fill="%s" stroke="#999"/><text x="%d" y="%d" font-size="11">%s</text>`+"\n",
			sx, svgH-36, faultShade[f], sx+14, svgH-27, esc(f))
		sx += 24 + 6*len([]rune(f))
	}
	p("</svg>\n")
	return bw.Flush()
}

// trimSeconds renders a target: "0.5 s", "15 s".
func trimSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + " s"
}
