// The patients the signed-in user may see (their COTs' patients).
import { h, replace } from './dom.js';
import { t } from './i18n.js';
import { get } from './api.js';
import { errorBlock } from './ui.js';

export function patientsPage(root) {
  replace(root, h('h1', { text: t('patients_title') }), h('p', { text: t('loading') }));
  let live = true;
  get('/patients')
    .then(({ patients }) => {
      if (!live) return;
      const rows = patients.map((p) =>
        h(
          'tr',
          { dataset: { patientId: String(p.id) } },
          h('th', { scope: 'row' }, h('a', { href: `#/patients/${p.id}`, text: p.display_name })),
          h('td', { text: p.code }),
          h('td', { text: p.birth_year ? String(p.birth_year) : '—' }),
          h('td', { text: p.conditions.map((c) => (t(`condition_name_${c}`) === `condition_name_${c}` ? c : t(`condition_name_${c}`))).join(', ') || '—' }),
        ),
      );
      replace(
        root,
        h('h1', { text: t('patients_title') }),
        patients.length
          ? h(
              'table',
              { class: 'data', id: 'patient-table' },
              h('caption', { class: 'visually-hidden', text: t('patients_title') }),
              h('thead', {}, h('tr', {}, [t('patient'), t('code'), t('birth_year'), t('conditions')].map((c) => h('th', { scope: 'col', text: c })))),
              h('tbody', {}, rows),
            )
          : h('p', { class: 'empty', id: 'patients-empty', text: t('patients_empty') }),
      );
    })
    .catch((e) => live && replace(root, errorBlock(e)));
  return () => {
    live = false;
  };
}
