// The fleet page: one card per device, kept current by the live feed.
import { live, unitButton, prop, telemetry, action, fmtTemp, fmtNext, fmtOnline, ALERT_TEXT, el } from './common.js';

const list = document.getElementById('fleet');
const empty = document.getElementById('empty');
const devices = new Map(); // id -> device as the API returns it

function card(dev) {
  const t = telemetry(dev);
  const act = action(dev);
  const preset = prop(dev, 'preset');
  const alerts = dev.alerts || [];
  return el('li', {
    class: 'card' + (dev.online ? '' : ' offline') + (alerts.length ? ' alerting' : ''),
    id: 'dev-' + dev.id, dataset: { id: dev.id, online: String(dev.online) },
  },
    el('a', { href: '/devices/' + encodeURIComponent(dev.id), class: 'card-link' },
      el('div', { class: 'card-head' },
        el('h2', { class: 'name' }, dev.id),
        act && el('span', { class: 'action ' + act, dataset: { action: act } }, act)),
      el('div', { class: 'card-temps' },
        el('span', { class: 'temp', title: 'room temperature' }, fmtTemp(t.temp_c)),
        el('span', { class: 'setpoint', title: 'setpoint' }, '→ ', fmtTemp(prop(dev, 'setpoint_c')))),
      el('div', { class: 'card-facts' },
        el('span', { class: 'mode' }, prop(dev, 'mode') || '–'),
        preset && preset !== 'none' && el('span', { class: 'preset' }, preset),
        el('span', { class: 'online' }, fmtOnline(dev)),
        dev.pending && el('span', { class: 'pending', title: 'the controller has not yet handed the change to the broker' }, 'change waiting to be sent')),
      t.next && el('p', { class: 'next' }, fmtNext(t.next)),
      alerts.length > 0 && el('ul', { class: 'alerts' },
        ...alerts.map((a) => el('li', { class: 'alert', dataset: { code: a.code }, title: a.detail || '' },
          ALERT_TEXT[a.code] || a.code)))));
}

function put(dev) {
  const old = document.getElementById('dev-' + dev.id);
  const c = card(dev);
  if (old) { old.replaceWith(c); return; }
  // Keep the cards sorted by id.
  const after = [...list.children].find((x) => x.dataset.id > dev.id);
  list.insertBefore(c, after || null);
}

function render() {
  list.replaceChildren();
  for (const id of [...devices.keys()].sort()) put(devices.get(id));
  empty.hidden = devices.size > 0;
}

unitButton(render);
live({
  onSnapshot(all) {
    devices.clear();
    for (const d of all) devices.set(d.id, d);
    render();
  },
  onDevice(d) {
    devices.set(d.id, d);
    put(d);
    empty.hidden = true;
  },
  onRemoved(id) {
    devices.delete(id);
    document.getElementById('dev-' + id)?.remove();
    empty.hidden = devices.size > 0;
  },
});
// "offline since ... (5 min ago)" ages without a change to the device.
setInterval(render, 60000);
