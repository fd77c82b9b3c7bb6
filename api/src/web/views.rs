//! What each page shows, already in the user's language: the templates'
//! structs and the small views they list.

use std::collections::HashMap;

use askama::Template;
use serde_json::{Map, Value};
use tramite_engine::definition::{Definition, Document, Field, Indicator, Node, NodeKind, VarType};
use tramite_engine::runtime::forms::FieldError;
use tramite_engine::runtime::indicators::{GateCount, IndicatorValue, StepDuration};
use tramite_engine::store::journal::Entry;
use tramite_engine::store::messages::MessageRow;
use tramite_engine::store::tasks::TaskRow;
use tramite_engine::text::Lang;

use super::Session;
use super::text::Words;
use crate::http::User;

/// An option of a select.
pub(super) struct Choice {
    pub(super) value: String,
    pub(super) label: String,
    pub(super) selected: bool,
}

#[derive(Template)]
#[template(path = "login.html")]
pub(super) struct LoginPage {
    pub(super) w: &'static Words,
    pub(super) user: Option<User>,
    pub(super) error: Option<&'static str>,
    /// The page to go back to once signed in (empty: the inbox).
    pub(super) next: String,
}

#[derive(Template)]
#[template(path = "error.html")]
pub(super) struct ErrorPage {
    pub(super) w: &'static Words,
    pub(super) user: Option<User>,
    pub(super) message: &'static str,
}

/// One inbox row.
pub(super) struct TaskLine {
    pub(super) id: String,
    pub(super) title: String,
    pub(super) step: String,
    pub(super) code: String,
    pub(super) business_key: String,
    pub(super) status: String,
    pub(super) status_word: String,
    pub(super) assignee: String,
    pub(super) due: String,
    /// `overdue`, `soon` or empty.
    pub(super) due_class: String,
    pub(super) due_word: String,
    pub(super) claimable: bool,
}

impl TaskLine {
    pub(super) fn new(t: &TaskRow, node: Option<&Node>, ses: &Session, now: i64) -> TaskLine {
        let w = ses.w;
        let (due_class, due_word) = match t.due_at {
            Some(d) if d <= now => ("overdue", w.overdue),
            Some(d) if d - now <= 15 * 60_000 => ("soon", w.due_soon),
            Some(_) => ("", ""),
            None => ("", w.no_due),
        };
        TaskLine {
            id: t.id.clone(),
            title: node_title(node, ses.lang),
            step: node
                .and_then(|n| n.step.as_ref())
                .map(ToString::to_string)
                .unwrap_or_default(),
            code: t.code.clone(),
            business_key: t.business_key.clone(),
            status: t.status.clone(),
            status_word: task_status_word(w, &t.status).to_owned(),
            assignee: t.assignee.clone().unwrap_or_default(),
            due: t.due_at.map(local_time).unwrap_or_default(),
            due_class: due_class.to_owned(),
            due_word: due_word.to_owned(),
            claimable: t.status == "open",
        }
    }
}

#[derive(Template)]
#[template(path = "inbox.html")]
pub(super) struct InboxPage<'a> {
    pub(super) w: &'static Words,
    pub(super) user: Option<&'a User>,
    pub(super) roles: Vec<Choice>,
    pub(super) status: String,
    pub(super) business_key: String,
    pub(super) lines: Vec<TaskLine>,
    /// More tasks match than the rows shown.
    pub(super) more: bool,
    pub(super) query: String,
    pub(super) done: bool,
}

#[derive(Template)]
#[template(path = "inbox_rows.html")]
pub(super) struct InboxRows {
    pub(super) w: &'static Words,
    pub(super) lines: Vec<TaskLine>,
    pub(super) more: bool,
}

/// One form field, ready for HTML.
pub(super) struct FieldView {
    pub(super) name: String,
    pub(super) label: String,
    pub(super) hint: String,
    /// `text`, `textarea`, `number`, `checkbox`, `yesno`, `select`, `date`.
    pub(super) kind: &'static str,
    pub(super) step: &'static str,
    pub(super) required: bool,
    pub(super) pattern: String,
    pub(super) min: String,
    pub(super) max: String,
    pub(super) minlength: String,
    pub(super) maxlength: String,
    pub(super) options: Vec<Choice>,
    pub(super) value: String,
    pub(super) checked: bool,
    /// The form opened with a value here: emptying it clears the variable
    /// (a page drawn again after a mistake keeps saying so, though the
    /// field may now be empty).
    pub(super) shown: bool,
    pub(super) error: String,
}

impl FieldView {
    pub(super) fn new(
        f: &Field,
        lang: Lang,
        proposed: &Map<String, Value>,
        submitted: Option<&HashMap<String, String>>,
        errors: &[FieldError],
    ) -> FieldView {
        let value = match submitted {
            Some(form) => form.get(&f.name).cloned().unwrap_or_default(),
            None => proposed
                .get(&f.name)
                .map(|v| input_value(f.ty, v))
                .unwrap_or_default(),
        };
        let kind = if !f.options.is_empty() {
            "select"
        } else {
            match f.ty {
                // A list one item per line; an object as JSON.
                VarType::Text | VarType::List | VarType::Object => "textarea",
                VarType::Integer | VarType::Number => "number",
                // A required question is answered Sí or No: a box left
                // unticked would record "No" for a question never asked.
                VarType::Boolean if f.required => "yesno",
                VarType::Boolean => "checkbox",
                VarType::Date => "date",
                // Bolivian wall-clock time; the page adds the offset.
                VarType::Datetime => "datetime-local",
                _ => "text",
            }
        };
        let num = |v: Option<f64>| v.map(|n| n.to_string()).unwrap_or_default();
        FieldView {
            name: f.name.clone(),
            label: f
                .label
                .as_ref()
                .map_or_else(|| f.name.clone(), |l| l.get(lang).to_owned()),
            hint: f
                .hint
                .as_ref()
                .map(|h| h.get(lang).to_owned())
                .unwrap_or_default(),
            kind,
            step: if f.ty == VarType::Number { "any" } else { "1" },
            required: f.required,
            pattern: f.pattern.clone().unwrap_or_default(),
            min: num(f.min),
            max: num(f.max),
            minlength: f.min_length.map(|n| n.to_string()).unwrap_or_default(),
            maxlength: f.max_length.map(|n| n.to_string()).unwrap_or_default(),
            options: f
                .options
                .iter()
                .map(|o| Choice {
                    selected: o.value == value,
                    label: o
                        .label
                        .as_ref()
                        .map_or_else(|| o.value.clone(), |l| l.get(lang).to_owned()),
                    value: o.value.clone(),
                })
                .collect(),
            checked: matches!(value.as_str(), "true" | "on" | "1"),
            shown: !value.is_empty()
                || submitted.is_some_and(|form| form.contains_key(&format!("{}__shown", f.name))),
            error: errors
                .iter()
                .filter(|e| e.field == f.name)
                .map(|e| in_words(&e.message, lang))
                .collect::<Vec<_>>()
                .join("; "),
            value,
        }
    }
}

/// A proposed value as its input takes it: a whole number without `.0`
/// (a connector's `5.0` in an integer field would be refused on submit), a
/// timestamp as its Bolivian day `YYYY-MM-DD` (a date input shows nothing
/// for a timestamp).
fn input_value(ty: VarType, value: &Value) -> String {
    match (ty, value) {
        (VarType::Integer, Value::Number(n)) => tramite_engine::runtime::eval::whole_number_text(n),
        // A timestamp's day in Bolivia (UTC−4), as the pages show times.
        (VarType::Date, Value::String(s)) => {
            match tramite_engine::runtime::machine::timestamp_ms(value) {
                Some(ms) => {
                    let days = (ms - 4 * 3_600_000).div_euclid(86_400_000);
                    let (y, m, d) = tramite_engine::runtime::indicators::civil(days);
                    format!("{y:04}-{m:02}-{d:02}")
                }
                None => s.clone(),
            }
        }
        // A timestamp as Bolivia's wall clock (UTC−4), to the minute, as a
        // `datetime-local` input takes it.
        (VarType::Datetime, Value::String(s)) => {
            match tramite_engine::runtime::machine::timestamp_ms(value) {
                Some(ms) => {
                    let local = ms - 4 * 3_600_000;
                    let days = local.div_euclid(86_400_000);
                    let minute = local.rem_euclid(86_400_000) / 60_000;
                    let (y, m, d) = tramite_engine::runtime::indicators::civil(days);
                    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}", minute / 60, minute % 60)
                }
                None => s.clone(),
            }
        }
        (VarType::List, Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        (VarType::Object, Value::Object(_)) => {
            serde_json::to_string_pretty(value).unwrap_or_default()
        }
        _ => plain(value),
    }
}

/// The engine's field messages, in Spanish for Spanish pages.
pub(super) fn in_words(message: &str, lang: Lang) -> String {
    if lang == Lang::En {
        return message.to_owned();
    }
    let known = [
        ("this field is required", "Este dato es obligatorio."),
        (
            "does not have the expected format",
            "No tiene el formato esperado (vea la indicación).",
        ),
        (
            "is not one of the allowed values",
            "No es una de las opciones permitidas.",
        ),
        ("must be a whole number", "Debe ser un número entero."),
        ("must be a number", "Debe ser un número."),
        ("must be yes or no", "Debe ser sí o no."),
        ("must be yes or no (true or false)", "Debe ser sí o no."),
        ("must be text", "Debe ser texto."),
        ("must be a list", "Debe ser una lista."),
        ("must be an object", "Debe ser un objeto."),
        (
            "must be an object, written as JSON ({\"name\": value, …})",
            "Debe ser un objeto, escrito como JSON ({\"nombre\": valor, …}).",
        ),
        (
            "is too large for a whole number",
            "Es demasiado grande para un número entero.",
        ),
        (
            tramite_engine::runtime::forms::NOT_A_DATE,
            "Debe ser una fecha (día, mes y año).",
        ),
        (
            tramite_engine::runtime::forms::NOT_A_DATETIME,
            "Debe ser una fecha y hora con su desfase horario (por ejemplo 2026-12-07T10:00:00-04:00, hora de Bolivia).",
        ),
        (
            "this form has no such field",
            "Este formulario no tiene ese dato.",
        ),
    ];
    if let Some((_, es)) = known.iter().find(|(en, _)| *en == message) {
        return (*es).to_owned();
    }
    // What an outcome could not record from the data (its expression and
    // CEL's words are the process owner's, not the agent's).
    if message.starts_with("the outcome ") {
        return "Con este dato el paso no puede registrar su resultado: revíselo.".to_owned();
    }
    for (en, es) in [
        ("must have at least ", "Debe tener al menos "),
        ("must have at most ", "Debe tener como máximo "),
        ("must be at least ", "Debe ser al menos "),
        ("must be at most ", "Debe ser como máximo "),
    ] {
        if let Some(rest) = message.strip_prefix(en) {
            let rest = decimal(rest.replace(" characters", " caracteres"), Lang::Es);
            return format!("{es}{rest}.");
        }
    }
    message.to_owned()
}

/// A button that completes the task.
pub(super) struct OutcomeView {
    pub(super) id: String,
    pub(super) label: String,
    pub(super) validate: bool,
    /// The end's name, for a button that skips the form's checks and
    /// closes the request at once ("El cliente desiste"): it asks first.
    pub(super) closes_as: String,
}

/// Something a client sent (a WhatsApp photo or file).
pub(super) struct Attachment {
    pub(super) at: String,
    pub(super) kind: String,
    pub(super) reference: String,
    pub(super) caption: String,
}

impl Attachment {
    /// What `m` carried, its kinds in `lang`'s words.
    pub(super) fn of_message(m: &MessageRow, lang: Lang) -> Vec<Attachment> {
        let mut listed = Attachment::from_message(m);
        for a in &mut listed {
            a.kind = media_word(&a.kind, lang).unwrap_or(&a.kind).to_owned();
        }
        listed
    }

    fn from_message(m: &MessageRow) -> Vec<Attachment> {
        let at = local_time(m.received_at);
        let listed = m.payload["attachments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !listed.is_empty() {
            return listed
                .iter()
                .map(|a| Attachment {
                    at: at.clone(),
                    kind: a["type"].as_str().unwrap_or_default().to_owned(),
                    reference: a["id"].as_str().unwrap_or_default().to_owned(),
                    caption: a["caption"]
                        .as_str()
                        .or(a["filename"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                })
                .collect();
        }
        m.payload["media"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| Attachment {
                at: at.clone(),
                kind: m.message_name.clone(),
                reference: plain(x),
                caption: String::new(),
            })
            .collect()
    }
}

/// WhatsApp's kind of a message's media, as a person says it.
fn media_word(kind: &str, lang: Lang) -> Option<&'static str> {
    let (es, en) = match kind {
        "image" => ("imagen", "image"),
        "document" => ("documento", "document"),
        "audio" => ("audio", "audio"),
        "video" => ("video", "video"),
        "sticker" => ("sticker", "sticker"),
        _ => return None,
    };
    Some(if lang == Lang::Es { es } else { en })
}

/// A document of the procedure on an instance.
pub(super) struct DocView {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) manual: bool,
    pub(super) done: bool,
    pub(super) href: String,
}

#[derive(Template)]
#[template(path = "task.html")]
pub(super) struct TaskPage {
    pub(super) w: &'static Words,
    pub(super) user: Option<User>,
    pub(super) id: String,
    /// When it is due (Bolivian time), if it has a due time.
    pub(super) due: String,
    /// What the agent had typed when the task closed under them (label,
    /// value): shown to copy, not lost.
    pub(super) typed: Vec<(String, String)>,
    pub(super) overdue: bool,
    /// The step an overdue task goes to when released (its interrupting
    /// escalation, held off while the agent had it): the release asks first.
    pub(super) release_escalates_to: String,
    pub(super) title: String,
    pub(super) step: String,
    pub(super) code: String,
    pub(super) procedure: String,
    pub(super) instance_id: String,
    pub(super) business_key: String,
    pub(super) channel: String,
    pub(super) status: String,
    /// Open or claimed: the form is shown.
    pub(super) open: bool,
    /// Who completed it and when, once it is no longer open.
    pub(super) closed_by: String,
    pub(super) closed_at: String,
    pub(super) assignee: String,
    pub(super) mine: bool,
    /// Nobody holds it yet: the page offers to claim it.
    pub(super) claimable: bool,
    /// Held by another agent: the form is shown only with what this agent
    /// typed before the refusal, so nothing typed is lost.
    pub(super) held_by_other: String,
    pub(super) show_form: bool,
    pub(super) instructions: String,
    pub(super) context: Vec<(String, String)>,
    pub(super) earlier: Vec<(String, String, String)>,
    pub(super) fields: Vec<FieldView>,
    pub(super) outcomes: Vec<OutcomeView>,
    pub(super) has_errors: bool,
    pub(super) general_errors: Vec<String>,
    /// Why the form came back with what was typed though nothing in it
    /// was wrong: the engine could not take it just then.
    pub(super) not_saved: &'static str,
    pub(super) received: Vec<Attachment>,
    pub(super) documents: Vec<DocView>,
}

/// One line of the instances list.
pub(super) struct InstanceLine {
    pub(super) id: String,
    pub(super) code: String,
    pub(super) version: i64,
    pub(super) business_key: String,
    pub(super) channel: String,
    pub(super) status: String,
    pub(super) status_class: String,
    pub(super) outcome: String,
    pub(super) started: String,
    pub(super) waits: String,
}

#[derive(Template)]
#[template(path = "instances.html")]
pub(super) struct InstancesPage<'a> {
    pub(super) w: &'static Words,
    pub(super) user: Option<&'a User>,
    pub(super) codes: Vec<Choice>,
    pub(super) status: String,
    pub(super) business_key: String,
    pub(super) lines: Vec<InstanceLine>,
    /// More requests match than the page shows.
    pub(super) more: bool,
}

/// One entry of an instance's timeline.
pub(super) struct TimelineEntry {
    pub(super) at: String,
    pub(super) what: String,
    pub(super) node: String,
    pub(super) actor: String,
    pub(super) detail: String,
    pub(super) class: String,
}

#[derive(Template)]
#[template(path = "instance.html")]
pub(super) struct InstancePage<'a> {
    pub(super) w: &'static Words,
    pub(super) user: Option<&'a User>,
    pub(super) id: String,
    pub(super) code: String,
    pub(super) procedure: String,
    pub(super) version: i64,
    pub(super) business_key: String,
    pub(super) channel: String,
    pub(super) status: String,
    pub(super) outcome: String,
    pub(super) started: String,
    pub(super) ended: String,
    pub(super) waits: Vec<String>,
    pub(super) diagram: String,
    pub(super) variables: Vec<(String, String)>,
    pub(super) timeline: Vec<TimelineEntry>,
    pub(super) documents: Vec<DocView>,
    pub(super) incidents: Vec<(String, String, String)>,
    /// The calling request, if it is still kept and this user may read it
    /// (else no link: it would lead to a 404 or a 403).
    pub(super) parent: String,
    /// Called requests: id (empty where this user may not read it: the
    /// code is shown without a link) and code.
    pub(super) children: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "document.html")]
pub(super) struct DocumentPage {
    pub(super) w: &'static Words,
    pub(super) user: Option<User>,
    pub(super) title: String,
    pub(super) procedure: String,
    pub(super) business_key: String,
    pub(super) channel: String,
    pub(super) started: String,
    pub(super) printed: String,
    pub(super) manual: bool,
    pub(super) status: bool,
    pub(super) copies: String,
    pub(super) lines: Vec<(String, String)>,
    pub(super) received: Vec<Attachment>,
}

/// One procedure in the list.
pub(super) struct DefinitionLine {
    pub(super) code: String,
    pub(super) name: String,
    pub(super) version: i64,
    pub(super) deployed: String,
    pub(super) steps: usize,
}

#[derive(Template)]
#[template(path = "definitions.html")]
pub(super) struct DefinitionsPage<'a> {
    pub(super) w: &'static Words,
    pub(super) user: Option<&'a User>,
    pub(super) lines: Vec<DefinitionLine>,
}

#[derive(Template)]
#[template(path = "definition.html")]
pub(super) struct DefinitionPage<'a> {
    pub(super) w: &'static Words,
    pub(super) user: Option<&'a User>,
    pub(super) code: String,
    pub(super) name: String,
    pub(super) version: i64,
    pub(super) versions: Vec<(i64, String, bool)>,
    pub(super) diagram: String,
    pub(super) source: String,
}

/// One open incident.
pub(super) struct IncidentLine {
    pub(super) id: String,
    pub(super) instance: String,
    pub(super) node: String,
    pub(super) message: String,
    pub(super) at: String,
    /// Raised after the step took effect: running it again would repeat
    /// the effect, so only resolving (with what it should have written,
    /// through the API) settles it, and the page offers no retry.
    pub(super) after_effect: bool,
}

#[derive(Template)]
#[template(path = "incidents.html")]
pub(super) struct IncidentsPage<'a> {
    pub(super) w: &'static Words,
    pub(super) user: Option<&'a User>,
    pub(super) operator: bool,
    pub(super) lines: Vec<IncidentLine>,
}

/// One day of an indicator.
pub(super) struct DayValue {
    /// The period's first day, ISO (`2026-11-27`).
    pub(super) period: String,
    /// The same as the pages write dates (`27/11/2026`).
    pub(super) day: String,
    pub(super) numerator: u64,
    pub(super) denominator: u64,
    /// Requests of the day still running, then cancelled ones.
    pub(super) open: u64,
    pub(super) cancelled: u64,
    pub(super) value: String,
    pub(super) verdict: String,
    /// `ok`, `bad`, `provisional` (requests still running) or empty
    /// (nothing ended that day).
    pub(super) class: String,
}

/// One indicator's dashboard.
pub(super) struct Board {
    pub(super) code: String,
    pub(super) name: String,
    pub(super) threshold: String,
    pub(super) days: Vec<DayValue>,
    pub(super) chart: String,
    pub(super) gates: Vec<(String, String, u64)>,
    pub(super) durations: Vec<(String, u64, String, String)>,
}

impl Board {
    pub(super) fn new(
        def: &Definition,
        ind: &Indicator,
        values: &[IndicatorValue],
        durations: &[StepDuration],
        gates: &[GateCount],
        lang: Lang,
    ) -> Board {
        let threshold = ind.verdict.threshold;
        let days: Vec<DayValue> = values
            .iter()
            .map(|v| DayValue {
                period: v.period.clone(),
                day: day_words(&v.period),
                numerator: v.numerator,
                denominator: v.denominator,
                open: v.open,
                cancelled: v.cancelled,
                value: v
                    .value
                    .map(|x| decimal(format!("{x:.1}"), lang))
                    .unwrap_or_else(|| "—".into()),
                // Without a verdict while requests are still running, the
                // template says "provisional".
                verdict: v
                    .verdict
                    .as_ref()
                    .map(|t| t.get(lang).to_owned())
                    .unwrap_or_default(),
                class: match (v.value, &v.verdict) {
                    (Some(x), Some(_)) if crate::web::views::meets(ind, x) => "ok".into(),
                    (Some(_), Some(_)) => "bad".into(),
                    _ if v.open > 0 => "provisional".into(),
                    _ => String::new(),
                },
            })
            .collect();
        let title = |id: &str| node_title(def.node(id), lang);
        Board {
            code: def.code.clone(),
            name: ind.name.get(lang).to_owned(),
            threshold: decimal(format!("{threshold}"), lang),
            chart: chart(ind, values, lang),
            days,
            gates: gates
                .iter()
                .map(|g| (title(&g.gate), title(&g.next), g.count))
                .collect(),
            durations: durations
                .iter()
                .map(|d| (title(&d.node), d.count, span(d.mean_ms), span(d.max_ms)))
                .collect(),
        }
    }
}

/// Whether `value` gets the indicator's "above" verdict.
pub(super) fn meets(ind: &Indicator, value: f64) -> bool {
    let text = tramite_engine::runtime::indicators::verdict(ind, value);
    text.es == ind.verdict.above.es
}

/// A bar per day, the threshold as a dashed line: an SVG drawn here, so the
/// dashboard needs no chart library.
fn chart(ind: &Indicator, values: &[IndicatorValue], lang: Lang) -> String {
    let (threshold, scale) = (ind.verdict.threshold, ind.scale);
    let (w, h, left, bottom) = (720.0, 220.0, 36.0, 24.0);
    let top = scale.max(threshold);
    let n = values.len().max(1) as f64;
    let slot = (w - left) / n;
    let y = |v: f64| (h - bottom) - (v / top) * (h - bottom - 10.0);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {w} {h}" role="img" xmlns="http://www.w3.org/2000/svg">"#
    );
    for tick in [0.0, top / 2.0, top] {
        svg.push_str(&format!(
            r##"<text x="{}" y="{}" font-size="10" text-anchor="end" fill="#555">{tick:.0}</text>"##,
            left - 4.0,
            y(tick) + 3.0
        ));
    }
    for (i, v) in values.iter().enumerate() {
        let x = left + i as f64 * slot + slot * 0.15;
        if let Some(value) = v.value {
            // Grey while the day's requests have not all ended.
            let color = if v.verdict.is_none() {
                "#90a4ae"
            } else if meets(ind, value) {
                "#2e7d32"
            } else {
                "#c62828"
            };
            svg.push_str(&format!(
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {}</title></rect>"#,
                y(value),
                slot * 0.7,
                (h - bottom) - y(value),
                v.period,
                decimal(format!("{value:.1}"), lang)
            ));
        }
        if i % 5 == 0 || i + 1 == values.len() {
            svg.push_str(&format!(
                r##"<text x="{:.1}" y="{}" font-size="9" text-anchor="middle" fill="#555">{}</text>"##,
                x + slot * 0.35,
                h - 8.0,
                day_words(&v.period).get(..5).unwrap_or_default()
            ));
        }
    }
    svg.push_str(&format!(
        r##"<line x1="{left}" x2="{w}" y1="{t:.1}" y2="{t:.1}" stroke="#1565c0" stroke-width="2" stroke-dasharray="6 4"/><text x="{w}" y="{:.1}" font-size="10" text-anchor="end" fill="#1565c0">{}</text></svg>"##,
        y(threshold) - 4.0,
        decimal(format!("{threshold}"), lang),
        t = y(threshold)
    ));
    svg
}

#[derive(Template)]
#[template(path = "indicators.html")]
pub(super) struct IndicatorsPage<'a> {
    pub(super) w: &'static Words,
    pub(super) user: Option<&'a User>,
    pub(super) boards: Vec<Board>,
}

/// A node's step and label (`3. Identificar al cliente`), or its id.
pub(super) fn node_title(node: Option<&Node>, lang: Lang) -> String {
    let Some(node) = node else {
        return String::new();
    };
    let label = node
        .label
        .as_ref()
        .map_or_else(|| node.id.clone(), |l| l.get(lang).to_owned());
    match &node.step {
        Some(step) => format!("{step}. {label}"),
        None => label,
    }
}

/// A value as a person reads it.
pub(super) fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn value_text(def: &Definition, name: &str, v: &Value, lang: Lang) -> String {
    let w = super::text::of(lang);
    match v {
        Value::Bool(b) => if *b { "✔" } else { "✘" }.to_owned(),
        _ => value_words(def, name, v, w, lang),
    }
}

/// The instance's variables with their labels, in the definition's order.
pub(super) fn context_lines(
    def: &Definition,
    variables: &Map<String, Value>,
    lang: Lang,
) -> Vec<(String, String)> {
    def.variables
        .iter()
        .filter_map(|var| {
            let v = variables.get(&var.name)?;
            let label = var
                .label
                .as_ref()
                .map_or_else(|| var.name.clone(), |l| l.get(lang).to_owned());
            Some((label, value_text(def, &var.name, v, lang)))
        })
        .collect()
}

/// The tasks completed so far: when, which step, by whom.
pub(super) fn earlier_steps(
    def: &Definition,
    history: &[Entry],
    lang: Lang,
) -> Vec<(String, String, String)> {
    history
        .iter()
        .filter(|e| e.kind == "task_completed" || e.kind == "job_succeeded")
        .map(|e| {
            (
                local_time(e.at),
                node_title(e.node_id.as_deref().and_then(|n| def.node(n)), lang),
                actor_words(&e.actor, super::text::of(lang)),
            )
        })
        .collect()
}

/// Every journal entry, as a timeline a person reads: each kind of event
/// in a line of its own, with the definition's labels for steps, outcomes,
/// roles, variables and options, and times as the pages show them.
pub(super) fn timeline(
    def: &Definition,
    history: &[Entry],
    w: &Words,
    lang: Lang,
) -> Vec<TimelineEntry> {
    history
        .iter()
        .map(|e| {
            let class = if e.kind.contains("fail") || e.kind.contains("incident") {
                "bad"
            } else if e.kind.contains("completed") || e.kind.contains("succeeded") {
                "ok"
            } else {
                ""
            };
            let detail = event_detail(def, e, w, lang);
            TimelineEntry {
                at: local_time(e.at),
                what: event_words(&e.kind, lang),
                node: node_title(e.node_id.as_deref().and_then(|n| def.node(n)), lang),
                actor: actor_words(&e.actor, w),
                detail: detail.chars().take(240).collect(),
                class: class.to_owned(),
            }
        })
        .collect()
}

/// Why a request was cancelled, as the page says it: the engine's own
/// reason for a child cancelled with its parent in the page's language, an
/// operator's as they wrote it.
fn cancel_reason(reason: &str, lang: Lang) -> String {
    match tramite_engine::runtime::commands::cancelled_with_parent(reason) {
        Some(id) if lang == Lang::Es => format!("se canceló la solicitud que la inició ({id})"),
        _ => reason.to_owned(),
    }
}

/// Who did it: a person's name, or "the system" for the engine's own steps.
pub(super) fn actor_words(actor: &str, w: &Words) -> String {
    match actor {
        "engine" | "worker" => w.the_system.to_owned(),
        other => other.to_owned(),
    }
}

/// What a history entry says beyond its kind and step.
fn event_detail(def: &Definition, e: &Entry, w: &Words, lang: Lang) -> String {
    let d = &e.data;
    let node = e.node_id.as_deref().and_then(|n| def.node(n));
    let time = |key: &str| d.get(key).and_then(Value::as_i64).map(local_time);
    let values = |key: &str| match d.get(key) {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(name, v)| {
                let label = def
                    .variable(name)
                    .and_then(|v| v.label.as_ref())
                    .map_or_else(|| name.clone(), |l| l.get(lang).to_owned());
                format!("{label}: {}", value_words(def, name, v, w, lang))
            })
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    let text = |key: &str| {
        d.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let lines: Vec<String> = match e.kind.as_str() {
        "task_completed" => {
            let outcome = text("outcome");
            let label = match node.map(|n| &n.kind) {
                Some(NodeKind::UserTask(t)) => t
                    .outcomes
                    .iter()
                    .find(|o| o.id == outcome)
                    .map_or(outcome.clone(), |o| o.label.get(lang).to_owned()),
                _ => outcome,
            };
            std::iter::once(format!("«{label}»"))
                .chain(values("data"))
                .collect()
        }
        "task_created" => {
            let role = text("role");
            let role = def
                .roles
                .iter()
                .find(|r| r.id == role)
                .map_or(role.clone(), |r| r.name.get(lang).to_owned());
            std::iter::once(role)
                .chain(time("due_at").map(|at| format!("{} {at}", w.due)))
                .collect()
        }
        "task_assigned" => vec![format!("→ {}", text("to"))],
        "gate_passed" => vec![format!(
            "→ {}",
            node_title(
                d.get("next")
                    .and_then(Value::as_str)
                    .and_then(|n| def.node(n)),
                lang
            )
        )],
        "job_failed" => {
            let attempt = d.get("attempt").and_then(Value::as_i64).unwrap_or_default();
            std::iter::once(format!("{} {attempt}", w.attempt))
                .chain(time("retry_at").map(|at| format!("{} {at}", w.next_try)))
                .chain(d.get("error").map(plain))
                .collect()
        }
        "job_business_error" => match d.get("error") {
            Some(Value::Object(m)) => m
                .get("message")
                .or_else(|| m.get("code"))
                .map(plain)
                .into_iter()
                .collect(),
            Some(other) => vec![plain(other)],
            None => Vec::new(),
        },
        "timer_scheduled" => time("at")
            .map(|at| format!("{} {at}", w.until))
            .into_iter()
            .collect(),
        "job_succeeded" | "child_ended" | "message_received" => {
            let mut lines = values("written");
            if d.get("late").and_then(Value::as_bool) == Some(true) {
                lines.push(w.late.to_owned());
            }
            lines
        }
        "incident_resolved" => values("variables"),
        "instance_started" => values("data"),
        // The engine's own reason for a child cancelled with its parent,
        // in the page's words; an operator's reason as they wrote it.
        "instance_cancelled" => vec![cancel_reason(&text("reason"), lang)],
        "incident_raised" => vec![text("reason") + &text("message")],
        "child_started" => vec![text("procedure")],
        // Nothing a person needs beyond the kind and the step.
        _ => Vec::new(),
    };
    lines
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" · ")
}

/// A variable's value as a person reads it: an option's label where a form
/// offers it, Sí or No, a whole number without `.0`, lists joined.
pub(super) fn value_words(
    def: &Definition,
    name: &str,
    v: &Value,
    w: &Words,
    lang: Lang,
) -> String {
    match v {
        Value::Bool(true) => w.yes.to_owned(),
        Value::Bool(false) => w.no.to_owned(),
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15) =>
        {
            tramite_engine::runtime::eval::whole_number_text(n)
        }
        Value::String(s) => match def.variable(name).map(|d| d.ty) {
            // As every other date on the pages: day/month/year, and a time
            // in Bolivia's.
            Some(VarType::Date)
                if s.len() == 10
                    && s.bytes().enumerate().all(|(i, b)| {
                        if i == 4 || i == 7 {
                            b == b'-'
                        } else {
                            b.is_ascii_digit()
                        }
                    }) =>
            {
                format!("{}/{}/{}", &s[8..10], &s[5..7], &s[0..4])
            }
            Some(VarType::Datetime) => tramite_engine::runtime::machine::timestamp_ms(v)
                .map_or_else(|| s.clone(), local_time),
            _ => option_label(def, name, s, lang).unwrap_or_else(|| s.clone()),
        },
        Value::Array(items) => items
            .iter()
            .map(|i| value_words(def, name, i, w, lang))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Number(n) => decimal(n.to_string(), lang),
        other => plain(other),
    }
}

/// A number's text with the language's decimal mark: a comma in Spanish,
/// as Bolivia writes it (and as the forms accept it).
pub(super) fn decimal(text: String, lang: Lang) -> String {
    match lang {
        Lang::Es => text.replace('.', ","),
        Lang::En => text,
    }
}

/// The label a form of the definition gives `value` among `name`'s options.
fn option_label(def: &Definition, name: &str, value: &str, lang: Lang) -> Option<String> {
    def.nodes.iter().find_map(|n| {
        let fields = match &n.kind {
            NodeKind::UserTask(t) => &t.form,
            NodeKind::Start(s) => &s.data,
            _ => return None,
        };
        let option = fields
            .iter()
            .filter(|f| f.name == name)
            .flat_map(|f| &f.options)
            .find(|o| o.value == value)?;
        Some(
            option
                .label
                .as_ref()
                .map_or_else(|| value.to_owned(), |l| l.get(lang).to_owned()),
        )
    })
}

/// A history entry's kind as a person reads it: in Spanish on Spanish
/// pages, else the kind with spaces.
fn event_words(kind: &str, lang: Lang) -> String {
    let spanish = match kind {
        "instance_started" => "solicitud iniciada",
        "instance_completed" => "solicitud concluida",
        "instance_cancelled" => "solicitud cancelada",
        "gate_passed" => "decisión tomada",
        "forked" => "pasos en paralelo",
        "joined" => "pasos en paralelo unidos",
        "task_created" => "tarea creada",
        "task_claimed" => "tarea tomada",
        "task_unclaimed" => "tarea devuelta",
        "task_assigned" => "tarea asignada",
        "task_completed" => "tarea completada",
        "task_overdue" => "tarea vencida",
        "job_created" => "consulta a sistema",
        "job_succeeded" => "sistema respondió",
        "job_failed" => "sistema falló (se reintenta)",
        "job_business_error" => "sistema rechazó",
        "incident_raised" => "incidente",
        "incident_retried" => "incidente reintentado",
        "incident_resolved" => "incidente resuelto",
        "incident_withdrawn" => "incidente cerrado (el paso ya se dejó)",
        "message_awaited" => "espera de mensaje",
        "message_received" => "mensaje recibido",
        "message_timed_out" => "mensaje no llegó a tiempo",
        "timer_scheduled" => "espera programada",
        "timer_fired" => "plazo cumplido",
        "child_started" => "procedimiento iniciado",
        "child_start_failed" => "el procedimiento no pudo iniciarse",
        "side_path_ended" => "escalamiento concluido en la unión",
        "child_ended" => "procedimiento concluido",
        "end_reached" => "fin",
        _ => "",
    };
    if lang == Lang::Es && !spanish.is_empty() {
        spanish.to_owned()
    } else {
        kind.replace('_', " ")
    }
}

/// Whether a document has been produced or recorded: a task or job at one
/// of its nodes has finished.
pub(super) fn document_done(d: &Document, history: &[Entry]) -> bool {
    history.iter().any(|e| {
        (e.kind == "task_completed" || e.kind == "job_succeeded")
            && e.node_id
                .as_ref()
                .is_some_and(|n| d.nodes.iter().any(|x| x == n))
    })
}

/// The procedure's documents on an instance (only those of `at` when given).
pub(super) fn documents_of(
    def: &Definition,
    history: &[Entry],
    instance: &str,
    lang: Lang,
    at: Option<&str>,
) -> Vec<DocView> {
    def.documents
        .iter()
        .filter(|d| at.is_none_or(|n| d.nodes.iter().any(|x| x == n)))
        .map(|d| DocView {
            id: d.id.clone(),
            name: d.name.get(lang).to_owned(),
            manual: matches!(d.mode, tramite_engine::definition::DocumentMode::Manual),
            done: document_done(d, history),
            href: format!("/instances/{instance}/documents/{}", d.id),
        })
        .collect()
}

/// A task's status in the page's words.
pub(super) fn task_status_word<'a>(w: &Words, status: &'a str) -> &'a str {
    match status {
        "open" => w.open,
        "claimed" => w.claimed,
        "completed" => w.completed,
        "cancelled" => w.cancelled,
        other => other,
    }
}

/// The instance status in words.
pub(super) fn status_word(w: &Words, status: &str) -> &'static str {
    match status {
        "running" => w.running,
        "completed" => w.completed,
        "cancelled" => w.cancelled,
        _ => w.error,
    }
}

/// An ISO day (`2026-11-27`) as the pages write dates: `27/11/2026`.
fn day_words(iso: &str) -> String {
    match iso.splitn(3, '-').collect::<Vec<_>>().as_slice() {
        [y, m, d] => format!("{d}/{m}/{y}"),
        _ => iso.to_owned(),
    }
}

/// `27/11/2026 09:30` in Bolivia (UTC−4).
pub(super) fn local_time(ms: i64) -> String {
    let local = ms - 4 * 3_600_000;
    let days = local.div_euclid(86_400_000);
    let in_day = local.rem_euclid(86_400_000) / 60_000;
    let (y, m, d) = tramite_engine::runtime::indicators::civil(days);
    format!("{d:02}/{m:02}/{y} {:02}:{:02}", in_day / 60, in_day % 60)
}

/// A duration in words (`3 min`, `2 h 5 min`, `4 d 3 h`).
fn span(ms: i64) -> String {
    let minutes = ms / 60_000;
    match minutes {
        m if m < 1 => format!("{} s", ms / 1_000),
        m if m < 60 => format!("{m} min"),
        m if m < 1_440 => format!("{} h {} min", m / 60, m % 60),
        m => format!("{} d {} h", m / 1_440, (m % 1_440) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spanish pages write decimals with a comma, English ones with a
    /// point; whole numbers have neither.
    #[test]
    fn decimals_are_written_as_each_language_writes_them() {
        let def = tramite_engine::loader::parse("code: T\nname: T\nversion: 1\n").definition;
        let words =
            |v: Value, lang| value_words(&def, "deuda", &v, super::super::text::of(lang), lang);
        assert_eq!(words(serde_json::json!(1234.5), Lang::Es), "1234,5");
        assert_eq!(words(serde_json::json!(1234.5), Lang::En), "1234.5");
        assert_eq!(words(serde_json::json!(120.0), Lang::Es), "120");
    }

    /// An incident raised after its step took effect offers no retry (the
    /// engine refuses it: it would repeat the effect), only what to do.
    #[test]
    fn an_incident_after_its_effect_offers_no_retry() {
        let line = |id: &str, after_effect| IncidentLine {
            id: id.to_owned(),
            instance: "i1".to_owned(),
            node: "registrar".to_owned(),
            message: "falló".to_owned(),
            at: "27/11/2026 09:00".to_owned(),
            after_effect,
        };
        let html = IncidentsPage {
            w: super::super::text::of(Lang::Es),
            user: None,
            operator: true,
            lines: vec![line("a", false), line("b", true)],
        }
        .render()
        .unwrap();
        assert!(html.contains(r#"action="/incidents/a/retry""#), "{html}");
        assert!(!html.contains(r#"action="/incidents/b/retry""#), "{html}");
        assert!(html.contains(r#"id="resolve-b""#), "{html}");
        assert!(
            html.contains("<code>b</code>"),
            "its id, for the API: {html}"
        );
    }

    #[test]
    fn times_are_bolivian() {
        // 2026-11-27 13:00 UTC is 09:00 in Cochabamba.
        assert_eq!(local_time(1_795_784_400_000), "27/11/2026 09:00");
        assert_eq!(span(90_000), "1 min");
        assert_eq!(span(3_900_000), "1 h 5 min");
    }

    /// A field the form opened with a value, emptied by the agent, is
    /// still known as shown when the page comes back after a mistake
    /// elsewhere: sent again, it clears the value, as the first time.
    #[test]
    fn an_emptied_field_stays_shown_across_a_mistake() {
        let field: Field = serde_yaml::from_str("{name: deuda, type: number}").unwrap();
        let proposed: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"deuda": 3.5})).unwrap();
        let opened = FieldView::new(&field, Lang::Es, &proposed, None, &[]);
        assert!(opened.shown);
        let sent: HashMap<String, String> = [
            ("deuda".to_owned(), String::new()),
            ("deuda__shown".to_owned(), "1".to_owned()),
        ]
        .into();
        let again = FieldView::new(&field, Lang::Es, &proposed, Some(&sent), &[]);
        assert!(again.value.is_empty() && again.shown);
        let never: HashMap<String, String> = [("deuda".to_owned(), String::new())].into();
        assert!(!FieldView::new(&field, Lang::Es, &Map::new(), Some(&never), &[]).shown);
    }

    /// A date variable reads as every other date on the pages
    /// (day/month/year), a date-time in Bolivia's time.
    #[test]
    fn dates_read_as_every_other_date() {
        let def = tramite_engine::loader::parse(
            "code: X\nname: X\nversion: 1\nowner_role: r\nroles: [{id: r, name: R}]\nvariables:\n  - {name: fecha, type: date}\n  - {name: hora, type: datetime}\nnodes: []\n",
        )
        .definition;
        let w = super::super::text::of(Lang::Es);
        let text = |s: &str| Value::String(s.to_owned());
        assert_eq!(
            value_words(&def, "fecha", &text("2026-12-06"), w, Lang::Es),
            "06/12/2026"
        );
        assert_eq!(
            value_words(&def, "hora", &text("2026-11-27T13:00:00Z"), w, Lang::Es),
            "27/11/2026 09:00"
        );
        assert_eq!(
            value_words(&def, "fecha", &text("mañana"), w, Lang::Es),
            "mañana"
        );
    }

    /// The engine's English, where an agent reads it, in Spanish.
    #[test]
    fn the_engines_own_words_are_said_in_spanish() {
        assert_eq!(
            cancel_reason("parent `abc` was cancelled", Lang::Es),
            "se canceló la solicitud que la inició (abc)"
        );
        assert_eq!(
            cancel_reason("cliente duplicado", Lang::Es),
            "cliente duplicado"
        );
        assert_eq!(
            cancel_reason("parent `abc` was cancelled", Lang::En),
            "parent `abc` was cancelled"
        );
        let outcome =
            "the outcome `ok` cannot record its values from this data: `monto` takes a number";
        assert!(in_words(outcome, Lang::Es).starts_with("Con este dato"));
        assert_eq!(in_words(outcome, Lang::En), outcome);
    }

    #[test]
    fn proposed_values_fit_their_inputs() {
        use serde_json::json;
        assert_eq!(input_value(VarType::Integer, &json!(5.0)), "5");
        assert_eq!(input_value(VarType::Integer, &json!(7)), "7");
        // As the form reads them back: a list one item per line, an
        // object as JSON.
        assert_eq!(input_value(VarType::List, &json!(["fibra", 3])), "fibra\n3");
        assert_eq!(
            input_value(VarType::Object, &json!({"piso": 3})),
            "{\n  \"piso\": 3\n}"
        );
        assert_eq!(input_value(VarType::Number, &json!(2.5)), "2.5");
        assert_eq!(
            input_value(VarType::Date, &json!("2026-12-06T14:30:00Z")),
            "2026-12-06"
        );
        // 02:30 UTC on the 7th is 22:30 on the 6th in Bolivia.
        assert_eq!(
            input_value(VarType::Date, &json!("2026-12-07T02:30:00Z")),
            "2026-12-06"
        );
        assert_eq!(
            input_value(VarType::Date, &json!("2026-12-06")),
            "2026-12-06"
        );
        assert_eq!(input_value(VarType::Date, &json!("mañana")), "mañana");
        // A timestamp in a datetime field: Bolivia's wall clock, to the minute.
        assert_eq!(
            input_value(VarType::Datetime, &json!("2026-12-07T13:05:30Z")),
            "2026-12-07T09:05"
        );
        assert_eq!(
            input_value(VarType::Datetime, &json!("2026-12-07T02:30:00Z")),
            "2026-12-06T22:30"
        );
        assert_eq!(input_value(VarType::Boolean, &json!(true)), "true");
        assert_eq!(
            input_value(VarType::String, &json!("Cala Cala")),
            "Cala Cala"
        );
    }

    #[test]
    fn history_reads_in_the_pages_language() {
        assert_eq!(event_words("task_completed", Lang::Es), "tarea completada");
        assert_eq!(event_words("task_completed", Lang::En), "task completed");
        assert_eq!(event_words("something_new", Lang::Es), "something new");
    }

    #[test]
    fn field_messages_read_in_spanish() {
        assert_eq!(
            in_words("must have at least 3 characters", Lang::Es),
            "Debe tener al menos 3 caracteres."
        );
        assert_eq!(
            in_words("must have at most 1000 characters", Lang::Es),
            "Debe tener como máximo 1000 caracteres."
        );
        assert_eq!(
            in_words("must be at least 1", Lang::Es),
            "Debe ser al menos 1."
        );
        assert_eq!(
            in_words("must be at most 99.5", Lang::Es),
            "Debe ser como máximo 99,5."
        );
        assert_eq!(
            in_words("must have at least 3 characters", Lang::En),
            "must have at least 3 characters"
        );
    }
}
