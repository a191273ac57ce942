//! `GET /admin/failed-logins`: the failed-login log for administrators.

use askama::Template;
use poem::http::StatusCode;
use poem::{handler, Request, Response};

use crate::audit::FailureReason;
use crate::review::{
    parse_limit, review, svg_chart, Answer, FilterArgs, FilterError, RecordView, ReviewError, Summary, HOUR_MS,
    SUMMARY_HOURS,
};
use crate::routes::{error_page, flash, html, State};
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
    limit: &'a str,
    reasons: &'a [&'a str],
    shown: Shown,
    /// Said when this server has dropped records at `audit_max_records` since it started
    /// ([`crate::audit::Audit::records_dropped`]): the history shown is then cut short, which
    /// the page otherwise did not say (review 128).
    dropped: Option<String>,
}

impl AdminPage<'_> {
    /// The sentence that says what the reason named `name` means, for its tooltip; empty for
    /// a name that is none of ours.
    fn meaning(&self, name: &str) -> &'static str {
        FailureReason::parse(name).map_or("", FailureReason::meaning)
    }
}

/// The page's query as sent: every value text, parsed below with its own message. (With
/// `#[serde(flatten)]` serde_urlencoded cannot read a number, so `limit=50` made the whole
/// query fail and the page fell back to no filters at all.)
#[derive(serde::Deserialize, Default)]
struct Query {
    since: Option<String>,
    until: Option<String>,
    user: Option<String>,
    ip: Option<String>,
    reason: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

/// Why the page's query cannot be used: shown on the page (400), never replaced by defaults.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error("the query does not parse: {0}")]
    Syntax(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
}

impl Query {
    /// The filters this query asks for, or why it cannot be used.
    fn parse(raw: Option<&str>) -> Result<FilterArgs, QueryError> {
        let raw = raw.unwrap_or("");
        // serde_urlencoded decodes a %-escape that is not UTF-8 to U+FFFD, so `user=%ff` would
        // search for that character instead of being refused.
        if !raw.split('&').all(|pair| percent_encoding::percent_decode_str(pair).decode_utf8().is_ok()) {
            return Err(QueryError::Syntax("a %-escape is not UTF-8 text".into()));
        }
        let q: Query = serde_urlencoded::from_str(raw)
            .map_err(|e| QueryError::Syntax(crate::text::printable(&e.to_string()).into_owned()))?;
        let limit = match q.limit.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => parse_limit(s, MAX_PAGE)?,
            None => PAGE,
        };
        Ok(FilterArgs {
            since: q.since,
            until: q.until,
            // As the page shows names and puts them back into the field: escaped.
            user: q.user.map(|u| crate::text::unprintable(&u).into_owned()),
            ip: q.ip,
            reason: q.reason,
            limit: Some(limit),
            before: q.before,
        })
    }
}

fn href(filters: &FilterArgs) -> String {
    // The user as the page shows it, which the page reads back (`Query::parse`).
    let user = filters.user.as_deref().map(|u| crate::text::printable_name(u).into_owned());
    let pairs: Vec<(&str, &str)> = [
        ("since", &filters.since),
        ("until", &filters.until),
        ("user", &user),
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
    let admin = match super::require_admin(req, &state).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    // A notice only from what this server did (a cookie set by the action), never the URL.
    let notice = flash::take_now(req, &state, &admin).await;
    let notice_alert = notice.as_ref().is_some_and(flash::Notice::asks_action);
    let notice = notice.map(|n| n.text());
    let filters = match Query::parse(req.uri().query()) {
        Ok(filters) => filters,
        Err(e) => {
            // Refused with its reason; the form keeps what was sent so it can be corrected.
            let q: Query = serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
            let limit = q.limit.clone().unwrap_or_default();
            let sent = FilterArgs {
                since: q.since,
                until: q.until,
                user: q.user,
                ip: q.ip,
                reason: q.reason,
                ..Default::default()
            };
            let page = Shown { error: Some(for_page(&e.to_string())), notice, notice_alert, ..Shown::default() };
            return flash::cleared(req, render(&state, &admin, &sent, &limit, StatusCode::BAD_REQUEST, page));
        }
    };

    let audit = state.audit.clone();
    let f = filters.clone();
    // In a task of its own, so a panic in a review is a 500 page, not a dropped connection;
    // ended with the page view.
    let results = crate::review::Spawned::new(async move {
        let now = now_ms();
        let page = review(&audit, &f, false, PAGE, now).await;
        if let Err(ReviewError::Store(_)) = &page {
            // The page is a 503 whatever else is read; each further read of a hung database
            // would only add its own wait (5 s) before the answer.
            return (page, None, None);
        }
        let summary = Some(review(&audit, &FilterArgs { before: None, ..f.clone() }, true, PAGE, now).await);
        // The summary's own 48-hour series is the chart when its filters reach back 48 hours
        // and up to now (both scans read newest first, so even a cut-off scan agrees); only
        // a narrower time filter needs a scan of its own.
        let reaches_48h = f.to_query(now, PAGE).is_ok_and(|q| {
            q.until.is_none() && q.since.is_none_or(|since| since <= now.saturating_sub(SUMMARY_HOURS * HOUR_MS))
        });
        let chart = if reaches_48h {
            None
        } else {
            let recent = FilterArgs { since: Some(format!("{SUMMARY_HOURS}h")), until: None, before: None, ..f };
            Some(review(&audit, &recent, true, PAGE, now).await)
        };
        (page, summary, chart)
    })
    .finished()
    .await;
    let Ok((page, summary, chart)) = results else { return error_page(StatusCode::INTERNAL_SERVER_ERROR) };

    let mut status = StatusCode::OK;
    let mut error = None;
    let (records, next) = match page {
        Ok(Answer::Records { records, next }) => (records, next),
        Ok(_) => (Vec::new(), None),
        // The store failing is a fault (503, logged), not a bad filter to show on the page.
        Err(ReviewError::Store(e)) => return crate::routes::store_error(&e, "could not read the failed-login records"),
        Err(ReviewError::Stopped) => return error_page(StatusCode::INTERNAL_SERVER_ERROR),
        Err(e) => {
            status = StatusCode::BAD_REQUEST;
            error = Some(for_page(&e.to_string()));
            (Vec::new(), None)
        }
    };
    let summary = match summary {
        Some(Ok(Answer::Summary { summary })) if error.is_none() => Some(summary),
        // Nor is a page without its summary because the store failed between the two reads.
        Some(Err(ReviewError::Store(e))) => {
            return crate::routes::store_error(&e, "could not read the failed-login records")
        }
        _ => None,
    };
    let chart = match (chart, &summary) {
        (None, Some(summary)) => svg_chart(&summary.per_hour),
        (Some(Ok(Answer::Summary { summary })), _) => svg_chart(&summary.per_hour),
        _ => String::new(),
    };
    let page = Shown {
        error,
        notice,
        notice_alert,
        summary,
        chart,
        records: records.iter().map(RecordView::shown).collect(),
        next_href: next.map(|cursor| href(&FilterArgs { before: Some(cursor), ..filters.clone() })),
        first_href: filters.before.is_some().then(|| href(&FilterArgs { before: None, ..filters.clone() })),
    };
    let limit = filters.limit.unwrap_or(PAGE).to_string();
    flash::cleared(req, render(&state, &admin, &filters, &limit, status, page))
}

/// An error message for the page: the CLI's flag names (`--since/--until: ...`) without their
/// dashes; the quoted value after them is left exactly as it was (escaped).
fn for_page(message: &str) -> String {
    match message.split_once(": ") {
        Some((fields, rest)) if fields.starts_with("--") => format!("{}: {rest}", fields.replace("--", "")),
        _ => message.to_string(),
    }
}

/// What the page shows besides the form.
#[derive(Default)]
struct Shown {
    error: Option<String>,
    notice: Option<String>,
    /// The notice says nothing was done (shown as an alert, not as news).
    notice_alert: bool,
    summary: Option<Summary>,
    chart: String,
    records: Vec<RecordView>,
    next_href: Option<String>,
    first_href: Option<String>,
}

/// What the page says of `dropped` records dropped at the cap of `max` since the start.
fn dropped_note(dropped: u64, max: u64) -> Option<String> {
    (dropped > 0).then(|| {
        format!(
            "The store keeps at most {} (audit_max_records): this server has dropped {} since it started, the oldest first, so the records here may begin after an attack did.",
            crate::text::counted(max, "failed-login record", "failed-login records"),
            crate::text::counted(dropped, "older record", "older records"),
        )
    })
}

fn render(
    state: &crate::app::AppState,
    admin: &crate::session::ActiveSession,
    filters: &FilterArgs,
    limit: &str,
    status: StatusCode,
    shown: Shown,
) -> Response {
    let csrf = state.csrf.session_token(&admin.token_hash);
    // The values put back into the fields come from the URL, which anyone can send an
    // administrator: shown as every page shows such text (`\u{…}` for controls and invisible
    // characters, and look-alike letters in a name that reads as ASCII), so a link cannot
    // pre-fill a look-alike name into the unlock box.
    let field = |v: &Option<String>| crate::text::printable_name(v.as_deref().unwrap_or("")).into_owned();
    let (since, until, user, ip) =
        (field(&filters.since), field(&filters.until), field(&filters.user), field(&filters.ip));
    let limit = crate::text::printable_name(limit);
    let page = AdminPage {
        admin: &crate::text::printable(&admin.user.display_name),
        csrf: &csrf,
        since: &since,
        until: &until,
        user: &user,
        ip: &ip,
        reason: filters.reason.as_deref().unwrap_or(""),
        limit: &limit,
        reasons: &FailureReason::ALL.map(FailureReason::as_str),
        shown,
        dropped: dropped_note(state.audit.records_dropped(), state.settings.audit_max_records),
    };
    html(status, &page)
}
