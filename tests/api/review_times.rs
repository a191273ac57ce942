//! Time filters of `portcullis audit` and the admin page: every RFC 3339 form is read, and a
//! malformed date is refused with the parser's own reason (task F, item 4).

use portcullis::audit::FailureReason;
use portcullis::store::FailureRecord;

use crate::helpers::test_settings;
use crate::review::{json_lines, portcullis, seed};

/// 2026-11-30T09:00:00Z in Unix milliseconds.
const NINE_UTC: u64 = 1_796_029_200_000;

fn at(time: u64, agent: &str) -> FailureRecord {
    FailureRecord {
        time,
        ip: "192.0.2.7".into(),
        username: "alice".into(),
        reason: FailureReason::BadPassword,
        user_agent: agent.into(),
        count: 1,
        typed: None,
        instance: String::new(),
        known_browser: false,
    }
}

#[tokio::test]
async fn audit_reads_rfc3339_times_with_any_offset_and_names_what_is_wrong_with_a_bad_date() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    seed(&settings, &[at(NINE_UTC - 60_000, "before"), at(NINE_UTC + 60_000, "after")]).await;

    for since in ["2026-11-30T10:00:00+01:00", "2026-11-30T08:00:00-01:00", "2026-11-30t09:00:00z"] {
        let (ok, out, err) = portcullis(&settings, &["audit", "--json", "--since", since]).await;
        assert!(ok, "{since}: {err}");
        let rows = json_lines(&out);
        assert_eq!(rows.len(), 1, "{since}: {out}");
        assert_eq!(rows[0]["user_agent"], "after", "{since}");
    }
    for (bad, why) in [("2026-02-30T10:00:00Z", "day"), ("2026-11-30T25:00:00Z", "hour")] {
        let (ok, _, err) = portcullis(&settings, &["audit", "--since", bad]).await;
        assert!(!ok, "{bad} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(why) && !err.contains("1970 to 9999"), "{bad}: {err}");
    }
}
