// The history chart: room temperature (mean of each bucket), the setpoint,
// and the share of each bucket spent heating or cooling, from the
// controller's own history (GET /api/devices/{id}/history). Drawn with
// uPlot (vendored, loaded as the global uPlot).
import { api, unitLabel, toUnit } from './common.js';

// Each period and its bucket: about 300 buckets on every period.
const RANGES = {
  '24h': { ms: 24 * 3600e3, step: '5m' },
  '7d': { ms: 7 * 24 * 3600e3, step: '1h' },
  '30d': { ms: 30 * 24 * 3600e3, step: '6h' },
};

export class HistoryChart {
  constructor(box, buttons, msg, id) {
    Object.assign(this, { box, buttons, msg, id });
    this.range = '24h';
    this.hist = null;
    this.plot = null;
    buttons.addEventListener('click', (e) => {
      const b = e.target.closest('button[data-range]');
      if (!b) return;
      this.range = b.dataset.range;
      for (const x of buttons.querySelectorAll('button')) x.setAttribute('aria-pressed', String(x === b));
      this.load();
    });
    new ResizeObserver(() => this.plot && this.plot.setSize(this.size())).observe(box);
  }

  size() {
    const w = Math.max(240, this.box.clientWidth);
    return { width: w, height: Math.round(Math.min(320, Math.max(200, w * 0.45))) };
  }

  // fresh reloads the chart when the feed brought news and the last load
  // is over a minute old: the history grows with the telemetry, and this
  // follows it without a polling loop of its own.
  fresh() {
    if (this.loadedAt && Date.now() - this.loadedAt > 60e3) this.load();
  }

  async load() {
    clearTimeout(this.retry); // a load now makes a retry pending unneeded
    this.loadedAt = Date.now();
    const r = RANGES[this.range];
    const to = new Date();
    const from = new Date(to.getTime() - r.ms);
    const q = new URLSearchParams({ from: from.toISOString(), to: to.toISOString(), step: r.step });
    this.msg('loading…', 'busy');
    const res = await api('GET', `/api/devices/${encodeURIComponent(this.id)}/history?${q}`);
    if (!res.ok) {
      // 503: the history is being checked after a start; it comes back
      // by itself, so ask again rather than leave the error up.
      const busy = res.status === 503;
      this.msg((busy ? '' : 'No history: ') + res.error, busy ? 'busy' : 'error');
      this.hist = null;
      this.redraw();
      if (busy) this.retry = setTimeout(() => this.load(), 5000);
      return;
    }
    this.hist = res.data;
    this.from = from.getTime() / 1000;
    this.to = to.getTime() / 1000;
    const n = (this.hist.points || []).length;
    this.msg(n ? '' : 'No readings in this period yet.', '');
    this.redraw();
  }

  // data turns the points into uPlot's columns; a gap of more than a
  // bucket gets a null, so lines break where the device said nothing.
  data() {
    const pts = (this.hist && this.hist.points) || [];
    const step = (this.hist && this.hist.step_s) || 300;
    const cols = [[], [], [], [], []];
    let last = null;
    for (const p of pts) {
      const t = new Date(p.t).getTime() / 1000;
      if (last !== null && t - last > step * 1.5) {
        cols[0].push(last + step);
        for (let i = 1; i < cols.length; i++) cols[i].push(null);
      }
      const temp = p.temp_c ? toUnit(p.temp_c.mean) : null;
      const sp = typeof p.setpoint_c === 'number' ? toUnit(p.setpoint_c) : null;
      cols[0].push(t);
      cols[1].push(temp);
      cols[2].push(sp);
      cols[3].push((p.heating_s || 0) / step);
      cols[4].push((p.cooling_s || 0) / step);
      last = t;
    }
    return cols;
  }

  redraw() {
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    const data = this.data();
    this.box.dataset.points = String(data[0].length);
    if (!this.hist || typeof uPlot === 'undefined') return;
    const stepped = uPlot.paths.stepped({ align: 1 });
    const u = unitLabel();
    const opts = {
      ...this.size(),
      scales: {
        x: { time: true, range: () => [this.from, this.to] },
        // At least 2 degrees tall, so a steady room is a flat line in the
        // middle rather than noise blown up to the full height.
        y: { range: (_, lo, hi) => (lo == null ? [15, 25] : [Math.floor(Math.min(lo, (lo + hi) / 2 - 1)), Math.ceil(Math.max(hi, (lo + hi) / 2 + 1))]) },
        duty: { range: [0, 1] },
      },
      series: [
        {},
        { label: 'room', stroke: '#d35400', width: 2, value: (_, v) => (v == null ? '–' : v.toFixed(1) + ' ' + u) },
        { label: 'setpoint', stroke: '#2c3e50', width: 1.5, dash: [6, 4], paths: stepped, value: (_, v) => (v == null ? '–' : v.toFixed(1) + ' ' + u) },
        { label: 'heating', scale: 'duty', stroke: 'rgba(231,76,60,0.6)', fill: 'rgba(231,76,60,0.13)', width: 0, paths: stepped, value: (_, v) => (v == null ? '–' : Math.round(v * 100) + ' %') },
        { label: 'cooling', scale: 'duty', stroke: 'rgba(41,128,185,0.6)', fill: 'rgba(41,128,185,0.13)', width: 0, paths: stepped, value: (_, v) => (v == null ? '–' : Math.round(v * 100) + ' %') },
      ],
      axes: [
        {},
        { label: u },
        { scale: 'duty', show: false },
      ],
      legend: { live: true },
    };
    this.plot = new uPlot(opts, data, this.box);
  }
}
