//! The report as a PDF, in Italian or English: A4 pages, the PDF standard fonts (Helvetica,
//! WinAnsi encoding: every Italian letter, nothing to embed), vector charts.
//!
//! Written with `pdf-writer` (the typst project's PDF writer: maintained, four small
//! dependencies, no font or image machinery we do not need). Text that WinAnsi cannot encode
//! becomes `?`; widths are estimated from Helvetica's average advance, so long text is
//! wrapped or cut with a margin to spare.

use alerting::plan::Metric;
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use store::{CallResult, InterventionKind, ReadingKind, Severity, Workflow};
use time::OffsetDateTime;

use super::{Lang, Report, Trend};

const W: f32 = 595.0;
const H: f32 = 842.0;
const MARGIN: f32 = 42.0;
const BODY: f32 = W - 2.0 * MARGIN;
const REGULAR: Name<'static> = Name(b"F1");
const BOLD: Name<'static> = Name(b"F2");
/// Helvetica's advance is about half the font size on average (wider for capitals).
const AVG_ADVANCE: f32 = 0.53;

/// The PDF of `report` in `lang`.
pub fn render(report: &Report, lang: Lang) -> Vec<u8> {
    let mut doc = Doc::new(lang);
    header(&mut doc, report);
    summary(&mut doc, report);
    doc.heading(tr(lang, "trends"));
    if report.trends.is_empty() {
        doc.para(tr(lang, "no_trends"), 10.0);
    }
    for trend in &report.trends {
        chart(&mut doc, report, trend);
    }
    adherence(&mut doc, report);
    alerts(&mut doc, report);
    plans(&mut doc, report);
    doc.finish(report)
}

// ----- words -------------------------------------------------------------------------------

fn tr(lang: Lang, key: &str) -> &'static str {
    let (it, en) = match key {
        "title" => ("Relazione di telemonitoraggio", "Telemonitoring report"),
        "patient" => ("Paziente", "Patient"),
        "code" => ("Codice", "Code"),
        "born" => ("Anno di nascita", "Born"),
        "conditions" => ("Patologie", "Conditions"),
        "cot" => ("COT", "COT"),
        "period" => ("Periodo", "Period"),
        "generated" => ("Generata il", "Generated"),
        "plan" => ("Piano di cura", "Care plan"),
        "plan_version" => ("versione", "version"),
        "plan_template" => ("modello per le patologie", "template for the conditions"),
        "summary" => ("Sintesi", "Summary"),
        "readings" => ("Misure ricevute", "Readings received"),
        "alerts_n" => ("Allarmi nel periodo", "Alerts in the period"),
        "interventions_n" => ("Interventi registrati", "Interventions recorded"),
        "trends" => ("Andamento dei parametri", "Vital-sign trends"),
        "no_trends" => (
            "Nessuna misura prevista o ricevuta.",
            "No measurement expected or received.",
        ),
        "no_points" => ("Nessuna misura nel periodo.", "No reading in the period."),
        "n" => ("misure", "readings"),
        "min" => ("min", "min"),
        "mean" => ("media", "mean"),
        "max" => ("max", "max"),
        "threshold" => ("soglia", "threshold"),
        "adherence" => (
            "Aderenza al piano di misure",
            "Adherence to the measurement schedule",
        ),
        "kind" => ("Misura", "Measurement"),
        "every" => ("Frequenza", "Every"),
        "expected" => ("Attese", "Expected"),
        "taken" => ("Eseguite", "Taken"),
        "no_schedule" => (
            "Il piano non prevede misure programmate.",
            "The plan schedules no measurement.",
        ),
        "alerts" => (
            "Allarmi, esiti e interventi",
            "Alerts, outcomes and interventions",
        ),
        "no_alerts" => ("Nessun allarme nel periodo.", "No alert in the period."),
        "open" => ("aperto", "open"),
        "plans" => (
            "Versioni del piano di cura in vigore",
            "Care-plan versions in force",
        ),
        "no_plans" => (
            "Nessuna versione registrata: soglie del modello per le patologie del paziente.",
            "No stored version: the thresholds of the template for the patient's conditions.",
        ),
        "page" => ("pagina", "page"),
        "truncated" => (
            "Solo le prime 10.000 misure del periodo.",
            "Only the first 10,000 readings of the period.",
        ),
        "hours" => ("ore", "hours"),
        "kind_bp" => ("Pressione arteriosa", "Blood pressure"),
        "kind_spo2" => ("Saturazione (SpO2)", "Oxygen saturation (SpO2)"),
        "kind_glucose" => ("Glicemia", "Blood glucose"),
        "systolic" => ("sistolica", "systolic"),
        "diastolic" => ("diastolica", "diastolic"),
        "spo2" => ("SpO2", "SpO2"),
        "glucose" => ("glicemia", "glucose"),
        "critical" => ("CRITICO", "CRITICAL"),
        "high" => ("ALTO", "HIGH"),
        "medium" => ("MEDIO", "MEDIUM"),
        "low" => ("BASSO", "LOW"),
        "info" => ("INFO", "INFO"),
        "new" => ("nuovo", "new"),
        "acknowledged" => ("preso in carico", "acknowledged"),
        "resolved" => ("risolto", "resolved"),
        "phone_call" => ("Telefonata", "Phone call"),
        "advice_given" => ("Consiglio dato", "Advice given"),
        "gp_informed" => ("MMG informato", "GP informed"),
        "home_visit_requested" => ("Visita domiciliare richiesta", "Home visit requested"),
        "emergency_services" => ("Attivato il 112/118", "Emergency services activated"),
        "reached" => ("raggiunto", "reached"),
        "not_reached" => ("non raggiunto", "not reached"),
        "wrong_number" => ("numero errato", "wrong number"),
        "called_patient" => ("paziente chiamato", "patient called"),
        "reading_error" => ("errore di misura", "reading error"),
        "referred_to_gp" => ("inviato al MMG", "referred to the GP"),
        "sent_to_emergency" => ("inviato in emergenza", "sent to emergency"),
        "medication_adjusted" => ("terapia modificata", "medication adjusted"),
        "no_action_needed" => ("nessuna azione necessaria", "no action needed"),
        "patient_hospitalised" => ("paziente ricoverato", "patient hospitalised"),
        _ => ("?", "?"),
    };
    match lang {
        Lang::It => it,
        Lang::En => en,
    }
}

fn kind_name(lang: Lang, k: ReadingKind) -> &'static str {
    match k {
        ReadingKind::BloodPressure => tr(lang, "kind_bp"),
        ReadingKind::Spo2 => tr(lang, "kind_spo2"),
        ReadingKind::Glucose => tr(lang, "kind_glucose"),
    }
}

fn severity_name(lang: Lang, s: Severity) -> &'static str {
    tr(lang, s.as_str())
}

/// A date as the reader expects it: 01/11/2026 in Italian, 2026-11-01 in English.
pub fn date(lang: Lang, d: time::Date) -> String {
    match lang {
        Lang::It => format!("{:02}/{:02}/{:04}", d.day(), u8::from(d.month()), d.year()),
        Lang::En => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
    }
}

fn datetime(lang: Lang, t: OffsetDateTime) -> String {
    format!("{} {:02}:{:02}", date(lang, t.date()), t.hour(), t.minute())
}

fn number(lang: Lang, v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    match lang {
        Lang::It => s.replace('.', ","),
        Lang::En => s,
    }
}

/// WinAnsi bytes of `s`; what it cannot encode becomes `?`.
fn win_ansi(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            '\u{a0}'..='\u{ff}' => u8::try_from(u32::from(c)).unwrap_or(b'?'),
            '€' => 0x80,
            '…' => 0x85,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            '\n' | '\t' | '\r' => b' ',
            _ => b'?',
        })
        .collect()
}

fn width(text: &str, size: f32) -> f32 {
    text.chars().count() as f32 * size * AVG_ADVANCE
}

/// `text` cut to fit `max` points, with an ellipsis.
fn fit(text: &str, size: f32, max: f32) -> String {
    if width(text, size) <= max {
        return text.to_owned();
    }
    let keep = ((max / (size * AVG_ADVANCE)) as usize).saturating_sub(1);
    let mut out: String = text.chars().take(keep).collect();
    out.push('…');
    out
}

/// `text` in lines of at most `max` points.
fn wrap(text: &str, size: f32, max: f32) -> Vec<String> {
    let per_line = ((max / (size * AVG_ADVANCE)) as usize).max(10);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let word: String = word.chars().take(per_line).collect();
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > per_line {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

// ----- the page writer ---------------------------------------------------------------------

type Rgb = (f32, f32, f32);
const INK: Rgb = (0.1, 0.12, 0.15);
const MUTED: Rgb = (0.38, 0.42, 0.46);
const GRID: Rgb = (0.85, 0.87, 0.9);

/// Colour of a severity (threshold lines, badges).
fn severity_colour(s: Severity) -> Rgb {
    match s {
        Severity::Critical => (0.75, 0.05, 0.1),
        Severity::High => (0.85, 0.35, 0.0),
        Severity::Medium => (0.7, 0.55, 0.0),
        Severity::Low | Severity::Info => (0.4, 0.45, 0.5),
    }
}

/// Colour of a series.
pub const SERIES_COLOURS: [(Metric, Rgb); 4] = [
    (Metric::Systolic, (0.1, 0.3, 0.75)),
    (Metric::Diastolic, (0.0, 0.55, 0.45)),
    (Metric::Spo2, (0.1, 0.3, 0.75)),
    (Metric::Glucose, (0.5, 0.15, 0.6)),
];

fn series_colour(m: Metric) -> Rgb {
    SERIES_COLOURS
        .iter()
        .find(|(x, _)| *x == m)
        .map_or(INK, |(_, c)| *c)
}

struct Doc {
    lang: Lang,
    pages: Vec<Content>,
    page: Content,
    y: f32,
}

impl Doc {
    fn new(lang: Lang) -> Doc {
        Doc {
            lang,
            pages: Vec::new(),
            page: Content::new(),
            y: H - MARGIN,
        }
    }

    /// Starts a new page unless `height` points still fit on this one.
    fn room(&mut self, height: f32) {
        if self.y - height < MARGIN + 20.0 {
            let full = std::mem::replace(&mut self.page, Content::new());
            self.pages.push(full);
            self.y = H - MARGIN;
        }
    }

    fn text_at(&mut self, x: f32, y: f32, size: f32, bold: bool, colour: Rgb, text: &str) {
        let c = &mut self.page;
        c.set_fill_rgb(colour.0, colour.1, colour.2);
        c.begin_text();
        c.set_font(if bold { BOLD } else { REGULAR }, size);
        c.next_line(x, y);
        c.show(Str(&win_ansi(text)));
        c.end_text();
    }

    /// One line of text at the cursor, then down.
    fn line(&mut self, x: f32, size: f32, bold: bool, colour: Rgb, text: &str) {
        self.room(size * 1.4);
        let text = fit(text, size, W - MARGIN - x);
        self.text_at(x, self.y - size, size, bold, colour, &text);
        self.y -= size * 1.4;
    }

    fn para(&mut self, text: &str, size: f32) {
        for l in wrap(text, size, BODY) {
            self.line(MARGIN, size, false, INK, &l);
        }
    }

    fn heading(&mut self, text: &str) {
        self.room(60.0);
        self.y -= 8.0;
        self.line(MARGIN, 13.0, true, INK, text);
        let y = self.y + 2.0;
        self.stroke_line(MARGIN, y, W - MARGIN, y, 0.6, GRID);
        self.y -= 4.0;
    }

    fn stroke_line(&mut self, x1: f32, y1: f32, x2: f32, y2: f32, width: f32, colour: Rgb) {
        let c = &mut self.page;
        c.set_stroke_rgb(colour.0, colour.1, colour.2);
        c.set_line_width(width);
        c.move_to(x1, y1);
        c.line_to(x2, y2);
        c.stroke();
    }

    fn finish(mut self, report: &Report) -> Vec<u8> {
        let last = std::mem::replace(&mut self.page, Content::new());
        self.pages.push(last);
        let total = self.pages.len();
        let footer = format!(
            "Sentinella · {} · {} · {}",
            report.patient.display_name,
            tr(self.lang, "title"),
            tr(self.lang, "page")
        );
        let mut pdf = Pdf::new();
        let catalog = Ref::new(1);
        let tree = Ref::new(2);
        let regular = Ref::new(3);
        let bold = Ref::new(4);
        let info = Ref::new(5);
        let first_page = 6;
        let page_ids: Vec<Ref> = (0..total)
            .map(|i| Ref::new(first_page + 2 * i as i32))
            .collect();
        pdf.catalog(catalog).pages(tree);
        pdf.pages(tree)
            .kids(page_ids.iter().copied())
            .count(total as i32);
        for (id, base) in [(regular, &b"Helvetica"[..]), (bold, &b"Helvetica-Bold"[..])] {
            pdf.type1_font(id)
                .base_font(Name(base))
                .encoding_predefined(Name(b"WinAnsiEncoding"));
        }
        let title = format!(
            "{} — {} — {} / {}",
            tr(self.lang, "title"),
            report.patient.display_name,
            date(self.lang, report.period.from),
            date(self.lang, report.period.to)
        );
        pdf.document_info(info)
            .title(TextStr(&title))
            .creator(TextStr("Sentinella"));
        for (i, mut content) in self.pages.into_iter().enumerate() {
            let text = format!("{footer} {}/{total}", i + 1);
            content.set_fill_rgb(MUTED.0, MUTED.1, MUTED.2);
            content.begin_text();
            content.set_font(REGULAR, 8.0);
            content.next_line(MARGIN, MARGIN - 18.0);
            content.show(Str(&win_ansi(&fit(&text, 8.0, BODY))));
            content.end_text();
            let page_id = page_ids[i];
            let content_id = Ref::new(page_id.get() + 1);
            let mut page = pdf.page(page_id);
            page.media_box(Rect::new(0.0, 0.0, W, H));
            page.parent(tree);
            page.contents(content_id);
            {
                let mut resources = page.resources();
                let mut fonts = resources.fonts();
                fonts.pair(REGULAR, regular);
                fonts.pair(BOLD, bold);
            }
            page.finish();
            pdf.stream(content_id, &content.finish());
        }
        pdf.finish()
    }
}

// ----- sections ----------------------------------------------------------------------------

fn header(doc: &mut Doc, r: &Report) {
    let l = doc.lang;
    doc.line(MARGIN, 18.0, true, INK, tr(l, "title"));
    doc.y -= 4.0;
    doc.line(MARGIN, 14.0, true, INK, &r.patient.display_name);
    let facts = [
        format!("{}: {}", tr(l, "code"), r.patient.code),
        format!(
            "{}: {}",
            tr(l, "born"),
            r.patient
                .birth_year
                .map_or("—".to_owned(), |y| y.to_string())
        ),
    ];
    doc.line(MARGIN, 10.0, false, INK, &facts.join("   ·   "));
    let mut facts = vec![format!(
        "{}: {}",
        tr(l, "conditions"),
        if r.patient.conditions.is_empty() {
            "—".to_owned()
        } else {
            r.patient.conditions.join(", ")
        }
    )];
    if let Some(cot) = &r.cot_name {
        facts.push(format!("{}: {cot}", tr(l, "cot")));
    }
    doc.line(MARGIN, 10.0, false, INK, &facts.join("   ·   "));
    doc.line(
        MARGIN,
        11.0,
        true,
        INK,
        &format!(
            "{}: {} – {}",
            tr(l, "period"),
            date(l, r.period.from),
            date(l, r.period.to)
        ),
    );
    let plan = match r.plan_version {
        Some(v) => format!("{}: {} {v}", tr(l, "plan"), tr(l, "plan_version")),
        None => format!(
            "{}: {} ({})",
            tr(l, "plan"),
            tr(l, "plan_template"),
            r.template
        ),
    };
    doc.line(
        MARGIN,
        9.0,
        false,
        MUTED,
        &format!(
            "{plan}   ·   {} {} UTC",
            tr(l, "generated"),
            datetime(l, r.generated_at)
        ),
    );
}

fn summary(doc: &mut Doc, r: &Report) {
    let l = doc.lang;
    doc.heading(tr(l, "summary"));
    let interventions: usize = r.alerts.iter().map(|a| a.interventions.len()).sum();
    let mut by_severity = Vec::new();
    for s in Severity::ALL.iter().rev() {
        let n = r.alerts.iter().filter(|a| a.alert.severity == *s).count();
        if n > 0 {
            by_severity.push(format!("{} {n}", severity_name(l, *s)));
        }
    }
    doc.line(
        MARGIN,
        10.0,
        false,
        INK,
        &format!("{}: {}", tr(l, "readings"), r.readings.len()),
    );
    let alerts = if by_severity.is_empty() {
        "0".to_owned()
    } else {
        format!("{} ({})", r.alerts.len(), by_severity.join(", "))
    };
    doc.line(
        MARGIN,
        10.0,
        false,
        INK,
        &format!("{}: {alerts}", tr(l, "alerts_n")),
    );
    doc.line(
        MARGIN,
        10.0,
        false,
        INK,
        &format!("{}: {interventions}", tr(l, "interventions_n")),
    );
    for a in &r.adherence {
        let pct = a
            .percent()
            .map_or("—".to_owned(), |p| format!("{} %", number(l, p, 0)));
        doc.line(
            MARGIN,
            10.0,
            false,
            INK,
            &format!(
                "{} — {}: {}/{} ({pct})",
                tr(l, "adherence"),
                kind_name(l, a.kind),
                a.taken,
                a.expected
            ),
        );
    }
    if r.truncated {
        doc.line(MARGIN, 9.0, false, MUTED, tr(l, "truncated"));
    }
}

/// Round step for about `n` ticks over `span`.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

const CHART_H: f32 = 150.0;

fn chart(doc: &mut Doc, r: &Report, trend: &Trend) {
    let l = doc.lang;
    doc.room(CHART_H + 70.0);
    let unit = trend.series.first().map_or("", |s| s.metric.unit());
    doc.line(
        MARGIN,
        11.0,
        true,
        INK,
        &format!("{} ({unit})", kind_name(l, trend.kind)),
    );
    // Value range: the points and the thresholds, padded.
    let values = trend
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(trend.thresholds.iter().map(|t| t.value));
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1.0);
    let step = tick_step(hi - lo + 2.0 * pad, 5.0);
    let lo = ((lo - pad) / step).floor() * step;
    let hi = ((hi + pad) / step).ceil() * step;
    let (x0, x1) = (MARGIN + 34.0, W - MARGIN - 92.0);
    let y1 = doc.y - 6.0;
    let y0 = y1 - CHART_H;
    let (t0, t1) = (r.period.start(), r.period.end());
    let span = (t1 - t0).as_seconds_f64().max(1.0);
    let px = |t: OffsetDateTime| x0 + ((t - t0).as_seconds_f64() / span) as f32 * (x1 - x0);
    let py = |v: f64| y0 + ((v - lo) / (hi - lo)) as f32 * (y1 - y0);

    // Grid, y labels.
    let mut v = lo;
    while v <= hi + step / 2.0 {
        let y = py(v);
        doc.stroke_line(x0, y, x1, y, 0.4, GRID);
        let label = number(l, v, if step < 1.0 { 1 } else { 0 });
        doc.text_at(
            x0 - 4.0 - width(&label, 7.0),
            y - 2.5,
            7.0,
            false,
            MUTED,
            &label,
        );
        v += step;
    }
    // Days on the x axis: about eight labels.
    let days = r.period.days();
    let every = (days as f64 / 8.0).ceil().max(1.0) as i64;
    for d in (0..=days).step_by(every as usize) {
        let t = t0 + time::Duration::days(d);
        let x = px(t);
        doc.stroke_line(x, y0, x, y1, 0.4, GRID);
        let day = t.date();
        let label = match l {
            Lang::It => format!("{:02}/{:02}", day.day(), u8::from(day.month())),
            Lang::En => format!("{:02}-{:02}", u8::from(day.month()), day.day()),
        };
        doc.text_at(x - 9.0, y0 - 10.0, 7.0, false, MUTED, &label);
    }
    // Frame.
    {
        let c = &mut doc.page;
        c.set_stroke_rgb(MUTED.0, MUTED.1, MUTED.2);
        c.set_line_width(0.6);
        c.rect(x0, y0, x1 - x0, y1 - y0);
        c.stroke();
    }
    // Threshold lines, dashed, labelled at the right (labels pushed apart so none overlap).
    let mut labels: Vec<(f32, Rgb, String)> = Vec::new();
    for th in &trend.thresholds {
        if th.value < lo || th.value > hi {
            continue;
        }
        let colour = severity_colour(th.severity);
        let y = py(th.value);
        {
            let c = &mut doc.page;
            c.save_state();
            c.set_dash_pattern([4.0, 3.0], 0.0);
            c.set_stroke_rgb(colour.0, colour.1, colour.2);
            c.set_line_width(0.9);
            c.move_to(x0, y);
            c.line_to(x1, y);
            c.stroke();
            c.restore_state();
        }
        let metric = if trend.series.len() > 1 {
            format!(" {}", tr(l, th.metric.as_str()))
        } else {
            String::new()
        };
        let label = format!(
            "{} {}{metric} {}",
            if th.upper { ">=" } else { "<=" },
            number(l, th.value, 0),
            severity_name(l, th.severity)
        );
        labels.push((y, colour, label));
    }
    labels.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut last = f32::INFINITY;
    for (y, colour, label) in labels {
        let y = y.min(last - 7.0);
        last = y;
        doc.text_at(x1 + 3.0, y - 2.5, 6.0, false, colour, &label);
    }
    // Series: a line through the points and a small square on each.
    for s in &trend.series {
        let colour = series_colour(s.metric);
        let c = &mut doc.page;
        c.set_stroke_rgb(colour.0, colour.1, colour.2);
        c.set_fill_rgb(colour.0, colour.1, colour.2);
        c.set_line_width(1.1);
        for (i, &(t, v)) in s.points.iter().enumerate() {
            if i == 0 {
                c.move_to(px(t), py(v));
            } else {
                c.line_to(px(t), py(v));
            }
        }
        if s.points.len() > 1 {
            c.stroke();
        }
        for &(t, v) in &s.points {
            c.rect(px(t) - 1.4, py(v) - 1.4, 2.8, 2.8);
        }
        c.fill_nonzero();
    }
    doc.y = y0 - 16.0;
    // Legend and statistics.
    for s in &trend.series {
        let colour = series_colour(s.metric);
        let name = tr(l, s.metric.as_str());
        let stats = match s.stats() {
            Some((n, min, mean, max)) => format!(
                "{name}: {n} {}, {} {}, {} {}, {} {}",
                tr(l, "n"),
                tr(l, "min"),
                number(l, min, 0),
                tr(l, "mean"),
                number(l, mean, 1),
                tr(l, "max"),
                number(l, max, 0)
            ),
            None => format!("{name}: {}", tr(l, "no_points")),
        };
        doc.room(12.0);
        {
            let y = doc.y - 8.0;
            let c = &mut doc.page;
            c.set_fill_rgb(colour.0, colour.1, colour.2);
            c.rect(MARGIN, y, 8.0, 8.0);
            c.fill_nonzero();
        }
        doc.line(MARGIN + 12.0, 9.0, false, INK, &stats);
    }
    doc.y -= 8.0;
}

fn adherence(doc: &mut Doc, r: &Report) {
    let l = doc.lang;
    doc.heading(tr(l, "adherence"));
    if r.adherence.is_empty() {
        doc.para(tr(l, "no_schedule"), 10.0);
        return;
    }
    let cols = [
        MARGIN,
        MARGIN + 190.0,
        MARGIN + 290.0,
        MARGIN + 360.0,
        MARGIN + 430.0,
    ];
    let head = [
        tr(l, "kind"),
        tr(l, "every"),
        tr(l, "expected"),
        tr(l, "taken"),
        "%",
    ];
    doc.room(14.0);
    let y = doc.y - 10.0;
    for (x, h) in cols.iter().zip(head) {
        doc.text_at(*x, y, 9.0, true, INK, h);
    }
    doc.y -= 14.0;
    for a in &r.adherence {
        doc.room(13.0);
        let y = doc.y - 10.0;
        let every = format!("{} {}", number(l, a.every_hours, 0), tr(l, "hours"));
        let pct = a.percent().map_or("—".to_owned(), |p| number(l, p, 0));
        let cells = [
            kind_name(l, a.kind).to_owned(),
            every,
            a.expected.to_string(),
            a.taken.to_string(),
            pct,
        ];
        for (x, cell) in cols.iter().zip(cells) {
            doc.text_at(*x, y, 9.0, false, INK, &cell);
        }
        doc.y -= 13.0;
    }
}

fn alerts(doc: &mut Doc, r: &Report) {
    let l = doc.lang;
    doc.heading(tr(l, "alerts"));
    if r.alerts.is_empty() {
        doc.para(tr(l, "no_alerts"), 10.0);
        return;
    }
    for line in &r.alerts {
        let a = &line.alert;
        let state = match a.workflow {
            Workflow::Resolved => a
                .outcome
                .as_deref()
                .map_or(tr(l, "resolved").to_owned(), |o| {
                    format!("{}: {}", tr(l, "resolved"), tr(l, o))
                }),
            w => format!("{} ({})", tr(l, "open"), tr(l, w.as_str())),
        };
        doc.room(28.0);
        let y = doc.y - 9.0;
        let badge = severity_name(l, a.severity);
        doc.text_at(MARGIN, y, 8.0, true, severity_colour(a.severity), badge);
        doc.text_at(
            MARGIN + 56.0,
            y,
            9.0,
            false,
            MUTED,
            &datetime(l, a.opened_at),
        );
        let title = fit(&a.title, 9.5, BODY - 140.0);
        doc.text_at(MARGIN + 140.0, y, 9.5, true, INK, &title);
        doc.y -= 13.0;
        doc.line(MARGIN + 140.0, 9.0, false, INK, &state);
        for i in &line.interventions {
            let mut text = format!("{} · {}", datetime(l, i.at), tr(l, kind_key(i.kind)));
            if let Some(c) = i.call_result {
                text.push_str(&format!(" ({})", tr(l, call_key(c))));
            }
            text.push_str(&format!(" · {}", i.actor.trim_start_matches("user:")));
            doc.line(MARGIN + 150.0, 8.5, false, INK, &text);
            if let Some(note) = &i.note {
                for w in wrap(&format!("“{note}”"), 8.5, BODY - 160.0) {
                    doc.line(MARGIN + 160.0, 8.5, false, MUTED, &w);
                }
            }
        }
        doc.y -= 4.0;
    }
}

fn kind_key(k: InterventionKind) -> &'static str {
    k.as_str()
}

fn call_key(c: CallResult) -> &'static str {
    c.as_str()
}

fn plans(doc: &mut Doc, r: &Report) {
    let l = doc.lang;
    doc.heading(tr(l, "plans"));
    if r.plans.is_empty() {
        doc.para(tr(l, "no_plans"), 10.0);
        return;
    }
    for p in &r.plans {
        let text = format!(
            "{} {} · {} · {} · {}",
            tr(l, "plan_version"),
            p.version,
            datetime(l, p.created_at),
            p.author.trim_start_matches("user:"),
            p.reason
        );
        for w in wrap(&text, 9.0, BODY) {
            doc.line(MARGIN, 9.0, false, INK, &w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_helpers() {
        assert_eq!(win_ansi("Città – ok"), b"Citt\xe0 \x96 ok".to_vec());
        assert_eq!(win_ansi("≥"), b"?".to_vec());
        assert_eq!(fit("abcdef", 10.0, 1000.0), "abcdef");
        assert!(fit(&"x".repeat(500), 10.0, 100.0).ends_with('…'));
        let lines = wrap(&"parola ".repeat(60), 10.0, 200.0);
        assert!(lines.len() > 5 && lines.iter().all(|l| l.chars().count() <= 38));
        assert_eq!(tick_step(100.0, 5.0), 20.0);
        assert_eq!(tick_step(7.0, 5.0), 1.0);
        assert_eq!(tick_step(12.0, 5.0), 2.0);
        assert_eq!(number(Lang::It, 1.26, 1), "1,3");
        assert_eq!(
            date(Lang::It, time::macros::date!(2026 - 11 - 01)),
            "01/11/2026"
        );
    }
}
