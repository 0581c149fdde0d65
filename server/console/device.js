// A device: what it is and whose, whether it is online, battery, firmware, last seen and the
// last sequence number stored (and so acknowledged back to it).
import { h, replace } from './dom.js';
import { t, fmtTime, fmtAgo } from './i18n.js';
import { get, query } from './api.js';
import { errorBlock } from './ui.js';

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
      );
    })
    .catch((e) => live && replace(root, errorBlock(e)));
  return () => {
    live = false;
  };
}
