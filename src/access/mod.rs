//! Forward-auth access rules (`[access]` in the settings file, SPEC.md "Gating other
//! applications"): an ordered list of rules, each a set of conditions on the target request
//! (host, path and query, method, client network) and on who asks (users, groups), and a
//! policy. The first rule whose every given condition holds decides; when none does,
//! `default_policy` does (`deny` unless set). Parsed once at start: an invalid rule stops the
//! program with one line naming its position and field.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use crate::cpu_time::CpuAllowance;

use crate::domain::Group;

mod path_set;
use path_set::{PathSet, PathsMatched};

/// The settings file's table for these rules (file only: no environment variable or flag).
pub const FILE_KEY: &str = "access";

/// What a rule (or the default) asks of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// No sign-in needed.
    Bypass,
    /// Signed in.
    OneFactor,
    /// Signed in with a second factor (NIST SP 800-63B AAL2).
    TwoFactor,
    /// Never.
    #[default]
    Deny,
}

impl Policy {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "bypass" => Ok(Policy::Bypass),
            "one_factor" => Ok(Policy::OneFactor),
            "two_factor" => Ok(Policy::TwoFactor),
            "deny" => Ok(Policy::Deny),
            _ => Err("must be one of bypass, one_factor, two_factor, deny".into()),
        }
    }
}

/// A `domain` entry: an exact host name, or `*.example.com` for every host under
/// `example.com` (at any depth, on a dot boundary, not `example.com` itself).
#[derive(Clone, Debug)]
enum HostPattern {
    Exact(String),
    Under(String),
}

impl HostPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let (under, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, s),
        };
        let label_ok = |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(format!("`{name}` is not a host name or *.domain"));
        }
        Ok(if under { HostPattern::Under(name) } else { HostPattern::Exact(name) })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host == h,
            HostPattern::Under(d) => host.strip_suffix(d.as_str()).is_some_and(|r| r.len() > 1 && r.ends_with('.')),
        }
    }
}

/// One `[[access.rules]]` table. An empty list means "any" for that condition.
#[derive(Clone, Debug)]
pub struct Rule {
    domains: Vec<HostPattern>,
    paths: Vec<PathPattern>,
    /// Upper-case method names.
    methods: Vec<String>,
    networks: Vec<IpNet>,
    /// Normalised username keys.
    users: Vec<String>,
    groups: Vec<Group>,
    pub policy: Policy,
    /// Where `paths` stand in [`Access`]'s [`PathSet`].
    patterns: std::ops::Range<usize>,
}

/// One regular expression of a rule's `path`, as the rules' [`PathSet`] matches it.
#[derive(Clone, Debug)]
struct PathPattern {
    /// The expression as written in the rule.
    source: String,
    /// Whether every match holds the query's `?` (`^/export\?fmt=csv`): a rule on the query,
    /// which the path alone can never tell.
    requires_query: bool,
}

impl PathPattern {
    /// `s`, once the checks made of it alone pass ([`Alone`], [`only_refused_paths`]).
    fn parse(s: &str) -> Result<Self, String> {
        let alone = Alone::new(s)?;
        if let Some(why) = only_refused_paths(s, &alone) {
            return Err(format!("`{s}` {why}"));
        }
        Ok(PathPattern { source: s.to_string(), requires_query: requires_query(s) })
    }
}

/// A path pattern compiled alone, for the checks made of it as its rule is read; dropped
/// after, since the rules' [`PathSet`] judges (kept, a review's 3,000 patterns held 150 MB).
struct Alone {
    as_written: Regex,
    /// The same without regard to case: how a case-insensitive router (Express's default,
    /// ASP.NET Core) sends a path to a handler ([`Access::decide_ignoring_case`]).
    folded: Regex,
}

impl Alone {
    fn new(s: &str) -> Result<Self, String> {
        // Bounded compiled size: a rule cannot make every request slow.
        let compile = |folded: bool| {
            regex::RegexBuilder::new(s)
                .size_limit(1 << 20)
                .case_insensitive(folded)
                .build()
                .map_err(|e| format!("`{s}` is not a valid regular expression ({})", one_line(&e.to_string())))
        };
        let as_written = compile(false)?;
        // One that matches paths alike that no rule names, each beginning otherwise, matches
        // every path (the root perhaps aside): an empty alternative (`^/public/|`, review 151),
        // `^` or `.*`, an alternative every path holds (`^/public/|/`, `.`, `[^x]`; review
        // 153), and one every path but the root holds (`^/.`, `^/[^z]`, `^/[^?]*$`; review
        // 155). Leaving `path` out says that; written so it is most likely a slip, and opened
        // a host to a `bypass`.
        const UNNAMED: [&str; 6] = ["/portcullis-probe-7f3a/x", "/~", "/0", "/%F0%9F%98%80", "/Z.z", "/x/y/z.json"];
        if UNNAMED.iter().all(|path| as_written.is_match(path)) {
            return Err(format!(
                "`{s}` matches every path, or every one but `/` (an empty alternative, or one as short as `/` or `/.`?): leave the field out to match everything"
            ));
        }
        Ok(Alone { as_written, folded: compile(true)? })
    }

    /// Whether it matches `path_and_query` as written, with or without regard to case.
    fn is_match(&self, path_and_query: &str, folded: bool) -> bool {
        if folded { &self.folded } else { &self.as_written }.is_match(path_and_query)
    }
}

/// How a path rule is asked about a request ([`Access::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    /// Against the path alone, as applications route, unless every match needs the query.
    AsRouted,
    /// Against the path and query, or against the path alone.
    Either,
}

/// Whether every match of the regular expression `pattern` holds a `?` (`\\?`, `[?]`), so it
/// names the query; `\\.png(\\?.*)?$` and `[?&]x=` do not (they match without one).
fn requires_query(pattern: &str) -> bool {
    every_match_has(pattern, |c| c == '?')
}

/// The request a proxy asks about.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// Lower-case host name, no port.
    pub host: &'a str,
    /// The path and query, normalised (see `authz::target`).
    pub path_and_query: &'a str,
    /// Upper-case method.
    pub method: &'a str,
    pub client: IpAddr,
}

/// Who asks: a signed-in user's key and effective groups.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    pub user_key: &'a str,
    pub groups: &'a [Group],
}

/// Which rule decided: its position in the file (from 1), or the default policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    Rule(usize),
    Default,
}

impl std::fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecidedBy::Rule(n) => write!(f, "{n}"),
            DecidedBy::Default => f.write_str("default"),
        }
    }
}

/// The outcome of the rules for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This policy applies.
    Policy(Policy, DecidedBy),
    /// An anonymous request reached a rule that names users or groups, with every other
    /// condition met: who asks must be known first (so it must sign in; once signed in the
    /// rules are asked again with the subject).
    SignInFirst(DecidedBy),
}

impl Decision {
    /// How much it asks of a request: `deny` most, then two factors, then a sign-in (one
    /// factor, or a rule naming users or groups for an anonymous request), `bypass` least.
    fn strictness(self) -> u8 {
        match self {
            Decision::Policy(Policy::Deny, _) => 3,
            Decision::Policy(Policy::TwoFactor, _) => 2,
            Decision::Policy(Policy::OneFactor, _) | Decision::SignInFirst(_) => 1,
            Decision::Policy(Policy::Bypass, _) => 0,
        }
    }
}

/// The `[access]` settings.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub default_policy: Policy,
    rules: Vec<Rule>,
    /// Shared: the compiled patterns of thousands of rules take hundreds of MB.
    paths: std::sync::Arc<PathSet>,
}

impl Access {
    /// The first `domain` entry no request can ever be judged for, as the one line
    /// `access.rules #N domain: …` ending in `whose` (what a gated host is, for the message):
    /// an exact name `gates` does not cover, or a `*.` pattern whose hosts it does not. The
    /// verify refuses a target on any other host before the rules (README, "Gating other
    /// applications"), so such a rule only looks like it protects something (review 130).
    pub fn domain_never_gated(&self, gates: impl Fn(&str) -> bool, whose: &str) -> Option<String> {
        for (i, rule) in self.rules.iter().enumerate() {
            for pattern in &rule.domains {
                let (named, sample) = match pattern {
                    HostPattern::Exact(h) => (h.clone(), h.clone()),
                    HostPattern::Under(d) => (format!("*.{d}"), format!("a.{d}")),
                };
                if !gates(&sample) {
                    return Some(format!(
                        "access.rules #{} domain: `{named}` is not {whose}, so no request for it is ever judged",
                        i + 1
                    ));
                }
            }
        }
        None
    }

    /// Whether any rule is set, or a default other than `deny`: forward auth is meant to be
    /// used.
    pub fn is_set_up(&self) -> bool {
        !self.rules.is_empty() || self.default_policy != Policy::Deny
    }

    /// Reads `[access]` from the settings file's table (absent: no rules, default deny).
    ///
    /// # Errors
    /// One line naming the place at fault: `access.default_policy`, or `access.rules #N
    /// field: reason` (N from 1).
    pub fn from_file(file: &toml::Table) -> Result<Self, String> {
        let Some(value) = file.get(FILE_KEY) else { return Ok(Access::default()) };
        let table = value.as_table().ok_or("`access` must be a table ([access])")?;
        let (mut default_policy, mut rules) = (Policy::default(), Vec::new());
        for (key, value) in table {
            match key.as_str() {
                "default_policy" => {
                    let s = value.as_str().ok_or("access.default_policy must be a string")?;
                    default_policy = Policy::parse(s).map_err(|m| format!("access.default_policy {m}"))?;
                }
                "rules" => {
                    let tables = value.as_array().ok_or("access.rules must be a list of tables ([[access.rules]])")?;
                    let mut states = 0;
                    for (i, rule) in tables.iter().enumerate() {
                        let rule =
                            Rule::parse(rule, &mut states).map_err(|m| format!("access.rules #{} {m}", i + 1))?;
                        rules.push(rule);
                    }
                }
                other => return Err(format!("access: unknown key `{other}`")),
            }
        }
        Access::new(default_policy, rules)
    }

    /// The rules in their order, with their path patterns compiled together ([`PathSet`]).
    fn new(default_policy: Policy, mut rules: Vec<Rule>) -> Result<Self, String> {
        let paths = std::sync::Arc::new(PathSet::new(&mut rules)?);
        Ok(Access { default_policy, rules, paths })
    }

    /// A warning when judging an ordinary long URL's readings against these rules takes more
    /// than 50 ms of CPU here (a quarter of [`crate::forward_auth::MAX_JUDGING`]): past that
    /// limit a verify is refused (400), so such URLs would be refused under load or on a slower
    /// machine (review 162: 3,000 patterns with wide bounded repetitions refused every OAuth
    /// callback and SAML request, and nothing said so). `None` for rules that judge it sooner.
    pub fn slow_judging(&self) -> Option<String> {
        self.judging_past(std::time::Duration::from_millis(50))
    }

    /// [`Access::slow_judging`] past `limit` of CPU.
    fn judging_past(&self, limit: std::time::Duration) -> Option<String> {
        let patterns = self.path_patterns();
        if patterns == 0 {
            return None;
        }
        // A SAML request with its relay state (2.5 KB), as the forward-auth tests' ordinary
        // long URLs are, and a word with accents, which a rule's Unicode word boundary (`\b`)
        // leaves to a slower engine than the one that judges the rest.
        let url = format!(
            "/saml/acs?SAMLResponse={}&RelayState=%2Fapp%2F%3Fx%3D1&hl=%C3%A9t%C3%A9",
            "PHNhbWxwOlJlc3BvbnNl%2B%2F%3D".repeat(88)
        );
        fn target(path_and_query: &str) -> Target<'_> {
            Target { host: "app.example.com", path_and_query, method: "GET", client: IpAddr::from([192, 0, 2, 1]) }
        }
        let allowance = CpuAllowance::new(limit);
        // Once past the limit the probe stops, within a reading as a verify does (each
        // reading's answer is then none at once), so the heaviest rule sets cost the start no
        // more than the limit (a review's 3,000 patterns took 38 s of CPU to judge the whole URL).
        let _ = crate::forward_auth::reading_apart(&url, |reading, ignoring_case| {
            self.decide_reading_within(&target(reading), None, ignoring_case, &allowance)
        });
        allowance.spent().then(|| {
            format!(
                "access: judging an ordinary {}-byte URL against the rules' {patterns} path patterns took more than {} ms of CPU here, and a verify stops judging at {} ms (400): long URLs may be refused under load or on a slower machine; use fewer patterns, or ones without wide bounded repetitions",
                url.len(),
                limit.as_millis(),
                crate::forward_auth::MAX_JUDGING.as_millis()
            )
        })
    }

    /// How many path patterns the rules hold together.
    pub fn path_patterns(&self) -> usize {
        self.rules.iter().map(|r| r.paths.len()).sum()
    }

    /// Asks the rules about `target` for `subject` (`None`: not signed in). First match wins.
    pub fn decide(&self, target: &Target<'_>, subject: Option<&Subject<'_>>) -> Decision {
        self.decide_unbounded(target, subject, false)
    }

    /// [`Access::decide`], or [`Access::decide_ignoring_case`] when `ignoring_case`: the
    /// answer for one of a target's readings as `TargetRequest::reading_apart` asks it.
    pub fn decide_reading(&self, target: &Target<'_>, subject: Option<&Subject<'_>>, ignoring_case: bool) -> Decision {
        self.decide_unbounded(target, subject, ignoring_case)
    }

    /// [`Access::decide_reading`] within `allowance` of this thread's CPU time: `None` once it
    /// is spent, as soon as it is (looked at every 64 bytes of the text matched and before each
    /// new state of the patterns' automaton), so that a verify's
    /// judging stops at [`crate::forward_auth::MAX_JUDGING`] however costly one reading is.
    pub fn decide_reading_within(
        &self,
        target: &Target<'_>,
        subject: Option<&Subject<'_>>,
        ignoring_case: bool,
        allowance: &CpuAllowance,
    ) -> Option<Decision> {
        self.decide_with(target, subject, ignoring_case, Some(allowance))
    }

    /// [`Access::decide`] with every path rule matched without regard to case: the answer for
    /// an application whose router ignores case, which serves `/ADMIN` from `/admin`'s handler
    /// and `/account/login` from `/Account/Login`'s.
    pub fn decide_ignoring_case(&self, target: &Target<'_>, subject: Option<&Subject<'_>>) -> Decision {
        self.decide_unbounded(target, subject, true)
    }

    /// [`Access::decide_with`] without an allowance, which always answers.
    fn decide_unbounded(&self, target: &Target<'_>, subject: Option<&Subject<'_>>, folded: bool) -> Decision {
        // Without an allowance nothing stops the matching, so there is an answer; were there
        // none, `deny` is the answer that opens nothing.
        self.decide_with(target, subject, folded, None).unwrap_or(Decision::Policy(Policy::Deny, DecidedBy::Default))
    }

    /// The stricter of two askings: each path rule matched as applications route (against
    /// the path alone, unless every match needs the query's `?`), and matched either so or
    /// against the path and query as written. A rule then grants only by what applications
    /// route (a review's anonymous `/admin?.css` passed a bypass for `\.(css|js)$`,
    /// `/admin/x?.png` one for `\.png(\?.*)?$`), and restricts by either (`^/export.*fmt=csv`,
    /// `\.bak$` for `/x.bak?y`); `^/$` still lets `/?utm_source=x` through (the next review).
    /// `None` once `allowance` is spent.
    fn decide_with(
        &self,
        target: &Target<'_>,
        subject: Option<&Subject<'_>>,
        folded: bool,
        allowance: Option<&CpuAllowance>,
    ) -> Option<Decision> {
        let paths = self.paths.matched(target.path_and_query, folded, allowance)?;
        let as_routed = self.first_match(target, subject, &paths, Asked::AsRouted);
        if paths.path.is_none() {
            return Some(as_routed);
        }
        let either = self.first_match(target, subject, &paths, Asked::Either);
        Some(match either.strictness() > as_routed.strictness() {
            true => either,
            false => as_routed,
        })
    }

    fn first_match(
        &self,
        target: &Target<'_>,
        subject: Option<&Subject<'_>>,
        paths: &PathsMatched<'_>,
        asked: Asked,
    ) -> Decision {
        for (i, rule) in self.rules.iter().enumerate() {
            let by = DecidedBy::Rule(i + 1);
            if !rule.matches_request(target, paths, asked) {
                continue;
            }
            if rule.users.is_empty() && rule.groups.is_empty() {
                return Decision::Policy(rule.policy, by);
            }
            match subject {
                None => return Decision::SignInFirst(by),
                Some(s) if rule.matches_subject(s) => return Decision::Policy(rule.policy, by),
                Some(_) => {}
            }
        }
        Decision::Policy(self.default_policy, DecidedBy::Default)
    }
}

impl Rule {
    /// One rule; `states` counts the automaton states of the rules' path patterns so far,
    /// each compiled alone, so that rules past [`path_set::MAX_STATES`] are refused at the
    /// first pattern past it, before the rest are compiled (review 165: 30,000 patterns were
    /// all compiled together, 114 s and 6.4 GB, before the set was refused).
    fn parse(value: &toml::Value, states: &mut usize) -> Result<Self, String> {
        let table = value.as_table().ok_or(": must be a table")?;
        let mut rule = Rule {
            domains: Vec::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            networks: Vec::new(),
            users: Vec::new(),
            groups: Vec::new(),
            policy: Policy::Deny,
            patterns: 0..0,
        };
        let mut policy = None;
        for (key, value) in table {
            let field = key.as_str();
            let fail = |m: String| format!("{field}: {m}");
            if field == "policy" {
                let s = value.as_str().ok_or_else(|| fail("must be a string".into()))?;
                policy = Some(Policy::parse(s).map_err(fail)?);
                continue;
            }
            let items = strings(value).map_err(fail)?;
            // A field left out matches everything, so an emptied list (a template with no
            // entries) would turn a narrow rule into one for every host, path or person.
            if items.is_empty() {
                return Err(fail("an empty list (leave the field out to match everything)".into()));
            }
            match field {
                "domain" => {
                    rule.domains =
                        items.iter().map(|s| HostPattern::parse(s)).collect::<Result<_, _>>().map_err(fail)?
                }
                "path" => {
                    // An empty pattern matches every path: a `bypass` rule with one opened the
                    // whole host (review 150).
                    if items.iter().any(|s| s.is_empty()) {
                        return Err(fail(
                            "an empty pattern would match every path (leave the field out for that)".into(),
                        ));
                    }
                    if let Some((s, why)) = items.iter().find_map(|s| never_matches(s).map(|why| (s, why))) {
                        return Err(fail(format!("`{s}` {why}")));
                    }
                    for s in &items {
                        *states = states.saturating_add(path_set::states_alone(s));
                        if *states > path_set::MAX_STATES {
                            return Err(fail(format!(
                                "the rules' path patterns up to `{s}` make more than {} states together: {}",
                                path_set::MAX_STATES,
                                path_set::TOO_MANY_STATES
                            )));
                        }
                    }
                    rule.paths = items.iter().map(|s| PathPattern::parse(s)).collect::<Result<_, _>>().map_err(fail)?;
                }
                "methods" => {
                    rule.methods = items
                        .iter()
                        .map(|m| {
                            let m = m.trim().to_ascii_uppercase();
                            // `*`, `ANY` and `ALL` are tokens, but no client sends them: written
                            // as a wildcard, a deny rule would silently never apply.
                            if ["*", "ANY", "ALL"].contains(&m.as_str()) {
                                return Err(format!(
                                    "`{m}` is not an HTTP method (leave the field out for every method)"
                                ));
                            }
                            // RFC 9110 §9.1: a method is a token.
                            if !m.is_empty()
                                && m.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
                            {
                                Ok(m)
                            } else {
                                Err(format!("`{m}` is not an HTTP method"))
                            }
                        })
                        .collect::<Result<_, _>>()
                        .map_err(fail)?
                }
                "networks" => {
                    rule.networks = items
                        .iter()
                        .map(|s| crate::config::parse_trusted_net(s))
                        .collect::<Result<_, _>>()
                        .map_err(fail)?
                }
                "users" => {
                    rule.users = items
                        .iter()
                        // As a new name is read: one no account can have (`alice` and a bidi
                        // control, review 148; Cyrillic `аdmin`, review 150) would never match,
                        // silently.
                        .map(|s| match crate::domain::Username::parse_new(s) {
                            Ok(name) => Ok(name.key().to_string()),
                            Err(crate::domain::UsernameError::Empty) => Err("a user name is empty".to_string()),
                            Err(e) => Err(format!("`{}`: {e}", crate::text::printable(s))),
                        })
                        .collect::<Result<_, _>>()
                        .map_err(fail)?
                }
                "groups" => {
                    rule.groups = items
                        .iter()
                        .map(|s| Group::parse(s).map_err(|e| format!("`{s}`: {e}")))
                        .collect::<Result<_, _>>()
                        .map_err(fail)?
                }
                _ => {
                    return Err(format!(
                        "{field}: unknown field (domain, path, methods, networks, users, groups, policy)"
                    ))
                }
            }
        }
        rule.policy = policy.ok_or("policy: missing (bypass, one_factor, two_factor or deny)")?;
        if rule.policy == Policy::Bypass && !(rule.users.is_empty() && rule.groups.is_empty()) {
            let field = if rule.users.is_empty() { "groups" } else { "users" };
            return Err(format!("{field}: a bypass rule may not name users or groups (it needs no sign-in)"));
        }
        Ok(rule)
    }

    fn matches_request(&self, t: &Target<'_>, paths: &PathsMatched<'_>, asked: Asked) -> bool {
        /// Whether a rule's `method` covers a request's: itself, and `GET` covers `HEAD` too,
        /// which applications answer with their GET handler (RFC 9110 §9.3.2; Flask, Express,
        /// Django and Go's ServeMux route it so): a rule for `GET` that HEAD passed by ran that
        /// handler all the same (review 137).
        fn covers(method: &str, requested: &str) -> bool {
            method == requested || (method == "GET" && requested == "HEAD")
        }
        (self.domains.is_empty() || self.domains.iter().any(|d| d.matches(t.host)))
            && (self.patterns.is_empty() || paths.any(self.patterns.clone(), asked))
            && (self.methods.is_empty() || self.methods.iter().any(|m| covers(m, t.method)))
            && (self.networks.is_empty() || self.networks.iter().any(|n| n.contains(&t.client)))
    }

    fn matches_subject(&self, s: &Subject<'_>) -> bool {
        self.users.iter().any(|u| u == s.user_key) || self.groups.iter().any(|g| s.groups.contains(g))
    }
}

/// A list of strings (a lone string is a list of one).
fn strings(value: &toml::Value) -> Result<Vec<String>, String> {
    match value {
        // Not read as a list of one: `users = "alice,bob"` would be one user no account has,
        // where `trusted_proxies` splits such a string at its commas (review 150), and a
        // path's commas belong to its regular expression.
        toml::Value::String(s) => {
            Err(format!("must be a list of strings, not one string: write [{}]", one_line(&crate::text::quoted(s))))
        }
        toml::Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| "must be a list of strings".to_string()))
            .collect(),
        _ => Err("must be a list of strings".into()),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why the path rule `s` would never match (or, naming a character with other spellings,
/// never be judged by its own answer), if so: rules match the percent-encoded path, so a rule
/// with `σ` in it would protect nothing (a review's `^/σοφ` let every request through).
fn never_matches(s: &str) -> Option<String> {
    if let Some(why) = escape_never_matched(s) {
        return Some(why);
    }
    if let Some(c) = spelled_many_ways(s) {
        return Some(format!(
            "names `{c}`, which applications also reach by other spellings (another case, composed or decomposed), and those cannot all be judged alike: write the rule on a part of the path in ASCII, or on characters without case"
        ));
    }
    if !s.is_ascii() {
        let encode = |c: char| {
            percent_encoding::utf8_percent_encode(c.encode_utf8(&mut [0; 4]), percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        };
        let ascii: String = s.chars().map(|c| if c.is_ascii() { c.to_string() } else { encode(c) }).collect();
        // Inside a class the bytes would be single characters (`[%C3%A9]` is `%`, `C`, `3`,
        // `A`, `9`): no spelling to offer there but alternatives.
        let how = match s.contains('[') {
            false => format!("write `{ascii}`"),
            true => "write each such character as its UTF-8 bytes in upper-case hex, and a class of them as alternatives of those (`[\u{6771}\u{4eac}]` as `(%E6%9D%B1|%E4%BA%AC)`; a negated class cannot be written)".to_string(),
        };
        return Some(format!(
            "has characters outside ASCII, and paths are matched percent-encoded (upper-case hex), so it would never match: {how}"
        ));
    }
    // The path's escapes are upper-case hex (RFC 3986 §6.2.2.1), so `%c3` never matches.
    let lower_hex = s
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1..].iter().all(u8::is_ascii_hexdigit) && w[1..].iter().any(u8::is_ascii_lowercase));
    if lower_hex {
        return Some(
            "has a percent escape in lower-case hex, and paths are matched with upper-case hex (`%C3`, not `%c3`), so it would never match".into(),
        );
    }
    // In a query `+` is a space, as `%20` is, and the query is read both ways: a rule naming
    // one only is answered 400 on its own request (review 111 found `(.*&)?` forms that the
    // paths it names do not show).
    if let Some((_, query)) = s.split_once("\\?") {
        if query.contains("\\+") != query.contains("%20") {
            return Some(
                "names a space in the query one way only (`\\+` or `%20`), and applications read both alike, so it would never decide: write `(\\+|%20)`".into(),
            );
        }
    }
    needs_encoded(s).then(|| {
        "can only match characters that paths and queries hold percent-encoded (upper-case hex): one outside ASCII, a control character, a space, `\"`, `#`, `<` or `>`, so it would never match: write those characters as their escapes (`%E6%9D%B1` for `東`, `(\\+|%20)` for a space in a query; a letter with case or accents cannot be named)".into()
    })
}

/// Why the anchored pattern `s` (compiled as `pattern`) would never decide a request, if it
/// would not: every path it names (its literal prefixes, each
/// alone and with a few plain continuations) is one forward auth refuses (400) whatever the
/// rules say (a dot segment: `^/a/\.\./admin`), or one applications also read otherwise, so
/// that a rule matching one spelling only is answered two ways (400): `^/admin;x` (the
/// parameter is dropped), `^//admin` (slashes merged), `^/e%CC%81` (composed as `é`),
/// `^/%C2%ADadmin` (the soft hyphen dropped), `^/%FF` (not UTF-8, read as Latin-1). Found by
/// a review: such rules loaded, and protected or opened nothing.
fn only_refused_paths(s: &str, pattern: &Alone) -> Option<String> {
    use regex_syntax::hir::{literal::Extractor, Look};
    let hir = regex_syntax::parse(s).ok()?;
    if !hir.properties().look_set_prefix().contains(Look::Start) {
        return None;
    }
    let answer = |reading: &str, ignoring_case: bool| pattern.is_match(reading, ignoring_case);
    // A literal outside ASCII comes from case-insensitive matching (`(?i)k` also names the
    // Kelvin sign), and a path is sent percent-encoded, so the rule never sees it as such.
    let literals = Extractor::new().extract(&hir);
    let ascii =
        literals.literals()?.iter().filter_map(|l| std::str::from_utf8(l.as_bytes()).ok().filter(|t| t.is_ascii()));
    // Refused only when every literal's paths are: a rule that also names paths it decides
    // (`^/a;?b` names `/ab`) is a rule, if a clumsy one (review 108).
    let mut refused_all = None;
    for literal in ascii {
        let whole = whole_characters(literal);
        let named: Vec<String> =
            ["", "x", "0", "/x"].iter().map(|tail| format!("{whole}{tail}")).filter(|p| answer(p, false)).collect();
        let refused = |path: &String| match crate::forward_auth::reading_apart(path, answer) {
            Ok(apart) => apart.map(|a| {
                let how = if a.ignoring_case { " (ignoring case)" } else { "" };
                format!(
                    "applications read it both as `{}` and as `{}`{how}, and the rule tells those apart",
                    a.normalised, a.reading
                )
            }),
            Err(e) => Some(e.to_string()),
        };
        let why: Vec<String> = named.iter().map_while(refused).collect();
        if named.is_empty() || why.len() < named.len() {
            return None;
        }
        refused_all.get_or_insert_with(|| (named[0].clone(), why[0].clone()));
    }
    refused_all.map(|(path, why)| {
        format!("only matches paths that forward auth refuses (400), such as `{path}`: {why}, so it would never decide")
    })
}

/// `literal` (percent-encoded) without an escape cut short or a UTF-8 character whose last
/// bytes are missing at its end: the extractor stops a literal anywhere, and `/%E6%9D` is the
/// start of `/%E6%9D%B1` (`/東`), not a path of its own.
fn whole_characters(mut literal: &str) -> &str {
    loop {
        let Some(i) = literal.rfind('%') else { return literal };
        let cut_escape = literal.len() - i < 3;
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(literal).collect();
        let cut_character = std::str::from_utf8(&bytes).is_err_and(|e| e.error_len().is_none());
        if !(cut_escape || cut_character) {
            return literal;
        }
        literal = &literal[..i];
    }
}

/// Why a percent escape in `pattern` never matches the path as rules see it (normalised by
/// `forward_auth::normalise_path`), if one does: an escape of a plain character (`%7E`, which
/// the path has as `~`), of `/`, `\\` or a control character (paths with those are refused),
/// or one inside a class (`[%C3%A9]` is the characters `%`, `C`, `3`, `A` and `9`).
fn escape_never_matched(pattern: &str) -> Option<String> {
    let bytes = pattern.as_bytes();
    let mut in_class = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'[' if i == 0 || bytes[i - 1] != b'\\' => in_class = true,
            b']' if i == 0 || bytes[i - 1] != b'\\' => in_class = false,
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let Some((hex, byte)) = hex.and_then(|h| Some((h, u8::from_str_radix(h, 16).ok()?))) else { continue };
                if in_class {
                    return Some("has a percent escape inside a class, which matches its characters one by one, so it would never match".into());
                }
                let itself = || regex::escape(char::from(byte).encode_utf8(&mut [0; 4]));
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    return Some(format!(
                        "escapes a plain character (a letter, a digit, `-`, `.`, `_` or `~`) as `%{hex}`, which the path holds as itself, so it would never match: write `{}`",
                        itself()
                    ));
                }
                if byte == b'/' || byte == b'\\' || byte.is_ascii_control() {
                    return Some(format!(
                        "escapes a slash, a backslash or a control character as `%{hex}`, and such paths are refused, so it would never match"
                    ));
                }
                if byte == b'+' && pattern[..i].contains("\\?") {
                    return Some(
                        "escapes `+` as `%2B` in the query, where applications read a `+` as a space, so it would never decide: a plus sign in a query cannot be told from a space (write `(\\+|%20)` for a space)".into(),
                    );
                }
                if byte == b';' {
                    return Some(format!(
                        "escapes `;` as `%{hex}`, which applications decode, and some then drop with the rest of its segment as a parameter, so it would never decide: write the rule on the part of the path before it"
                    ));
                }
                if crate::forward_auth::DECODED_BEFORE_ROUTING.contains(&byte) {
                    return Some(format!(
                        "escapes a character routers decode before they route as `%{hex}`, and a path with it either way is judged as if it were written as itself, so it would never match: write `{}`",
                        itself()
                    ));
                }
            }
            _ => {}
        }
    }
    None
}

/// The first character outside ASCII that `pattern` names in percent escapes and that has
/// other spellings an application may route alike (another case, a composed or decomposed
/// form): the readings of the path judge those against ASCII rules, and a rule on one of them
/// would see its own path refused (400) as answered differently under another spelling.
fn spelled_many_ways(pattern: &str) -> Option<char> {
    use unicode_normalization::UnicodeNormalization;
    let decoded = percent_encoding::percent_decode_str(pattern).decode_utf8_lossy().into_owned();
    decoded.chars().filter(|c| !c.is_ascii() && *c != char::REPLACEMENT_CHARACTER).find(|&c| {
        let one = c.to_string();
        c.to_lowercase().ne(one.chars())
            || c.to_uppercase().ne(one.chars())
            || one.nfkd().ne(one.chars())
            || one.nfkc().ne(one.chars())
    })
}

/// Whether every match of the regular expression `pattern` holds a character that paths and
/// queries never hold as itself, since the URL parser percent-encodes it: one outside ASCII
/// (`\x{e9}`, `\p{Greek}`), a control character, a space (`a b`, `\s`, `\x20`: `%20`, or
/// `+` in a query), `"`, `#`, `<` or `>`. Such a rule never matches.
fn needs_encoded(pattern: &str) -> bool {
    every_match_has(pattern, |c| !c.is_ascii() || c.is_ascii_control() || " \"#<>".contains(c))
}

/// Whether every match of the regular expression `pattern` holds a character `wanted` picks
/// (which must pick all characters outside ASCII alike): every literal holds one, or is in a
/// part every match goes through, every class holds only such characters. A pattern that does
/// not parse is left to the compiler's own error.
fn every_match_has(pattern: &str, wanted: impl Fn(char) -> bool) -> bool {
    use regex_syntax::hir::{Class, Hir, HirKind};
    fn walk(hir: &Hir, wanted: &dyn Fn(char) -> bool) -> bool {
        let range = |start: u32, end: u32| {
            (start..=end.min(0x7f)).all(|c| char::from_u32(c).is_some_and(wanted)) && (end < 0x80 || wanted('\u{80}'))
        };
        match hir.kind() {
            HirKind::Literal(l) => String::from_utf8_lossy(&l.0).chars().any(wanted),
            HirKind::Class(Class::Unicode(c)) => c.ranges().iter().all(|r| range(r.start().into(), r.end().into())),
            HirKind::Class(Class::Bytes(c)) => c.ranges().iter().all(|r| range(r.start().into(), r.end().into())),
            HirKind::Repetition(r) => r.min > 0 && walk(&r.sub, wanted),
            HirKind::Capture(c) => walk(&c.sub, wanted),
            HirKind::Concat(parts) => parts.iter().any(|p| walk(p, wanted)),
            HirKind::Alternation(arms) => arms.iter().all(|a| walk(a, wanted)),
            HirKind::Empty | HirKind::Look(_) => false,
        }
    }
    regex_syntax::parse(pattern).is_ok_and(|hir| walk(&hir, &wanted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn access(toml_text: &str) -> Result<Access, String> {
        Access::from_file(&toml_text.parse::<toml::Table>().unwrap())
    }

    fn target<'a>(host: &'a str, path: &'a str, method: &'a str) -> Target<'a> {
        Target { host, path_and_query: path, method, client: "192.0.2.7".parse().unwrap() }
    }

    const RULES: &str = r#"
        [access]
        default_policy = "deny"
        [[access.rules]]
        domain = ["app.example.com"]
        path = ["^/public/"]
        policy = "bypass"
        [[access.rules]]
        domain = ["*.example.com"]
        path = ["^/admin"]
        groups = ["admins"]
        policy = "two_factor"
        [[access.rules]]
        domain = ["*.example.com"]
        path = ["^/admin"]
        policy = "deny"
        [[access.rules]]
        domain = ["app.example.com"]
        methods = ["GET", "head"]
        networks = ["192.0.2.0/24"]
        policy = "one_factor"
        [[access.rules]]
        domain = ["wiki.example.com"]
        users = ["Alice"]
        policy = "one_factor"
    "#;

    /// Rules that make an ordinary long URL cost more than a limit to judge are warned of
    /// (review 162), with the limit at nothing here so that the test does not time anything;
    /// rules without path patterns never are.
    #[test]
    fn rules_that_judge_an_ordinary_long_url_slowly_are_warned_of() {
        let rules = access(RULES).unwrap();
        let warning = rules.judging_past(std::time::Duration::ZERO).expect("a warning");
        assert!(
            warning.contains("3 path patterns") && warning.contains("a verify stops judging at 200 ms"),
            "{warning}"
        );
        assert_eq!(rules.judging_past(std::time::Duration::from_secs(3600)), None);
        // The probe stops at the limit: with none, it asks no reading after the first.
        assert!(warning.contains("took more than 0 ms"), "{warning}");
        let no_paths = access("[[access.rules]]\ndomain = [\"a.example.com\"]\npolicy = \"deny\"\n").unwrap();
        assert_eq!(no_paths.judging_past(std::time::Duration::ZERO), None);
    }

    /// A reading is not judged once the allowance is spent, even when judging has begun:
    /// review 162's 3,000 patterns made one reading of a 2.6 KB URL cost seconds, and the
    /// limit was looked at only between readings. With time left, it is judged as always.
    #[test]
    fn a_reading_is_judged_only_within_its_allowance() {
        let rules = access(RULES).unwrap();
        let t = target("app.example.com", "/admin/x?y=1", "GET");
        let spent = CpuAllowance::new(std::time::Duration::ZERO);
        assert_eq!(rules.decide_reading_within(&t, None, false, &spent), None);
        let ample = CpuAllowance::new(std::time::Duration::from_secs(3600));
        assert_eq!(rules.decide_reading_within(&t, None, false, &ample), Some(rules.decide(&t, None)));
        assert_eq!(rules.decide_reading_within(&t, None, true, &ample), Some(rules.decide_ignoring_case(&t, None)));
    }

    /// The CPU time of judging `reading` whole against `patterns` deny rules of `pattern`
    /// (`{i}` its number), and of judging it within a `share` of that, on a second copy of the
    /// rules, so that neither judging finds states the other's made.
    fn judged_whole_and_within(
        pattern: &str,
        patterns: usize,
        reading: &str,
        share: u32,
    ) -> (std::time::Duration, std::time::Duration) {
        use crate::cpu_time::thread_cpu_time;
        let rules: String = (0..patterns)
            .map(|i| {
                format!("[[access.rules]]\npath = ['{}']\npolicy = 'deny'\n", pattern.replace("{i}", &i.to_string()))
            })
            .collect();
        let (once, again) = (access(&rules).unwrap(), access(&rules).unwrap());
        let t = target("app.example.com", reading, "GET");
        let started = thread_cpu_time();
        once.decide(&t, None);
        let whole = thread_cpu_time() - started;
        let started = thread_cpu_time();
        let within = again.decide_reading_within(&t, None, false, &CpuAllowance::new(whole / share));
        assert_eq!(within, None, "judged whole within {:?} of {whole:?}", whole / share);
        (whole, thread_cpu_time() - started)
    }

    /// With review 162's costliest kind of pattern, one long reading costs many times the
    /// allowance to judge whole, and judging it within the allowance stops near it, long
    /// before the end (a ratio of CPU times measured here, not a time).
    #[test]
    fn judging_a_costly_reading_stops_near_its_allowance() {
        let pattern = "(?i)[^/?]{1,20}[0-9a-f]{4,12}x{i}[[:alnum:]]{0,16}";
        let reading = format!("/saml/acs?SAMLResponse={}", "PHNhbWxwOlJlc3BvbnNl+/=".repeat(400));
        let (whole, cut) = judged_whole_and_within(pattern, 300, &reading, 20);
        assert!(cut < whole / 4, "judged for {cut:?} of an allowance of a 20th of {whole:?}");
    }

    /// A short reading (under 64 bytes, so judged with one periodic look at the allowance)
    /// whose every byte makes a new state of the patterns' automaton stops near its allowance
    /// too: the allowance is looked at before each state is made (review 164: a 2-byte path
    /// cost 800 ms against 5,000 wide patterns).
    #[test]
    fn judging_a_short_reading_of_costly_states_stops_near_its_allowance() {
        let pattern = "(?i)[^/?]{1,40}[0-9a-f]{4,30}x{i}[[:alnum:]]{0,40}";
        let reading = format!("/{}", "0123456789abcdef".repeat(3));
        let (whole, cut) = judged_whole_and_within(pattern, 500, &reading, 10);
        assert!(cut < whole / 3, "judged for {cut:?} of an allowance of a 10th of {whole:?}");
    }

    /// Rules whose path patterns pass the bound of states are refused at the first pattern
    /// past it, naming its rule, not once every pattern was compiled (review 165: 30,000
    /// patterns took 114 s and 6.4 GB to be refused).
    #[test]
    fn rules_past_the_bound_of_states_are_refused_where_they_pass_it() {
        let rules: String = (0..600)
            .map(|i| format!("[[access.rules]]\npath = ['(?i)[^/?]{{1,200}}x{i}']\npolicy = 'deny'\n"))
            .collect();
        let err = access(&rules).expect_err("past the bound");
        assert!(err.contains("make more than 1000000 states together"), "{err}");
        let n: usize = err["access.rules #".len()..].split(' ').next().unwrap().parse().unwrap();
        assert!((2..600).contains(&n), "refused at rule {n}: {err}");
    }

    #[test]
    fn a_rule_for_get_covers_head_which_applications_route_to_the_same_handler() {
        let a = access(
            "[[access.rules]]\npath = [\"^/getonly\"]\nmethods = [\"GET\"]\npolicy = \"deny\"\n\
             [[access.rules]]\npath = [\"^/head\"]\nmethods = [\"HEAD\"]\npolicy = \"deny\"\n\
             [[access.rules]]\npolicy = \"bypass\"",
        )
        .unwrap();
        let d = |path: &str, method: &str| a.decide(&target("app.example.com", path, method), None);
        assert_eq!(d("/getonly", "HEAD"), Decision::Policy(Policy::Deny, DecidedBy::Rule(1)));
        assert_eq!(d("/getonly", "POST"), Decision::Policy(Policy::Bypass, DecidedBy::Rule(3)));
        // Not the other way: a HEAD rule says nothing of GET, which sends the content.
        assert_eq!(d("/head", "GET"), Decision::Policy(Policy::Bypass, DecidedBy::Rule(3)));
    }

    #[test]
    fn the_first_matching_rule_decides_and_the_default_otherwise() {
        let a = access(RULES).unwrap();
        let admins = [Group::admins()];
        let admin = Subject { user_key: "root", groups: &admins };
        let alice = Subject { user_key: "alice", groups: &[] };
        let d = |t: &Target<'_>, s: Option<&Subject<'_>>| a.decide(t, s);
        assert_eq!(
            d(&target("app.example.com", "/public/x", "POST"), None),
            Decision::Policy(Policy::Bypass, DecidedBy::Rule(1))
        );
        assert_eq!(d(&target("app.example.com", "/admin", "GET"), None), Decision::SignInFirst(DecidedBy::Rule(2)));
        assert_eq!(
            d(&target("app.example.com", "/admin", "GET"), Some(&admin)),
            Decision::Policy(Policy::TwoFactor, DecidedBy::Rule(2))
        );
        assert_eq!(
            d(&target("app.example.com", "/admin", "GET"), Some(&alice)),
            Decision::Policy(Policy::Deny, DecidedBy::Rule(3)),
            "a subject that does not match goes on to the next rule"
        );
        assert_eq!(
            d(&target("app.example.com", "/x", "GET"), None),
            Decision::Policy(Policy::OneFactor, DecidedBy::Rule(4))
        );
        assert_eq!(
            d(&target("app.example.com", "/x", "POST"), None),
            Decision::Policy(Policy::Deny, DecidedBy::Default)
        );
        let elsewhere = Target { client: "198.51.100.1".parse().unwrap(), ..target("app.example.com", "/x", "GET") };
        assert_eq!(d(&elsewhere, None), Decision::Policy(Policy::Deny, DecidedBy::Default));
        assert_eq!(
            d(&target("wiki.example.com", "/", "GET"), Some(&alice)),
            Decision::Policy(Policy::OneFactor, DecidedBy::Rule(5))
        );
        assert_eq!(
            d(&target("wiki.example.com", "/", "GET"), Some(&admin)),
            Decision::Policy(Policy::Deny, DecidedBy::Default)
        );
        // `*.example.com` is on a dot boundary and not the apex.
        assert_eq!(
            d(&target("evil-example.com", "/admin", "GET"), None),
            Decision::Policy(Policy::Deny, DecidedBy::Default)
        );
        assert_eq!(
            d(&target("example.com", "/admin", "GET"), None),
            Decision::Policy(Policy::Deny, DecidedBy::Default)
        );
        assert_eq!(d(&target("a.b.example.com", "/admin", "GET"), None), Decision::SignInFirst(DecidedBy::Rule(2)));
        assert_eq!(
            Access::default().decide(&target("x", "/", "GET"), None),
            Decision::Policy(Policy::Deny, DecidedBy::Default)
        );
    }

    #[test]
    fn a_rule_grants_nothing_through_the_query_and_restricts_through_either() {
        for pattern in
            [r"^/export\?fmt=csv", r"^/a[?]b", r"(?x) ^/x \? y", r"^/(a|b)\?x", r"\?.+", r"\.(css|js)\?v=[0-9]+$"]
        {
            assert!(requires_query(pattern), "{pattern}");
        }
        for pattern in
            ["^/admin", r"\.(css|js)$", r"\.png(\?.*)?$", r"\.bak(\?|$)", r"^/s[?&]q=", r"^/ed$|^/ee\?x", "("]
        {
            assert!(!requires_query(pattern), "{pattern}");
        }
        let rules = |rules: &[(&str, &str)]| {
            let mut text = String::from("[access]\ndefault_policy = \"one_factor\"\n");
            for (path, policy) in rules {
                text += &format!("[[access.rules]]\npath = [{path:?}]\npolicy = \"{policy}\"\n");
            }
            access(&text).unwrap()
        };
        let a = rules(&[
            (r"\.(css|js)$", "bypass"),
            (r"\.(png|ico)(\?.*)?$", "bypass"),
            (r"^/api\?public=1$", "bypass"),
            (r"\.bak$", "deny"),
            (r"^/e1.*fmt=csv", "deny"),
            ("token=", "deny"),
            (r"^/export\?(.*&)?fmt=csv(&|$)", "deny"),
            (r"^/ed$|^/ee\?x", "deny"),
        ]);
        let d = |path: &str| match a.decide(&target("app.example.com", path, "GET"), None) {
            Decision::Policy(policy, _) => policy,
            other => panic!("{path}: {other:?}"),
        };
        // Text in the query grants nothing (reviews 109 and 111: Flask served `/admin/x`).
        for path in ["/admin?.css", "/admin/x?.png", "/admin/x?v=1.png", "/x?.js"] {
            assert_eq!(d(path), Policy::OneFactor, "{path}");
        }
        // The path grants, with or without a query that also matches.
        assert_eq!(d("/a.png?v=3"), Policy::Bypass);
        assert_eq!(d("/a.png"), Policy::Bypass);
        assert_eq!(d("/a.css"), Policy::Bypass);
        // A rule that needs the query grants by it.
        assert_eq!(d("/api?public=1"), Policy::Bypass);
        // Restrictions hold through either: the path alone, or wildcards reaching the query.
        for path in ["/x.bak?y", "/e1?fmt=csv", "/x?token=abc", "/x?a=1&token=abc", "/export?fmt=csv", "/ed?y", "/ee?x"]
        {
            assert_eq!(d(path), Policy::Deny, "{path}");
        }
        assert_eq!(d("/export?fmt=pdf"), Policy::OneFactor);
        // What applications route grants, whatever the query (review 112: `^/$` sent every
        // `/?utm_source=x` to sign in).
        assert_eq!(d("/a.css?v=3"), Policy::Bypass);
        let home = rules(&[("^/$", "bypass"), ("^/wiki/Main_Page$", "bypass")]);
        for path in ["/?utm_source=newsletter&utm_medium=email", "/wiki/Main_Page?action=view", "/"] {
            let decision = home.decide(&target("app.example.com", path, "GET"), None);
            assert!(matches!(decision, Decision::Policy(Policy::Bypass, _)), "{path}: {decision:?}");
        }
    }

    #[test]
    fn a_pattern_that_only_non_ascii_text_can_match_is_found() {
        for never in [
            r"^/caf\x{e9}",
            r"^/[\x{e0}-\x{ff}]",
            r"^/(\x{e9}|\x{e8})",
            r"^/\p{Greek}+",
            r"^/a\x{e9}{2}",
            // A space, as itself or a class: paths and queries hold `%20` or `+` (review 111).
            r"^/q3\?f=a b",
            r"^/q4\?f=a\sb",
            r"^/q5\?f=a\x20b",
            r"^/x[<>]",
            r"^/x\x{0a}",
        ] {
            assert!(super::needs_encoded(never), "{never}");
        }
        for fine in [
            "^/admin",
            "^/public/",
            r"^/[^/]+/x",
            r"^/\w+",
            r"^/caf(\x{e9})?",
            "(?i)^/a",
            r"^/%C3%A9",
            ".",
            "(",
            r"^/a\s?b",
            r"^/q\?f=a(\+|%20)b",
        ] {
            assert!(!super::needs_encoded(fine), "{fine}");
        }
    }

    #[test]
    fn an_invalid_rule_is_one_line_naming_its_position_and_field() {
        for (text, want) in [
            ("[[access.rules]]\npath = [\"(\"]\npolicy = \"deny\"", "access.rules #1 path:"),
            (
                "[[access.rules]]\npolicy = \"deny\"\n[[access.rules]]\ndomain = \"a b\"\npolicy = \"deny\"",
                "access.rules #2 domain:",
            ),
            ("[[access.rules]]\nmethods = [\"G ET\"]\npolicy = \"deny\"", "access.rules #1 methods:"),
            (
                "[[access.rules]]\nmethods = [\"*\"]\npolicy = \"deny\"",
                "access.rules #1 methods: `*` is not an HTTP method (leave the field out for every method)",
            ),
            ("[[access.rules]]\nmethods = [\"GET\", \"any\"]\npolicy = \"deny\"", "access.rules #1 methods: `ANY`"),
            ("[[access.rules]]\nnetworks = [\"10.0.0.0/33\"]\npolicy = \"deny\"", "access.rules #1 networks:"),
            ("[[access.rules]]\ngroups = [\"a,b\"]\npolicy = \"deny\"", "access.rules #1 groups:"),
            ("[[access.rules]]\nusers = [\"alice\"]\npolicy = \"bypass\"", "access.rules #1 users:"),
            ("[[access.rules]]\ngroups = [\"ops\"]\npolicy = \"bypass\"", "access.rules #1 groups:"),
            ("[[access.rules]]\ndomain = [\"a.example.com\"]", "access.rules #1 policy:"),
            ("[[access.rules]]\npolicy = \"allow\"", "access.rules #1 policy:"),
            ("[[access.rules]]\nhost = [\"x\"]\npolicy = \"deny\"", "access.rules #1 host:"),
            ("[[access.rules]]\npath = 3\npolicy = \"deny\"", "access.rules #1 path:"),
            ("[[access.rules]]\ndomain = []\npolicy = \"bypass\"", "access.rules #1 domain: an empty list"),
            ("[[access.rules]]\npath = []\npolicy = \"bypass\"", "access.rules #1 path: an empty list"),
            (
                "[[access.rules]]\npath = [\"^/caf\\\\x{e9}\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/caf\\x{e9}` can only match characters that paths and queries hold percent-encoded",
            ),
            (
                "[[access.rules]]\npath = [\"^/[\\\\x{e0}-\\\\x{ff}]+\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/[\\x{e0}-\\x{ff}]+` can only match characters that paths",
            ),
            (
                "[[access.rules]]\npath = [\"^/[\u{6771}\u{4eac}]\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/[\u{6771}\u{4eac}]` has characters outside ASCII, and paths are matched percent-encoded (upper-case hex), so it would never match: write each such character as its UTF-8 bytes in upper-case hex, and a class of them as alternatives",
            ),
            (
                "[[access.rules]]\npath = [\"^/caf[\u{e9}\u{e8}]\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/caf[\u{e9}\u{e8}]` names `\u{e9}`, which applications also reach by other spellings",
            ),
            ("[[access.rules]]\npath = [\"^/%7Ealice\"]\npolicy = \"deny\"", "access.rules #1 path: `^/%7Ealice` escapes a plain character"),
            ("[[access.rules]]\npath = [\"^/x%2Fy\"]\npolicy = \"deny\"", "access.rules #1 path: `^/x%2Fy` escapes a slash"),
            ("[[access.rules]]\npath = [\"^/q/a%2Bb\"]\npolicy = \"deny\"", "access.rules #1 path: `^/q/a%2Bb` escapes a character routers decode"),
            ("[[access.rules]]\npath = [\"^/caf[%C3%A9]\"]\npolicy = \"deny\"", "access.rules #1 path: `^/caf[%C3%A9]` has a percent escape inside a class"),
            ("[[access.rules]]\npath = [\"^/caf%C3%A9\"]\npolicy = \"deny\"", "access.rules #1 path: `^/caf%C3%A9` names `\u{e9}`, which applications also reach by other spellings"),
            (
                "[[access.rules]]\npath = [\"^/%e6%9d%b1\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/%e6%9d%b1` has a percent escape in lower-case hex",
            ),
            (
                "[[access.rules]]\npath = [\"^/\u{6771}\u{4eac}\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/\u{6771}\u{4eac}` has characters outside ASCII, and paths are matched percent-encoded (upper-case hex), so it would never match: write `^/%E6%9D%B1%E4%BA%AC`",
            ),
            (
                "[[access.rules]]\npath = [\"^/\u{3c3}\u{3bf}\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/\u{3c3}\u{3bf}` names `\u{3c3}`, which applications also reach by other spellings",
            ),
            (
                "[[access.rules]]\npath = [\"^/%61dmin\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/%61dmin` escapes a plain character (a letter, a digit, `-`, `.`, `_` or `~`) as `%61`, which the path holds as itself, so it would never match: write `a`",
            ),
            (
                "[[access.rules]]\npath = [\"^/x%2E%2E/y\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/x%2E%2E/y` escapes a plain character (a letter, a digit, `-`, `.`, `_` or `~`) as `%2E`, which the path holds as itself, so it would never match: write `\\.`",
            ),
            (
                "[[access.rules]]\npath = [\"^/p/a%2Bb\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/p/a%2Bb` escapes a character routers decode before they route as `%2B`, and a path with it either way is judged as if it were written as itself, so it would never match: write `\\+`",
            ),
            (
                "[[access.rules]]\npath = [\"^/q\\\\?x=%2B\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/q\\?x=%2B` escapes `+` as `%2B` in the query, where applications read a `+` as a space",
            ),
            (
                "[[access.rules]]\npath = [\"^/x\\\\?(.*&)?f=a\\\\+b(&|$)\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/x\\?(.*&)?f=a\\+b(&|$)` names a space in the query one way only",
            ),
            (
                "[[access.rules]]\npath = [\"^/x\\\\?(.*&)?f=a%20b\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/x\\?(.*&)?f=a%20b` names a space in the query one way only",
            ),
            (
                "[[access.rules]]\npath = [\"^/semi/a%3Bb\"]\npolicy = \"deny\"",
                "access.rules #1 path: `^/semi/a%3Bb` escapes `;` as `%3B`, which applications decode, and some then drop",
            ),
            ("[[access.rules]]\nusers = []\npolicy = \"one_factor\"", "access.rules #1 users: an empty list"),
            ("[[access.rules]]\nusers = [\"alice\\u202e\"]\npolicy = \"one_factor\"", "access.rules #1 users: `alice\\u{202e}`: the username contains invisible"),
            ("[[access.rules]]\nusers = [\"\u{430}dmin\"]\npolicy = \"deny\"", "access.rules #1 users: `\u{430}dmin`: "),
            ("[[access.rules]]\nusers = \"alice,bob\"\npolicy = \"deny\"", "access.rules #1 users: must be a list of strings, not one string: write [\"alice,bob\"]"),
            ("[[access.rules]]\npath = [\"\"]\npolicy = \"bypass\"", "access.rules #1 path: an empty pattern would match every path"),
            ("[[access.rules]]\npath = [\"^/a\", \"\"]\npolicy = \"deny\"", "access.rules #1 path: an empty pattern"),
            ("[[access.rules]]\npath = [\"^/public/|\"]\npolicy = \"bypass\"", "access.rules #1 path: `^/public/|` matches every path"),
            ("[[access.rules]]\npath = [\"^\"]\npolicy = \"bypass\"", "access.rules #1 path: `^` matches every path"),
            // An alternative every path holds (review 153).
            ("[[access.rules]]\npath = [\"^/public/|/\"]\npolicy = \"bypass\"", "access.rules #1 path: `^/public/|/` matches every path"),
            ("[[access.rules]]\npath = [\"[^x]\"]\npolicy = \"bypass\"", "access.rules #1 path: `[^x]` matches every path"),
            ("[[access.rules]]\npath = [\"^/x|^/\"]\npolicy = \"deny\"", "access.rules #1 path: `^/x|^/` matches every path"),
            ("[[access.rules]]\npath = [\".\"]\npolicy = \"bypass\"", "access.rules #1 path: `.` matches every path"),
            ("[[access.rules]]\npath = [\"^/\"]\npolicy = \"one_factor\"", "access.rules #1 path: `^/` matches every path"),
            // Every path but the root (review 155).
            ("[[access.rules]]\npath = [\"^/.\"]\npolicy = \"bypass\"", "access.rules #1 path: `^/.` matches every path"),
            ("[[access.rules]]\npath = [\"^/[^z]\"]\npolicy = \"bypass\"", "access.rules #1 path: `^/[^z]` matches every path"),
            ("[[access.rules]]\npath = [\"^/[^?]*$\"]\npolicy = \"bypass\"", "access.rules #1 path: `^/[^?]*$` matches every path"),
            ("[[access.rules]]\npath = [\".*\"]\npolicy = \"bypass\"", "access.rules #1 path: `.*` matches every path"),
            ("[[access.rules]]\ngroups = []\npolicy = \"two_factor\"", "access.rules #1 groups: an empty list"),
            ("[access]\ndefault_policy = \"open\"", "access.default_policy"),
            ("[access]\nrule = []", "access: unknown key"),
        ] {
            let err = access(text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err:?}");
        }
    }

    #[test]
    fn a_rule_naming_only_paths_read_two_ways_is_refused_with_one_of_them() {
        let rule = |path: &str| access(&format!("[[access.rules]]\npath = [{path:?}]\npolicy = \"deny\""));
        for (path, why) in [
            ("^/admin;x", "such as `/admin;x`: applications read it both as `/admin` and as `/admin;x`"),
            ("^//admin", "such as `//admin`: applications read it both as `/admin` and as `//admin`"),
            ("^/e%CC%81", "such as `/e%CC%81`: applications read it both as `/e%CC%81` and as `/%C3%A9`"),
            ("^/%C2%ADadmin", "such as `/%C2%ADadmin`: applications read it both as `/%C2%ADadmin` and as `/admin`"),
            (
                "^/%E2%80%8Badmin",
                "such as `/%E2%80%8Badmin`: applications read it both as `/%E2%80%8Badmin` and as `/admin`",
            ),
            ("^/%FF", "such as `/%FF`: applications read it both as `/%FF` and as `/%C3%BF`"),
            (
                r"^/a/\.\./admin",
                "such as `/a/../admin`: the path reads differently to different servers (a dot segment)",
            ),
            (r"^/a/\.\.$", "such as `/a/..`: the path reads differently to different servers (a dot segment)"),
            ("^/semi/a;b", "such as `/semi/a;b`: applications read it both as `/semi/a` and as `/semi/a;b`"),
            ("^/(admin;x|public;y)", "such as `/admin;x`"),
            // Windows drops a segment's trailing dots (review 142).
            (r"^/x\.\./y", "such as `/x../y`: applications read it both as `/x../y` and as `/x/y`"),
        ] {
            let err = rule(path).unwrap_err();
            let want =
                format!("access.rules #1 path: `{path}` only matches paths that forward auth refuses (400), {why}");
            assert!(err.starts_with(&want), "{path}: {err}");
            assert!(err.ends_with("so it would never decide"), "{path}: {err}");
        }
        // A prefix of paths that are answered alike, however it ends, and literals cut inside
        // a character (`/%E6%9D` begins `/東`) or named only by ignoring case (the Kelvin sign
        // of `(?i)k`) are no reason.
        for path in [
            "^/admin",
            r"^/a/\.\.",
            r"^/x\.\.y/",
            r"^/\.well-known/",
            "^/admin(/|$)",
            "^/admin(;.*)?$",
            "^/api/v[0-9]+/",
            "^/%E6%9D%B1",
            "^/%E6%9D",
            "(?i)^/kelvin",
            r"^/x\?debug=1",
            "^/a%20b",
            "^/~alice",
            "/admin;x",
            // Rules that name paths they decide too (review 108).
            "^/a;?b",
            "^/a[;x]b",
            "^/(foo|bar;baz)/x",
            r"^/x/(?:a|;)",
            "^/(public|admin;x)",
        ] {
            assert!(rule(path).is_ok(), "{path}: {:?}", rule(path).err());
        }
    }

    fn any_policy() -> impl Strategy<Value = Policy> {
        prop_oneof![Just(Policy::Bypass), Just(Policy::OneFactor), Just(Policy::TwoFactor), Just(Policy::Deny)]
    }

    fn any_rule() -> impl Strategy<Value = Rule> {
        any_rule_with(vec!["^/a", "^/b", "x"])
    }

    /// A rule with at most three of `patterns` as its paths.
    fn any_rule_with(patterns: Vec<&'static str>) -> impl Strategy<Value = Rule> {
        let hosts = prop::sample::subsequence(vec!["a.example.com", "*.example.com", "b.example.org"], 0..=2);
        let paths = prop::sample::subsequence(patterns, 0..=3);
        let methods = prop::sample::subsequence(vec!["GET", "POST"], 0..=1);
        let groups = prop::sample::subsequence(vec!["ops", "dev"], 0..=1);
        (hosts, paths, methods, groups, any_policy()).prop_map(|(h, p, m, g, policy)| Rule {
            domains: h.iter().map(|s| HostPattern::parse(s).unwrap()).collect(),
            paths: p.iter().map(|s| PathPattern::parse(s).unwrap()).collect(),
            methods: m.iter().map(|s| s.to_string()).collect(),
            networks: Vec::new(),
            users: Vec::new(),
            groups: if policy == Policy::Bypass {
                Vec::new()
            } else {
                g.iter().map(|s| Group::parse(s).unwrap()).collect()
            },
            policy,
            patterns: 0..0,
        })
    }

    fn any_target() -> impl Strategy<Value = (String, String, String)> {
        (
            prop::sample::select(vec!["a.example.com", "c.example.com", "b.example.org", "example.com"]),
            prop::sample::select(vec!["/a", "/b/x", "/c", "/ax?q=x"]),
            prop::sample::select(vec!["GET", "POST", "PUT"]),
        )
            .prop_map(|(h, p, m)| (h.to_string(), p.to_string(), m.to_string()))
    }

    proptest! {
        #[test]
        fn rules_after_the_deciding_one_never_change_the_decision(
            rules in prop::collection::vec(any_rule(), 0..6),
            extra in prop::collection::vec(any_rule(), 0..4),
            default in any_policy(),
            (h, p, m) in any_target(),
            signed_in in any::<bool>(),
        ) {
            let groups = [Group::parse("ops").unwrap()];
            let subject = Subject { user_key: "u", groups: &groups };
            let subject = signed_in.then_some(&subject);
            let t = target(&h, &p, &m);
            let before = Access::new(default, rules.clone()).unwrap();
            let decided = before.decide(&t, subject);
            if let Decision::Policy(_, DecidedBy::Rule(_)) | Decision::SignInFirst(_) = decided {
                let mut longer = rules.clone();
                longer.extend(extra);
                prop_assert_eq!(Access::new(default, longer).unwrap().decide(&t, subject), decided);
            }
        }

        #[test]
        fn a_first_rule_that_matches_everything_decides(
            rules in prop::collection::vec(any_rule(), 0..6),
            policy in any_policy(),
            (h, p, m) in any_target(),
        ) {
            let everything = Rule { domains: vec![], paths: vec![], methods: vec![], networks: vec![], users: vec![], groups: vec![], policy, patterns: 0..0 };
            let mut all = vec![everything];
            all.extend(rules);
            let a = Access::new(Policy::Deny, all).unwrap();
            prop_assert_eq!(a.decide(&target(&h, &p, &m), None), Decision::Policy(policy, DecidedBy::Rule(1)));
        }

        #[test]
        fn a_rule_that_cannot_match_changes_nothing_but_positions(
            rules in prop::collection::vec(any_rule(), 0..6),
            (h, p, m) in any_target(),
        ) {
            let never = Rule { domains: vec![HostPattern::parse("nowhere.invalid").unwrap()], paths: vec![], methods: vec![], networks: vec![], users: vec![], groups: vec![], policy: Policy::Bypass, patterns: 0..0 };
            let t = target(&h, &p, &m);
            let plain = Access::new(Policy::Deny, rules.clone()).unwrap().decide(&t, None);
            let mut with = vec![never];
            with.extend(rules);
            let shifted = Access::new(Policy::Deny, with).unwrap().decide(&t, None);
            let shift = |d: Decision| match d {
                Decision::Policy(p, DecidedBy::Rule(n)) => Decision::Policy(p, DecidedBy::Rule(n + 1)),
                Decision::SignInFirst(DecidedBy::Rule(n)) => Decision::SignInFirst(DecidedBy::Rule(n + 1)),
                other => other,
            };
            prop_assert_eq!(shifted, shift(plain));
        }

        /// The set answers as each rule's patterns asked one by one did: a reading's path
        /// routed (the query too when every match needs it), and the stricter of that and
        /// either spelling when there is a query.
        #[test]
        fn the_patterns_matched_together_decide_as_each_asked_in_turn(
            rules in prop::collection::vec(any_rule_with(vec!["^/a", "^/b", "x", "\\?q=x", "(?i)^/A/", "x$", "^/ax\\?", "\\bx\\b"]), 0..7),
            default in any_policy(),
            host in prop::sample::select(vec!["a.example.com", "c.example.com"]),
            path in prop::sample::select(vec!["/a", "/A/x", "/b/x", "/c", "/ax?q=x", "/c?x", "/b?q=x&y", "/x?a", "/éx", "/é/x?é"]),
            method in prop::sample::select(vec!["GET", "POST"]),
        ) {
            let a = Access::new(default, rules).unwrap();
            let t = target(host, path, method);
            prop_assert_eq!(a.decide(&t, None), one_by_one(&a, &t, false));
            prop_assert_eq!(a.decide_ignoring_case(&t, None), one_by_one(&a, &t, true));
        }
    }

    /// [`Access::decide_with`] for an anonymous request, each rule's patterns asked in turn.
    fn one_by_one(a: &Access, t: &Target<'_>, folded: bool) -> Decision {
        let (whole, path) = (t.path_and_query, t.path_and_query.split_once('?').map_or(t.path_and_query, |(p, _)| p));
        let no_paths = PathsMatched::none();
        let first = |either: bool| {
            for (i, rule) in a.rules.iter().enumerate() {
                let others = Rule { patterns: 0..0, ..rule.clone() }.matches_request(t, &no_paths, Asked::AsRouted);
                let paths = rule.paths.is_empty()
                    || rule.paths.iter().any(|p| {
                        let alone = Alone::new(&p.source).unwrap();
                        match either {
                            true => alone.is_match(whole, folded) || alone.is_match(path, folded),
                            false => alone.is_match(if p.requires_query { whole } else { path }, folded),
                        }
                    });
                if others && paths {
                    let by = DecidedBy::Rule(i + 1);
                    return match rule.groups.is_empty() && rule.users.is_empty() {
                        true => Decision::Policy(rule.policy, by),
                        false => Decision::SignInFirst(by),
                    };
                }
            }
            Decision::Policy(a.default_policy, DecidedBy::Default)
        };
        let routed = first(false);
        if !t.path_and_query.contains('?') {
            return routed;
        }
        let either = first(true);
        if either.strictness() > routed.strictness() {
            either
        } else {
            routed
        }
    }
}
