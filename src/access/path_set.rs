//! Every access rule's path patterns matched together: one pass over a reading's text however
//! many patterns there are, given up as soon as a [`CpuAllowance`] is spent, not only between
//! readings.

use std::panic::{RefUnwindSafe, UnwindSafe};

use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::nfa::thompson::{self, pikevm::PikeVM, WhichCaptures};
use regex_automata::util::{pool::Pool, syntax};
use regex_automata::{Input, MatchKind, PatternID, PatternSet};

use super::{one_line, Rule};
use crate::cpu_time::CpuAllowance;

/// Every rule's path patterns, in the rules' order, as one set per way of matching case:
/// judging a reading matches it against all of them in one pass of the text (two when it has a
/// query), however many there are. Asked one by one, each reading of a crafted target against
/// each pattern cost 5.5 s of CPU with 450 patterns (review 156); `cargo bench --bench
/// judging`'s crafted target takes about 30 ms with 453 together, 1.1 s one by one.
#[derive(Debug, Default)]
pub(super) struct PathSet {
    as_written: Compiled,
    folded: Compiled,
    /// Each pattern's [`super::PathPattern::requires_query`], in the sets' order.
    requires_query: Vec<bool>,
}

impl PathSet {
    /// The set of `rules`' patterns, each rule's [`Rule::patterns`] set to its place in it.
    ///
    /// # Errors
    /// When the patterns together pass the compiler's bound, 1 MiB of compiled size per
    /// pattern (each alone was checked against that bound as its rule was read).
    pub(super) fn new(rules: &mut [Rule]) -> Result<Self, String> {
        let mut sources = Vec::new();
        let mut requires_query = Vec::new();
        for rule in rules.iter_mut() {
            rule.patterns = sources.len()..sources.len() + rule.paths.len();
            sources.extend(rule.paths.iter().map(|p| p.source.as_str()));
            requires_query.extend(rule.paths.iter().map(|p| p.requires_query));
        }
        let compile = |folded: bool| {
            Compiled::new(&sources, folded)
                .map_err(|e| format!("access.rules path: the patterns together cannot be compiled ({})", one_line(&e)))
        };
        Ok(PathSet { as_written: compile(false)?, folded: compile(true)?, requires_query })
    }

    /// Which patterns match `path_and_query` (normalised: the query after the first `?`, which
    /// holds no other), and which its path alone; `None` once `allowance` is spent.
    pub(super) fn matched(
        &self,
        path_and_query: &str,
        folded: bool,
        allowance: Option<&CpuAllowance>,
    ) -> Option<PathsMatched<'_>> {
        let set = if folded { &self.folded } else { &self.as_written };
        // The path alone first: when the allowance is spent there, the whole is not matched.
        let path = match path_and_query.split_once('?') {
            Some((path, _)) => Some(set.which(path, allowance)?),
            None => None,
        };
        Some(PathsMatched { whole: set.which(path_and_query, allowance)?, path, requires_query: &self.requires_query })
    }
}

/// The patterns of a [`PathSet`] one path and query matched.
pub(super) struct PathsMatched<'a> {
    /// Matched against the path and query.
    pub(super) whole: PatternSet,
    /// Matched against the path alone; `None` when there is no query.
    pub(super) path: Option<PatternSet>,
    pub(super) requires_query: &'a [bool],
}

impl PathsMatched<'_> {
    /// None matched, for rules without path patterns.
    #[cfg(test)]
    pub(super) fn none() -> Self {
        PathsMatched { whole: PatternSet::new(0), path: None, requires_query: &[] }
    }

    /// Whether any pattern in `patterns` matched, asked as `asked` says.
    pub(super) fn any(&self, patterns: std::ops::Range<usize>, asked: super::Asked) -> bool {
        patterns.into_iter().any(|i| {
            let matched = |set: &PatternSet| PatternID::new(i).is_ok_and(|id| set.contains(id));
            let whole = matched(&self.whole);
            let path = self.path.as_ref().map_or(whole, matched);
            match asked {
                super::Asked::AsRouted if self.requires_query[i] => whole,
                super::Asked::AsRouted => path,
                super::Asked::Either => whole || path,
            }
        })
    }
}

/// Room for the lazy DFA's states, per set and thread judging: hundreds of patterns with
/// bounded repetitions ignoring case (`(?i)(^|/)[a-z]{0,10}secret1[a-z]{0,10}(/|$)`, review
/// 160) make many, and in the regex crate's default 2 MiB it gave up for a slower engine: 5.8
/// ms for a 60-byte target against 450 such patterns, 11.5 µs with this (`cargo bench --bench
/// judging`). Filled only as such rules need it.
const DFA_CACHE_BYTES: usize = 16 << 20;

/// The most states the rules' patterns may make together, in one way of matching case. A state
/// of the lazy DFA the judging walks is a set of these, so they bound what making one costs,
/// and each thread judging needs about 48 bytes per state whatever its text (the DFA's room
/// and working sets). 2,000 patterns of `(?i)(^|/)[a-z]{0,10}secretN[a-z]{0,10}(/|$)` make
/// 237,000; 3,000 of `(?i)[^/?]{1,20}[0-9a-f]{4,12}xN[[:alnum:]]{0,16}` 854,000; review 164's
/// 5,000 of `(?i)[^/?]{1,40}[0-9a-f]{4,30}xN[[:alnum:]]{0,40}` made 3.1 million, and its
/// server 1.3 GB resident after a dozen verifies.
pub(super) const MAX_STATES: usize = 1_000_000;

/// What refusing patterns past [`MAX_STATES`] says of them and of what to do.
pub(super) const TOO_MANY_STATES: &str = "each verify could then spend the whole judging limit; use fewer patterns, or narrower repetitions (`[^/]{1,40}` is 40 copies of its class)";

/// The automaton states of `source` compiled alone without regard to case (as many as with,
/// or more); 0 when it does not compile, which its rule's own checks then say.
pub(super) fn states_alone(source: &str) -> usize {
    thompson::Compiler::new()
        .syntax(syntax::Config::new().case_insensitive(true))
        .configure(thompson::Config::new().nfa_size_limit(Some(1 << 20)).which_captures(WhichCaptures::None))
        .build(source)
        .map_or(0, |nfa| nfa.states().len())
}

/// The patterns of one way of matching case: those without a Unicode word boundary (`\b`,
/// `\B`, `\<`, …) compiled together, and those with one apart, so that a reading with letters
/// outside ASCII sends only the latter to the slower engine ([`Matcher::pikevm`]): with them
/// all together, one `\b` among 3,000 wide patterns sent every accented reading there, each
/// byte costing every pattern's states, with no allowance looked at.
#[derive(Debug, Default)]
struct Compiled {
    /// Each with the place in the rules' order of each of its patterns.
    parts: Vec<(Matcher, Vec<usize>)>,
    /// How many patterns in all.
    patterns: usize,
}

impl Compiled {
    /// `sources` compiled with or without regard to case.
    ///
    /// # Errors
    /// As [`Matcher::new_within`], with the states of both parts counted against [`MAX_STATES`].
    fn new(sources: &[&str], folded: bool) -> Result<Self, String> {
        let worded = |s: &str| {
            regex_syntax::ParserBuilder::new()
                .case_insensitive(folded)
                .build()
                .parse(s)
                .is_ok_and(|hir| hir.properties().look_set().contains_word_unicode())
        };
        let (mut parts, mut states) = (Vec::new(), 0);
        for unicode_words in [false, true] {
            let ids: Vec<usize> = (0..sources.len()).filter(|&i| worded(sources[i]) == unicode_words).collect();
            if ids.is_empty() {
                continue;
            }
            let part: Vec<&str> = ids.iter().map(|&i| sources[i]).collect();
            let matcher = Matcher::new_within(&part, folded, MAX_STATES.saturating_sub(states))?;
            states += matcher.states;
            parts.push((matcher, ids));
        }
        Ok(Compiled { parts, patterns: sources.len() })
    }

    /// Which patterns match somewhere in `haystack`, by their place in the rules' order;
    /// `None` once `allowance` is spent.
    fn which(&self, haystack: &str, allowance: Option<&CpuAllowance>) -> Option<PatternSet> {
        let mut found = PatternSet::new(self.patterns);
        for (matcher, ids) in &self.parts {
            for local in matcher.which(haystack, allowance)?.iter() {
                if let Some(id) = ids.get(local.as_usize()).and_then(|&i| PatternID::new(i).ok()) {
                    found.insert(id);
                }
            }
        }
        Some(found)
    }
}

/// The most a reading's bytes times the states of the patterns with a Unicode word boundary
/// may come to for the slower engine to judge it within an allowance (about 10 ns each at
/// worst, so about 0.3 s; the patterns' states alive at once are most often far fewer): it
/// cannot be stopped inside a reading, so past this the reading is not judged (400).
const SLOWER_ENGINE_WORK: usize = 32 << 20;

/// The patterns of one way of matching case, compiled together.
struct Matcher {
    /// The lazy DFA that judges: walked here a byte at a time, so that judging stops within a
    /// few bytes once the allowance is spent, however costly each byte (review 162: with 3,000
    /// patterns of `(?i)[^/?]{1,20}[0-9a-f]{4,12}xN[[:alnum:]]{0,16}`, one reading of a 2.6 KB
    /// URL cost seconds, and the limit was looked at only between readings). It never gives
    /// up for a slower engine on its own (the regex crate's does when its cache fills too
    /// often): the allowance bounds it.
    dfa: DFA,
    /// For a reading the lazy DFA cannot walk: a Unicode word boundary (`\b`) in a pattern
    /// beside a byte outside ASCII, which it does not decide. `None` when no pattern has one.
    pikevm: Option<PikeVM>,
    caches: Pool<Caches, CachesFn>,
    /// The states of the patterns' automaton.
    states: usize,
}

/// What one thread's judging with a [`Matcher`] writes to.
struct Caches {
    dfa: DfaCache,
    /// Made the first time a reading needs the slower engine: it takes 16 bytes per state of
    /// the patterns' automaton, tens of MB with thousands of wide patterns.
    pikevm: Option<regex_automata::nfa::thompson::pikevm::Cache>,
}

type CachesFn = Box<dyn Fn() -> Caches + Send + Sync + UnwindSafe + RefUnwindSafe>;

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher").field("patterns", &self.dfa.pattern_len()).finish_non_exhaustive()
    }
}

/// How a walk of the lazy DFA ended.
enum Walked {
    /// Every pattern that matches was found.
    Whole,
    /// The allowance was spent first.
    Spent,
    /// A byte it cannot decide ([`Matcher::pikevm`]).
    Quit,
}

impl Matcher {
    /// `sources` compiled together, with or without regard to case, as the regex crate would
    /// (its syntax, Unicode on).
    ///
    /// # Errors
    /// One line when a pattern does not compile, when they pass 1 MiB of compiled size per
    /// pattern, or when they make more than `max_states` states together.
    fn new_within(sources: &[&str], folded: bool, max_states: usize) -> Result<Self, String> {
        let nfa = thompson::Compiler::new()
            .syntax(syntax::Config::new().case_insensitive(folded))
            .configure(
                thompson::Config::new()
                    .nfa_size_limit(Some((1usize << 20).saturating_mul(sources.len().max(1))))
                    // Which patterns match is all judging asks, never where.
                    .which_captures(WhichCaptures::None),
            )
            .build_many(sources)
            .map_err(|e| e.to_string())?;
        if nfa.states().len() > max_states {
            return Err(format!(
                "they make {} states together, more than {max_states}, each thread judging them some {} MB: {TOO_MANY_STATES}",
                nfa.states().len(),
                (nfa.states().len() * 48) >> 20
            ));
        }
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .cache_capacity(DFA_CACHE_BYTES)
                    .skip_cache_capacity_check(true)
                    .minimum_cache_clear_count(None)
                    .unicode_word_boundary(true),
            )
            .build_from_nfa(nfa.clone())
            .map_err(|e| e.to_string())?;
        let states = nfa.states().len();
        let pikevm = match nfa.look_set_any().contains_word_unicode() {
            true => Some(
                PikeVM::builder()
                    .configure(PikeVM::config().match_kind(MatchKind::All))
                    .build_from_nfa(nfa)
                    .map_err(|e| e.to_string())?,
            ),
            false => None,
        };
        let d = dfa.clone();
        let caches: CachesFn = Box::new(move || Caches { dfa: d.create_cache(), pikevm: None });
        Ok(Matcher { dfa, pikevm, caches: Pool::new(caches), states })
    }

    /// Which patterns match somewhere in `haystack`; `None` once `allowance` is spent.
    fn which(&self, haystack: &str, allowance: Option<&CpuAllowance>) -> Option<PatternSet> {
        let mut found = PatternSet::new(self.dfa.pattern_len());
        let mut caches = self.caches.get();
        match self.walk(&mut caches.dfa, haystack.as_bytes(), &mut found, allowance) {
            Walked::Whole => Some(found),
            Walked::Spent => None,
            Walked::Quit => {
                // Only a Unicode word boundary makes the DFA quit, so there is a PikeVM.
                let pikevm = self.pikevm.as_ref()?;
                if allowance.is_some() && haystack.len().saturating_mul(self.states) > SLOWER_ENGINE_WORK {
                    return None;
                }
                found.clear();
                let cache = caches.pikevm.get_or_insert_with(|| pikevm.create_cache());
                pikevm.which_overlapping_matches(cache, &Input::new(haystack), &mut found);
                Some(found)
            }
        }
    }

    /// Walks the lazy DFA over `haystack`, unanchored, adding to `found` every pattern of each
    /// match state it passes (a match is seen a byte late, and at the end past the last byte).
    fn walk(
        &self,
        cache: &mut DfaCache,
        haystack: &[u8],
        found: &mut PatternSet,
        allowance: Option<&CpuAllowance>,
    ) -> Walked {
        let dfa = &self.dfa;
        let record = |cache: &DfaCache, state, found: &mut PatternSet| {
            for i in 0..dfa.match_len(cache, state) {
                found.insert(dfa.match_pattern(cache, state, i));
            }
        };
        let spent = || allowance.is_some_and(CpuAllowance::spent);
        // A state the DFA has not met yet costs up to milliseconds to make with thousands of
        // wide patterns (every pattern's states that the bytes so far leave alive), so the
        // allowance is looked at before each one is made, and every 64 bytes otherwise:
        // known transitions cost nanoseconds, and looking costs about 20 ns (review 164: looked
        // at every 64 bytes only, a 2-byte path cost 800 ms against 5,000 such patterns).
        if spent() {
            return Walked::Spent;
        }
        let Ok(mut state) = dfa.start_state_forward(cache, &Input::new(haystack)) else { return Walked::Quit };
        for (at, &byte) in haystack.iter().enumerate() {
            let known = match state.is_tagged() {
                // A match state's transitions are looked up by `next_state` alone.
                true => None,
                false => Some(dfa.next_state_untagged(cache, state, byte)).filter(|next| !next.is_unknown()),
            };
            state = match known {
                Some(next) if at % 64 != 0 || !spent() => next,
                Some(_) => return Walked::Spent,
                None if spent() => return Walked::Spent,
                // Without a minimum count of cache clears the DFA never gives up: no error here.
                None => match dfa.next_state(cache, state, byte) {
                    Ok(next) => next,
                    Err(_) => return Walked::Quit,
                },
            };
            if state.is_tagged() {
                if state.is_match() {
                    record(cache, state, found);
                    if found.is_full() {
                        return Walked::Whole;
                    }
                } else if state.is_dead() {
                    return Walked::Whole;
                } else if state.is_quit() {
                    return Walked::Quit;
                }
            }
        }
        if spent() {
            return Walked::Spent;
        }
        match dfa.next_eoi_state(cache, state) {
            Ok(end) if end.is_match() => record(cache, end, found),
            Ok(_) => {}
            Err(_) => return Walked::Quit,
        }
        Walked::Whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn which(sources: &[&str], haystack: &str, folded: bool) -> Vec<usize> {
        let m = Matcher::new_within(sources, folded, MAX_STATES).unwrap();
        let found = m.which(haystack, None).unwrap();
        found.iter().map(|id| id.as_usize()).collect()
    }

    /// Each pattern that matches anywhere, whichever others do, at the start, in the middle
    /// and at the end, anchored or not.
    #[test]
    fn every_pattern_that_matches_is_found() {
        let sources = ["^/admin", "x$", "(^|/)secret(/|$)", "^/b", "\\.bak$", "q"];
        assert_eq!(which(&sources, "/admin/secret/x?q", false), [0, 2, 5]);
        assert_eq!(which(&sources, "/y/secret", false), [2]);
        assert_eq!(which(&sources, "/b.bak", false), [3, 4]);
        assert_eq!(which(&sources, "/ADMIN/SECRET", false), Vec::<usize>::new());
        assert_eq!(which(&sources, "/ADMIN/SECRET/X", true), [0, 1, 2]);
        assert_eq!(which(&sources, "", false), Vec::<usize>::new());
        assert_eq!(which(&[], "/admin", false), Vec::<usize>::new());
    }

    /// A Unicode word boundary beside a byte outside ASCII, which the lazy DFA cannot decide,
    /// is decided by the slower engine.
    #[test]
    fn a_unicode_word_boundary_beside_non_ascii_is_decided() {
        let sources = ["\\badmin\\b", "^/b"];
        assert_eq!(which(&sources, "/admin", false), [0]);
        assert_eq!(which(&sources, "/éadmin", false), Vec::<usize>::new());
        assert_eq!(which(&sources, "/b/é/admin", false), [0, 1]);
    }

    /// Patterns that make more states together than the bound are refused, naming how many.
    #[test]
    fn patterns_past_the_bound_of_states_are_refused() {
        let sources: Vec<String> = (0..20).map(|i| format!("(?i)[^/?]{{1,20}}[0-9a-f]{{4,12}}x{i}")).collect();
        let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
        assert!(Matcher::new_within(&sources, true, MAX_STATES).is_ok());
        let err = Matcher::new_within(&sources, true, 1_000).expect_err("refused");
        assert!(err.contains("states together, more than 1000") && err.contains("narrower repetitions"), "{err}");
    }

    /// Patterns with a Unicode word boundary are compiled apart, so an accented reading sends
    /// only them to the slower engine; and a reading too long for it against them is not
    /// judged within an allowance, since it cannot be stopped inside one.
    #[test]
    fn patterns_with_unicode_word_boundaries_go_to_the_slower_engine_apart() {
        let sources = ["^/a", "\\bword\\b", "(?i)^/b"];
        let c = Compiled::new(&sources, false).unwrap();
        assert_eq!(c.parts.len(), 2);
        assert!(c.parts[0].0.pikevm.is_none() && c.parts[1].0.pikevm.is_some());
        let which = |hay: &str| c.which(hay, None).unwrap().iter().map(|id| id.as_usize()).collect::<Vec<_>>();
        assert_eq!(which("/a/é/word"), [0, 1]);
        assert_eq!(which("/B/éword"), [2]);
        let many: Vec<String> = (0..1000).map(|i| format!("\\bword{i}\\b")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let c = Compiled::new(&many, false).unwrap();
        let ample = CpuAllowance::new(std::time::Duration::from_secs(3600));
        let long = format!("/{}/word7", "é".repeat(SLOWER_ENGINE_WORK / c.parts[0].0.states / 2 + 1));
        assert!(c.which(&long, Some(&ample)).is_none(), "too much for the slower engine");
        assert_eq!(c.which(&long, None).map(|f| f.len()), Some(1), "judged without an allowance");
        assert_eq!(c.which("/é/word7", Some(&ample)).map(|f| f.len()), Some(1));
    }

    /// Judging stops once the allowance is spent, within the reading.
    #[test]
    fn a_spent_allowance_stops_the_walk() {
        let m = Matcher::new_within(&["^/admin", "z"], false, MAX_STATES).unwrap();
        let spent = CpuAllowance::new(std::time::Duration::ZERO);
        assert!(m.which("/admin", Some(&spent)).is_none());
        let ample = CpuAllowance::new(std::time::Duration::from_secs(60));
        assert_eq!(m.which("/admin", Some(&ample)).map(|f| f.len()), Some(1));
    }
}
