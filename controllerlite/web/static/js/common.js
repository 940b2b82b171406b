// What both pages share: units, the API, the live feed, formatting.
// The wire is always Celsius; the unit a person chose (kept in this
// browser) is applied only when showing and reading numbers.

const UNIT_KEY = 'thermo.unit';

// RULES are the protocol's limits and default presets, as the server put
// them in the page (package protocol is the one place they are defined).
export const RULES = JSON.parse(document.body.dataset.protocol || '{}');

// presetsOf returns a device's presets: its own, or the protocol's default
// for a device that never received a presets write.
export function presetsOf(dev) {
  return prop(dev, 'presets') || RULES.default_presets || {};
}

export function unit() {
  return localStorage.getItem(UNIT_KEY) === 'F' ? 'F' : 'C';
}

export function setUnit(u) {
  localStorage.setItem(UNIT_KEY, u === 'F' ? 'F' : 'C');
}

// toUnit converts Celsius to the chosen unit.
export function toUnit(c) {
  return unit() === 'F' ? c * 9 / 5 + 32 : c;
}

// fromUnit converts a number in the chosen unit to Celsius, rounded to
// 0.1 °C as the protocol wants.
export function fromUnit(v) {
  const c = unit() === 'F' ? (v - 32) * 5 / 9 : v;
  return Math.round(c * 10) / 10;
}

export function unitLabel() {
  return unit() === 'F' ? '°F' : '°C';
}

// fmtTemp shows a Celsius value in the chosen unit, "–" when absent.
export function fmtTemp(c, digits = 1) {
  if (typeof c !== 'number' || !isFinite(c)) return '–';
  return toUnit(c).toFixed(digits) + ' ' + unitLabel();
}

// The unit button in the header: flips the unit and calls redraw.
export function unitButton(redraw) {
  const b = document.getElementById('unit');
  const show = () => { b.textContent = unitLabel(); b.setAttribute('aria-label', 'Temperatures in ' + unitLabel() + '; switch'); };
  show();
  b.addEventListener('click', () => { setUnit(unit() === 'F' ? 'C' : 'F'); show(); redraw(); });
  if (document.body.dataset.login) {
    for (const f of document.querySelectorAll('form.logout')) f.hidden = false;
  }
}

// api makes one request to the controller's API and returns
// {ok, status, data, error}; error is the API's reason when it refused.
// A 401 (the session expired, or the controller restarted) goes to the
// login page and back.
export async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    return { ok: false, status: 0, error: 'the controller cannot be reached (' + e.message + ')' };
  }
  if (res.status === 401) {
    toLogin();
    return { ok: false, status: 401, error: 'logged out' };
  }
  let data = null;
  try { data = await res.json(); } catch { /* not JSON */ }
  if (!res.ok) {
    return { ok: false, status: res.status, data, error: (data && data.error) || res.status + ' ' + res.statusText };
  }
  return { ok: true, status: res.status, data };
}

export function toLogin() {
  location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));
}

// live follows GET /api/events: onSnapshot(devices) on every (re)connect,
// onDevice(device) for each change, onRemoved(id). The header's feed
// marker says whether the page is live.
export function live({ onSnapshot, onDevice, onRemoved }) {
  const marker = document.getElementById('feed');
  const state = (s, text) => { marker.dataset.state = s; marker.textContent = text; };
  let es;
  const open = () => {
    es = new EventSource('/api/events');
    es.addEventListener('snapshot', (e) => { state('live', 'live'); onSnapshot(JSON.parse(e.data)); });
    es.addEventListener('device', (e) => onDevice(JSON.parse(e.data)));
    es.addEventListener('removed', (e) => onRemoved && onRemoved(JSON.parse(e.data).id));
    es.addEventListener('error', async () => {
      state('down', 'reconnecting…');
      if (es.readyState !== EventSource.CLOSED) return; // the browser retries by itself
      // A refused stream (401, 503) is not retried by the browser: find
      // out why and retry ourselves.
      const r = await api('GET', '/api/devices');
      if (r.status !== 401) setTimeout(open, 2000);
    });
  };
  open();
}

// Reading a device as the API returns it.
export function prop(dev, name) {
  const p = dev.props && dev.props[name];
  return p ? p.val : undefined;
}

export function telemetry(dev) {
  return dev.telemetry || {};
}

// what the outputs are doing: telemetry's action, or derived from the
// relays for a board that does not send it yet.
export function action(dev) {
  const t = telemetry(dev);
  if (t.action) return t.action;
  if (prop(dev, 'mode') === 'off') return 'off';
  if (t.heat) return 'heating';
  if (t.cool) return 'cooling';
  return dev.telemetry ? 'idle' : '';
}

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

export function fmtWhen(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return '';
  const now = new Date();
  const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (d.toDateString() === now.toDateString()) return 'today ' + hm;
  const tomorrow = new Date(now); tomorrow.setDate(now.getDate() + 1);
  if (d.toDateString() === tomorrow.toDateString()) return 'tomorrow ' + hm;
  return d.toLocaleDateString([], { weekday: 'short', day: 'numeric', month: 'short' }) + ' ' + hm;
}

export function fmtAgo(iso) {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return 'just now';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' days ago';
}

// fmtNext shows the schedule's next entry ("next: tomorrow 06:30 → home 21.0 °C").
export function fmtNext(next) {
  if (!next) return '';
  let what = fmtTemp(next.setpoint_c);
  if (next.preset) what = next.preset + ' ' + what;
  return 'next: ' + fmtWhen(next.at) + ' → ' + what;
}

// fmtOnline: "online", or "offline since ..." from last_seen.
export function fmtOnline(dev) {
  if (dev.online) return 'online';
  if (!dev.last_seen) return 'offline, never seen';
  return 'offline since ' + fmtWhen(dev.last_seen) + ' (' + fmtAgo(dev.last_seen) + ')';
}

export const ALERT_TEXT = {
  sensor_fault: 'sensor fault: no valid reading, outputs off',
  storage_error: 'storage error: the board cannot save its state',
  duplicate_identity: 'two boards use one certificate',
  tls_refused: 'certificate refused',
};

// el builds an element: el('span', {class: 'x'}, 'text', child...).
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export { DAYS };
