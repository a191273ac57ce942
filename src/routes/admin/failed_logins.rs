//! `GET /admin/failed-logins`: the failed-login log for administrators.

use askama::Template;
use poem::http::StatusCode;
use poem::{handler, Request, Response};

use crate::audit::FailureReason;
use crate::review::{review, svg_chart, Answer, FilterArgs, RecordView, Summary, HOUR_MS, SUMMARY_HOURS};
use crate::routes::{error_page, html, State};
use crate::store::now_ms;

/// Records per page, by default and at most.
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage<'a> {
    admin: &'a str,
    csrf: &'a str,
    since: &'a str,
    until: &'a str,
    user: &'a str,
    ip: &'a str,
    reason: &'a str,
    limit: usize,
    reasons: &'a [&'a str],
    error: Option<String>,
    notice: Option<String>,
    summary: Option<Summary>,
    chart: String,
    records: Vec<RecordView>,
    next_href: Option<String>,
    first_href: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct Query {
    #[serde(flatten)]
    filters: FilterArgs,
    unlocked: Option<String>,
    unlock_failed: Option<String>,
}

fn href(filters: &FilterArgs) -> String {
    let pairs: Vec<(&str, &str)> = [
        ("since", &filters.since),
        ("until", &filters.until),
        ("user", &filters.user),
        ("ip", &filters.ip),
        ("reason", &filters.reason),
        ("before", &filters.before),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_deref().filter(|s| !s.is_empty()).map(|s| (k, s)))
    .collect();
    let mut q = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    if let Some(limit) = filters.limit {
        q.push_str(&format!("{}limit={limit}", if q.is_empty() { "" } else { "&" }));
    }
    format!("/admin/failed-logins?{q}")
}

#[handler]
pub async fn failed_logins(req: &Request, state: State<'_>) -> Response {
    let admin = match super::require_admin(req, &state) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let query: Query = req.uri().query().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default();
    let mut filters = query.filters;
    filters.limit = Some(filters.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE));

    let audit = state.audit.clone();
    let f = filters.clone();
    let results = tokio::task::spawn_blocking(move || {
        let now = now_ms();
        let page = review(&audit, &f, false, PAGE, now);
        let summary = review(&audit, &FilterArgs { before: None, ..f.clone() }, true, PAGE, now);
        // The summary's own 48-hour series is the chart when its filters reach back 48 hours
        // and up to now (both scans read newest first, so even a cut-off scan agrees); only
        // a narrower time filter needs a scan of its own.
        let reaches_48h = f.to_query(now, PAGE).is_ok_and(|q| {
            q.until.is_none() && q.since.is_none_or(|since| since <= now.saturating_sub(SUMMARY_HOURS * HOUR_MS))
        });
        let chart = (!reaches_48h).then(|| {
            let recent = FilterArgs { since: Some(format!("{SUMMARY_HOURS}h")), until: None, before: None, ..f };
            review(&audit, &recent, true, PAGE, now)
        });
        (page, summary, chart)
    })
    .await;
    let Ok((page, summary, chart)) = results else { return error_page(StatusCode::INTERNAL_SERVER_ERROR) };

    let mut status = StatusCode::OK;
    let mut error = None;
    let (records, next) = match page {
        Ok(Answer::Records { records, next }) => (records, next),
        Ok(_) => (Vec::new(), None),
        Err(e) => {
            status = StatusCode::BAD_REQUEST;
            error = Some(e.to_string().replace("--", ""));
            (Vec::new(), None)
        }
    };
    let summary = match summary {
        Ok(Answer::Summary { summary }) => Some(summary),
        _ => None,
    };
    let chart = match (chart, &summary) {
        (None, Some(summary)) => svg_chart(&summary.per_hour),
        (Some(Ok(Answer::Summary { summary })), _) => svg_chart(&summary.per_hour),
        _ => String::new(),
    };
    let next_href = next.map(|cursor| href(&FilterArgs { before: Some(cursor), ..filters.clone() }));
    let first_href = filters.before.is_some().then(|| href(&FilterArgs { before: None, ..filters.clone() }));
    let notice = match (query.unlocked, query.unlock_failed) {
        (Some(name), _) => Some(format!("{name} is unlocked: failure count and captcha demand cleared.")),
        (None, Some(_)) => Some("No such user to unlock.".to_string()),
        _ => None,
    };
    let csrf = state.csrf.session_token(&admin.token_hash);
    let page = AdminPage {
        admin: &admin.user.display_name,
        csrf: &csrf,
        since: filters.since.as_deref().unwrap_or(""),
        until: filters.until.as_deref().unwrap_or(""),
        user: filters.user.as_deref().unwrap_or(""),
        ip: filters.ip.as_deref().unwrap_or(""),
        reason: filters.reason.as_deref().unwrap_or(""),
        limit: filters.limit.unwrap_or(PAGE),
        reasons: &FailureReason::ALL.map(FailureReason::as_str),
        error,
        notice,
        summary,
        chart,
        records,
        next_href,
        first_href,
    };
    html(status, &page)
}
