// The device page: what the device is doing, its controls, its history
// and its week program. Every change is a PUT /api/devices/{id}, the same
// write as the CLI's; the API's refusal is shown next to the control.
import {
  api, live, unitButton, unit, unitLabel, toUnit, fromUnit, prop, telemetry, action,
  fmtTemp, fmtNext, fmtOnline, ALERT_TEXT, el, presetsOf,
} from './common.js';
import { ScheduleEditor } from './schedule.js';
import { HistoryChart } from './chart.js';

const id = decodeURIComponent(location.pathname.split('/').pop());
const $ = (x) => document.getElementById(x);
let dev = null;

document.title = id + ' · controllerlite';
$('name').textContent = id;

// msg shows the outcome of a change next to its control; "saved" fades
// after a while, a refusal stays until the next try.
const fades = {};
function msg(target, text, kind) {
  const m = $(target);
  m.textContent = text;
  m.className = 'msg' + (kind ? ' ' + kind : '');
  clearTimeout(fades[target]);
  if (kind === 'ok') fades[target] = setTimeout(() => { if (m.textContent === text) m.textContent = ''; }, 8000);
}

// send writes changes and shows the outcome in target.
async function send(changes, target) {
  msg(target, 'saving…', 'busy');
  const r = await api('PUT', '/api/devices/' + encodeURIComponent(id), changes);
  if (!r.ok) {
    msg(target, r.error, 'error');
    return false;
  }
  msg(target, 'saved' + (r.data.online ? '' : ': delivered when the device is back online'), 'ok');
  show(r.data);
  return true;
}

// --- What the device is doing ---

function renderNow() {
  if (!dev) return;
  const t = telemetry(dev);
  const act = action(dev);
  const main = $('device');
  main.classList.toggle('offline', !dev.online);
  main.dataset.online = String(dev.online);
  $('temp').textContent = fmtTemp(t.temp_c);
  const a = $('action');
  a.textContent = act;
  a.className = 'action ' + act;
  a.dataset.action = act;
  $('online').textContent = fmtOnline(dev);
  $('pending').hidden = !dev.pending;
  $('next').textContent = fmtNext(t.next);
  const fw = $('firmware');
  fw.hidden = !dev.firmware;
  fw.textContent = dev.firmware ? 'firmware ' + dev.firmware : '';
  $('alerts').replaceChildren(...(dev.alerts || []).map((x) =>
    el('li', { class: 'alert', dataset: { code: x.code } },
      ALERT_TEXT[x.code] || x.code, x.detail && el('small', {}, ' ' + x.detail))));
}

// --- Setpoint ---

const sp = $('sp');
let spTimer = null;
let shownSp; // the setpoint the field last showed

function renderSetpoint() {
  $('sp-unit').textContent = unitLabel();
  sp.step = unit() === 'F' ? '1' : '0.5';
  // Never overwrite what a person is typing or about to send.
  if (document.activeElement === sp || spTimer || !dev) return;
  const c = prop(dev, 'setpoint_c');
  // A refusal next to the field is stale once the setpoint changed.
  if (c !== shownSp && $('sp-msg').classList.contains('error')) msg('sp-msg', '', '');
  shownSp = c;
  sp.value = typeof c === 'number' ? String(Math.round(toUnit(c) * 10) / 10) : '';
}

function sendSetpoint() {
  clearTimeout(spTimer);
  spTimer = null;
  const v = parseFloat(sp.value);
  if (!isFinite(v)) {
    msg('sp-msg', 'enter a temperature in ' + unitLabel(), 'error');
    return;
  }
  send({ setpoint_c: fromUnit(v) }, 'sp-msg');
}

function nudge(dir) {
  const step = parseFloat(sp.step);
  let v = parseFloat(sp.value);
  if (!isFinite(v)) v = toUnit(prop(dev, 'setpoint_c') ?? 20);
  v = Math.round((v + dir * step) / step) * step;
  sp.value = String(Math.round(v * 10) / 10);
  // Several presses in a row make one write.
  clearTimeout(spTimer);
  spTimer = setTimeout(sendSetpoint, 600);
  msg('sp-msg', '', '');
}

$('sp-down').addEventListener('click', () => nudge(-1));
$('sp-up').addEventListener('click', () => nudge(1));
sp.addEventListener('change', sendSetpoint);
sp.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); sp.blur(); } });

// --- Mode and preset ---

function renderMode() {
  const mode = dev && prop(dev, 'mode');
  for (const b of $('mode').querySelectorAll('button')) b.setAttribute('aria-pressed', String(b.dataset.mode === mode));
}

$('mode').addEventListener('click', (e) => {
  const b = e.target.closest('button[data-mode]');
  if (b) send({ mode: b.dataset.mode }, 'mode-msg');
});

function renderPreset() {
  if (!dev) return;
  const sel = $('preset');
  if (document.activeElement === sel) return;
  const presets = presetsOf(dev);
  const cur = prop(dev, 'preset') || 'none';
  const opts = [el('option', { value: 'none' }, 'none (a temperature of its own)')];
  for (const name of Object.keys(presets).sort()) {
    opts.push(el('option', { value: name }, name + ' · ' + fmtTemp(presets[name])));
  }
  if (cur !== 'none' && !(cur in presets)) opts.push(el('option', { value: cur }, cur));
  sel.replaceChildren(...opts);
  sel.value = cur;
}

$('preset').addEventListener('change', (e) => {
  send({ preset: e.target.value }, 'preset-msg');
  e.target.blur();
});

// --- Week program and history ---

const schedule = new ScheduleEditor({
  root: $('week'), enabled: $('sched-enabled'), tz: $('sched-tz'),
  save: $('sched-save'), revert: $('sched-revert'), dirty: $('sched-dirty'),
  msg: (text, kind) => msg('sched-msg', text, kind),
  send: (s) => send({ schedule: s }, 'sched-msg'),
});
const chart = new HistoryChart($('chart'), $('range'), (text, kind) => msg('chart-msg', text, kind), id);

function show(d) {
  dev = d;
  renderNow();
  renderSetpoint();
  renderMode();
  renderPreset();
  schedule.update(prop(d, 'schedule'), presetsOf(d), prop(d, 'setpoint_c'));
}

function renderAll() {
  renderNow();
  renderSetpoint();
  renderPreset();
  schedule.redraw();
  chart.redraw();
}

unitButton(renderAll);
chart.load();
live({
  onSnapshot(all) {
    const d = all.find((x) => x.id === id);
    $('unknown').hidden = !!d;
    if (!d) {
      $('unknown').textContent = 'The controller knows no device "' + id + '".';
      return;
    }
    show(d);
  },
  onDevice(d) {
    if (d.id !== id) return;
    show(d);
    chart.fresh();
  },
  onRemoved(x) {
    if (x !== id) return;
    $('unknown').hidden = false;
    $('unknown').textContent = 'The device "' + id + '" is gone from the controller.';
  },
});
setInterval(renderNow, 60000); // "offline since ... ago" ages
