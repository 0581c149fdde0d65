// A device: what it is and whose, whether it is online, battery, firmware, last seen and the
// last sequence number stored (and so acknowledged back to it).
import { h, replace } from './dom.js';
import { t, fmtTime, fmtAgo } from './i18n.js';
import { get, post, query } from './api.js';
import { currentUser, errorBlock, errorMessage, announce } from './ui.js';

/** Device managers revoke a device here: a first button asks, a second one confirms. */
function revokeControls(root, d) {
  if (currentUser()?.role !== 'device_manager' || d.revoked_at) return null;
  const status = h('p', { id: 'device-revoke-status', role: 'status' });
  const confirm = h('button', { type: 'button', class: 'danger', id: 'device-revoke-confirm', hidden: true, text: t('revoke_confirm') });
  const ask = h('button', { type: 'button', class: 'secondary', id: 'device-revoke', text: t('revoke') });
  ask.addEventListener('click', () => {
    confirm.hidden = false;
    status.textContent = t('revoke_explain');
    confirm.focus();
  });
  confirm.addEventListener('click', async () => {
    confirm.disabled = true;
    try {
      await post(`/devices/${encodeURIComponent(d.id)}/revoke`);
      announce(t('revoked_done', { id: d.id }));
      devicePage(root, d.id);
    } catch (e) {
      status.textContent = errorMessage(e);
      confirm.disabled = false;
    }
  });
  return h('section', { class: 'revoke', 'aria-labelledby': 'revoke-title' }, h('h2', { id: 'revoke-title', text: t('revoke_title') }), status, h('div', { class: 'actions' }, ask, confirm));
}

export function devicePage(root, deviceId) {
  let live = true;
  replace(root, h('p', { text: t('loading') }));
  get(`/devices/${encodeURIComponent(deviceId || '')}`)
    .then(async (d) => {
      const since = new Date(Date.now() - 7 * 24 * 3600e3).toISOString();
      const [patient, recent] = await Promise.all([
        get(`/patients/${d.patient_id}`).catch(() => null),
        get(`/patients/${d.patient_id}/readings${query({ from: since, limit: 10000 })}`).catch(() => null),
      ]);
      const mine = (recent?.readings || []).filter((r) => r.device_id === d.id);
      const late = mine.filter((r) => r.clock === 'late').length;
      if (!live) return;
      const battery = d.battery_pct === null ? '—' : `${d.battery_pct}%${d.battery_pct < 20 ? ` (${t('battery_low')})` : ''}`;
      const rows = [
        [t('kind'), `${t(`kind_${d.kind}`)}${d.model ? ` · ${d.model}` : ''}`],
        [t('patient'), patient ? h('a', { href: `#/patients/${d.patient_id}`, text: `${patient.display_name} (${patient.code})` }) : `#${d.patient_id}`],
        [t('state'), d.revoked_at ? t('revoked_at', { at: fmtTime(d.revoked_at) }) : d.online ? t('online') : t('offline')],
        [t('last_seen_title'), d.last_seen_at ? `${fmtTime(d.last_seen_at)} (${fmtAgo(d.last_seen_at)})` : t('never')],
        [t('battery'), battery],
        [t('firmware'), d.firmware || '—'],
        [t('signal'), d.rssi === null ? '—' : `${d.rssi} dBm`],
        [t('status_at'), d.status_at ? fmtTime(d.status_at) : '—'],
        [t('last_seq'), d.last_seq === null ? t('none_stored') : String(d.last_seq)],
        [t('backlog_7d'), recent ? t('backlog_text', { n: mine.length, late }) : '—'],
        [t('created_at'), fmtTime(d.created_at)],
      ];
      replace(
        root,
        h('div', { class: 'page-head' }, h('h1', { id: 'device-title', text: `${t(`kind_${d.kind}`)} ${d.id}` })),
        h('dl', { class: 'facts facts-wide', id: 'device-facts' }, rows.map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)])),
        h('p', { class: 'muted', text: t('last_seq_help') }),
        revokeControls(root, d),
      );
    })
    .catch((e) => live && replace(root, errorBlock(e)));
  return () => {
    live = false;
  };
}
