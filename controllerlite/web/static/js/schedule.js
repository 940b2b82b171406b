// The week program editor: a row per day, each entry a time and either a
// temperature or a preset; entries are added, deleted, moved (a new time,
// or another day) and days copied to others. The page checks what the
// protocol checks (at most 8 entries a day, times HH:MM ascending and
// unique, temperatures 5 to 35 °C) before sending; what the controller
// still refuses is shown with its reason.
import { unit, unitLabel, toUnit, fromUnit, el, RULES } from './common.js';

const WEEK = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const DAY_NAME = { mon: 'Mon', tue: 'Tue', wed: 'Wed', thu: 'Thu', fri: 'Fri', sat: 'Sat', sun: 'Sun' };
const MAX_ENTRIES = RULES.max_entries;
const MIN_C = RULES.min_c, MAX_C = RULES.max_c;
const COPY_TARGETS = {
  weekdays: ['mon', 'tue', 'wed', 'thu', 'fri'],
  weekend: ['sat', 'sun'],
  all: WEEK,
};

const clone = (x) => JSON.parse(JSON.stringify(x));

// normal returns a schedule in the shape the editor keeps: every day
// present, entries sorted.
function normal(s) {
  s = s ? clone(s) : { enabled: false, week: {} };
  s.week = s.week || {};
  for (const d of WEEK) s.week[d] = (s.week[d] || []).slice().sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
  return s;
}

// wire returns the schedule to send: empty days and an empty zone left out.
function wire(s) {
  const out = { enabled: !!s.enabled, week: {} };
  if (s.tz && s.tz.trim()) out.tz = s.tz.trim();
  for (const d of WEEK) {
    if (s.week[d].length) {
      out.week[d] = s.week[d].map((e) => (e.preset !== undefined ? { at: e.at, preset: e.preset } : { at: e.at, setpoint_c: e.setpoint_c }));
    }
  }
  return out;
}

const same = (a, b) => JSON.stringify(wire(normal(a))) === JSON.stringify(wire(normal(b)));

export class ScheduleEditor {
  constructor(o) {
    Object.assign(this, o);
    this.base = null;   // the device's schedule the draft started from
    this.draft = normal(null);
    this.presets = {};
    this.setpoint = 20;
    this.isDirty = false;
    this.enabled.addEventListener('change', () => { this.draft.enabled = this.enabled.checked; this.touch(); });
    this.tz.addEventListener('input', () => { this.draft.tz = this.tz.value; this.touch(false); });
    this.save.addEventListener('click', () => this.submit());
    this.revert.addEventListener('click', () => { this.load(this.base); this.msg('', ''); });
  }

  // update takes the device's current schedule; it replaces the draft
  // unless a person is editing it.
  update(schedule, presets, setpoint) {
    this.presets = presets;
    if (typeof setpoint === 'number') this.setpoint = setpoint;
    const changed = !this.base || !same(this.base, schedule);
    this.base = normal(schedule);
    if (!this.isDirty) {
      this.load(schedule);
    } else if (changed) {
      this.msg('The week program was changed elsewhere meanwhile: Revert shows it (your edits are lost).', 'warn');
    }
  }

  load(s) {
    this.draft = normal(s);
    this.isDirty = false;
    this.redraw();
  }

  touch(redraw = true) {
    this.isDirty = true;
    if (redraw) this.redraw(); else this.check();
  }

  // problems returns, per day, what the protocol would refuse.
  problems() {
    const out = {};
    for (const d of WEEK) {
      const list = this.draft.week[d];
      const p = [];
      if (list.length > MAX_ENTRIES) p.push(`at most ${MAX_ENTRIES} entries a day (${list.length})`);
      const seen = new Set();
      for (const e of list) {
        if (!/^([01]\d|2[0-3]):[0-5]\d$/.test(e.at || '')) p.push(`"${e.at || ''}" is not a time HH:MM`);
        else if (seen.has(e.at)) p.push(`two entries at ${e.at}`);
        seen.add(e.at);
        if (e.preset === undefined && !(e.setpoint_c >= MIN_C && e.setpoint_c <= MAX_C)) {
          p.push(`${e.at}: a temperature from ${fmt(MIN_C)} to ${fmt(MAX_C)}`);
        }
        if (e.preset !== undefined && !(e.preset in this.presets)) p.push(`${e.at}: no preset "${e.preset}"`);
      }
      if (p.length) out[d] = p;
    }
    return out;
  }

  check() {
    const probs = this.problems();
    for (const d of WEEK) {
      const slot = this.root.querySelector(`[data-day="${d}"] .day-errors`);
      if (slot) slot.textContent = (probs[d] || []).join('; ');
    }
    const bad = Object.keys(probs).length > 0;
    this.save.disabled = bad || !this.isDirty;
    this.revert.disabled = !this.isDirty;
    this.dirty.hidden = !this.isDirty;
    return !bad;
  }

  async submit() {
    if (!this.check()) {
      this.msg('Fix the days marked in red first.', 'error');
      return;
    }
    const ok = await this.send(wire(this.draft));
    if (ok) {
      this.isDirty = false;
      this.check();
    }
  }

  sortDay(d) {
    this.draft.week[d].sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
  }

  add(d) {
    const list = this.draft.week[d];
    // An hour after the last entry, or 07:00 on an empty day.
    let at = '07:00';
    if (list.length) {
      const [h, m] = list[list.length - 1].at.split(':').map(Number);
      at = String(Math.min(h + 1, 23)).padStart(2, '0') + ':' + String(m || 0).padStart(2, '0');
    }
    list.push({ at, setpoint_c: this.setpoint });
    this.sortDay(d);
    this.touch();
  }

  copy(from, targets) {
    for (const d of targets) if (d !== from) this.draft.week[d] = clone(this.draft.week[from]);
    this.touch();
  }

  redraw() {
    this.enabled.checked = !!this.draft.enabled;
    if (document.activeElement !== this.tz) this.tz.value = this.draft.tz || '';
    this.root.replaceChildren(...WEEK.map((d) => this.dayRow(d)));
    this.check();
  }

  dayRow(d) {
    const entries = this.draft.week[d].map((e, i) => this.entryRow(d, e, i));
    const copy = el('select', { class: 'copy', 'aria-label': `Copy ${DAY_NAME[d]} to`,
      onchange: (ev) => {
        const v = ev.target.value;
        if (v) this.copy(d, COPY_TARGETS[v] || [v]);
      } },
    el('option', { value: '' }, 'copy to…'),
    el('option', { value: 'weekdays' }, 'Mon–Fri'),
    el('option', { value: 'weekend' }, 'Sat–Sun'),
    el('option', { value: 'all' }, 'every day'),
    ...WEEK.filter((x) => x !== d).map((x) => el('option', { value: x }, DAY_NAME[x])));
    return el('div', { class: 'day', dataset: { day: d } },
      el('div', { class: 'day-head' },
        el('h3', {}, DAY_NAME[d]),
        el('button', { type: 'button', class: 'add', onclick: () => this.add(d), 'aria-label': `Add an entry on ${DAY_NAME[d]}` }, '+ entry'),
        copy),
      el('ol', { class: 'entries' }, ...entries),
      el('p', { class: 'day-errors error', role: 'alert' }));
  }

  entryRow(d, e, i) {
    const isPreset = e.preset !== undefined;
    const kind = el('select', { class: 'kind', 'aria-label': 'Temperature or preset',
      onchange: (ev) => {
        const v = ev.target.value;
        if (v === '') { delete e.preset; e.setpoint_c = this.setpoint; } else { delete e.setpoint_c; e.preset = v; }
        this.touch();
      } },
    el('option', { value: '' }, 'temperature'),
    ...Object.keys(this.presets).sort().map((p) => el('option', { value: p }, p)),
    isPreset && !(e.preset in this.presets) && el('option', { value: e.preset }, e.preset));
    kind.value = isPreset ? e.preset : '';
    const temp = el('input', { type: 'number', class: 'temp-in', step: unit() === 'F' ? '1' : '0.5', inputmode: 'decimal',
      'aria-label': 'Temperature in ' + unitLabel(), hidden: isPreset,
      value: isPreset ? '' : String(Math.round(toUnit(e.setpoint_c) * 10) / 10),
      oninput: (ev) => { e.setpoint_c = fromUnit(parseFloat(ev.target.value)); this.touch(false); } });
    const move = el('select', { class: 'move', 'aria-label': 'Move to another day',
      onchange: (ev) => {
        const to = ev.target.value;
        if (!to) return;
        this.draft.week[d].splice(i, 1);
        this.draft.week[to].push(e);
        this.sortDay(to);
        this.touch();
      } },
    el('option', { value: '' }, 'move to…'),
    ...WEEK.filter((x) => x !== d).map((x) => el('option', { value: x }, DAY_NAME[x])));
    return el('li', { class: 'entry' },
      el('input', { type: 'time', class: 'at', value: e.at, required: true, 'aria-label': 'Time',
        onchange: (ev) => { e.at = ev.target.value; this.sortDay(d); this.touch(); } }),
      kind,
      temp,
      isPreset && el('span', { class: 'preset-temp' }, fmt(this.presets[e.preset])),
      move,
      el('button', { type: 'button', class: 'del', 'aria-label': `Delete the entry at ${e.at}`,
        onclick: () => { this.draft.week[d].splice(i, 1); this.touch(); } }, '✕'));
  }
}

function fmt(c) {
  return typeof c === 'number' ? (Math.round(toUnit(c) * 10) / 10) + ' ' + unitLabel() : '';
}
