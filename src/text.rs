//! Text that people cannot see or that moves the reader: which characters a username may not
//! hold, how attacker-controlled text is escaped for terminals and JSON lines, and how an
//! error and its causes become one line, and how wide text is on a terminal.
//!
//! The set comes from the Unicode property tables (via `icu_properties`), not a hand-picked
//! list: a list misses look-alikes such as U+2060, U+3164 or the tag characters.

use std::borrow::Cow;
use std::fmt::Write as _;

use icu_properties::props::{BidiControl, DefaultIgnorableCodePoint, GeneralCategory};
use icu_properties::{CodePointMapData, CodePointSetData};

/// Whether `c` is invisible, reorders or breaks text, or drives a terminal: a control (Cc:
/// C0, DEL, C1), a format character (Cf, which includes the bidi controls, U+200B..U+200F,
/// U+2060, U+FEFF, U+00AD and the tag characters), a line or paragraph separator (Zl, Zp:
/// U+2028, U+2029), a surrogate or private-use code point, or any Default_Ignorable_Code_Point
/// (such as U+034F, U+115F, U+3164, U+FFA0 and the variation selectors).
///
/// Sources: Unicode UAX #44 (General_Category, Default_Ignorable_Code_Point, Bidi_Control),
/// UTS #39 §3.1 (identifier restrictions) and UTS #55 (source-code spoofing with bidi).
pub fn is_hidden(c: char) -> bool {
    if c.is_ascii() {
        // Fast path for the common case: only C0 and DEL are hidden in ASCII.
        return c.is_ascii_control();
    }
    let gc = CodePointMapData::<GeneralCategory>::new().get(c);
    matches!(
        gc,
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
            | GeneralCategory::Surrogate
            | GeneralCategory::PrivateUse
    ) || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
        || CodePointSetData::new::<BidiControl>().contains(c)
}

/// Whether `c` is a Default_Ignorable_Code_Point (UAX #44): shown as nothing, and dropped by
/// NFKC_Casefold (the soft hyphen U+00AD, U+200B, the variation selectors).
pub fn is_default_ignorable(c: char) -> bool {
    !c.is_ascii() && CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

/// Whether [`printable`] escapes `c`: every [`is_hidden`] character, and every non-ASCII
/// character whose UTS #39 identifier status is not Allowed. That second set holds the blanks
/// that are not format characters (U+2800 Braille blank, U+FFFC, U+1D159, U+16FE4) and the
/// symbols no new username may hold, so a name shown escaped is one the current rules would
/// refuse (see `Username::parse_new`), judged by the same tables.
pub fn needs_escape(c: char) -> bool {
    use unicode_security::GeneralSecurityProfile;
    is_hidden(c) || (!c.is_ascii() && !c.identifier_allowed())
}

/// `s` for a terminal or page: every [`needs_escape`] character written as a Rust-style escape
/// (`\u{2060}`), so a record cannot move the cursor, recolour the terminal, reorder what is
/// shown or pass for another name. A backslash that begins `\u{` is written `\u{5c}`, so a
/// name typed as the text `\u{ff4d}` cannot pass for the escaped `ｍ` either, and
/// [`unprintable`] can undo the escaping exactly. Borrowed when nothing needed escaping.
pub fn printable(s: &str) -> Cow<'_, str> {
    escaped_where(s, |at, c| escaped_by_printable(s, at, c))
}

/// A label its owner chose for their own thing (a passkey's name), for a page: only the
/// [`is_hidden`] characters escaped (and a backslash that begins `\u{`, so [`unprintable`]
/// reads it back exactly). Symbols and emoji stay: they name devices well, and unlike a
/// username, a label is shown to no one else and passes for nothing.
pub fn printable_label(s: &str) -> Cow<'_, str> {
    escaped_where(s, |at, c| is_hidden(c) || begins_escape(s, at, c))
}

/// `n` and the noun that agrees with it: `1 session`, `2 sessions` (`one` and `many` are the
/// singular and plural forms).
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Whether [`printable`] escapes `c`, at byte `at` of `s`: also a nonspacing or enclosing mark
/// past [`crate::domain::MAX_MARK_RUN`] of them in a row, the most a new username may hold
/// (UTS #39 §5.4): a typed name of 59 stacked accents drew over the rows around it in the
/// audit table (found by a review).
fn escaped_by_printable(s: &str, at: usize, c: char) -> bool {
    needs_escape(c)
        || begins_escape(s, at, c)
        || (is_mark(c)
            && s[..at].chars().rev().take_while(|&p| is_mark(p)).nth(crate::domain::MAX_MARK_RUN - 1).is_some())
}

/// Whether `c` is a nonspacing or enclosing mark (General_Category Mn, Me), drawn over the
/// character before it.
pub(crate) fn is_mark(c: char) -> bool {
    !c.is_ascii()
        && matches!(
            CodePointMapData::<GeneralCategory>::new().get(c),
            GeneralCategory::NonspacingMark | GeneralCategory::EnclosingMark
        )
}

/// Whether `c`, at byte `at` of `s`, is a backslash that begins `\u{`: written `\u{5c}` by
/// every escaping here, so typed text cannot pass for an escape and [`unprintable`] reads
/// back exactly what was escaped.
fn begins_escape(s: &str, at: usize, c: char) -> bool {
    c == '\\' && s[at..].starts_with("\\u{")
}

/// A name for an audit table or page, where what an attacker typed is shown: [`printable`],
/// and, when the name reads as plain ASCII but is not (its UTS #39 §4 skeleton is all ASCII:
/// Cyrillic `аdmin` or `сосо`, fullwidth `ａｄｍｉｎ`), every non-ASCII character escaped
/// too (`\u{430}dmin`), so a typed look-alike cannot pass for an ASCII name in a list of
/// them. [`unprintable`] reads it back.
pub fn printable_name(s: &str) -> Cow<'_, str> {
    if s.is_ascii() || !crate::domain::looks_of(s).is_ascii() {
        return printable(s);
    }
    escaped_where(s, |at, c| !c.is_ascii() || escaped_by_printable(s, at, c))
}

/// [`printable_name`] for a cell of a text table (`audit`'s records and summary), where a run
/// of spaces would read as a gap between columns (review 188: `admin` + 15 spaces + `9999`
/// passed for the `admin` row with a count beside it): a space that begins or ends `s` or
/// follows another is written `\u{20}`. [`unprintable`] reads it back, so a name copied from
/// the table finds its records.
pub fn printable_cell(s: &str) -> Cow<'_, str> {
    let shown = printable_name(s);
    let spaced = |at: usize| {
        let b = shown.as_bytes();
        b[at] == b' ' && (at == 0 || at + 1 == b.len() || b[at - 1] == b' ')
    };
    if !(0..shown.len()).any(spaced) {
        return shown;
    }
    let mut out = String::with_capacity(shown.len() + 16);
    for (at, c) in shown.char_indices() {
        if spaced(at) {
            out.push_str("\\u{20}");
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` in double quotes for an error line: a quote, a backslash, `\n`, `\r`, `\t` and
/// `\0` escaped as Rust's `{:?}` writes them, every other [`needs_escape`] character as
/// `\u{…}`, and every other character as it is. Rust's `{:?}` also escapes combining marks
/// (`"ร\u{e49}าน"`), which made Thai and Devanagari names unreadable in error lines.
pub fn quoted(s: &str) -> String {
    quoted_where(s, |_, c| needs_escape(c))
}

/// [`quoted`] for a name someone typed, as the terminal's `username` and `typed` fields show
/// it: also escaped where [`printable_name`] escapes (every non-ASCII letter of a look-alike
/// that reads as ASCII, `"\u{430}dmin"`, and marks past a run's limit), so the terminal shows
/// what the audit table and the admin page show (review 128 saw Cyrillic `аdmin` raw there).
pub fn quoted_name(s: &str) -> String {
    let lookalike = !s.is_ascii() && crate::domain::looks_of(s).is_ascii();
    quoted_where(s, |at, c| (lookalike && !c.is_ascii()) || escaped_by_printable(s, at, c))
}

/// `s` in double quotes, `"`, `\`, `\n`, `\r`, `\t` and `\0` escaped as `{:?}` writes them and
/// each other character for which `escapes(byte offset, character)` holds as `\u{…}`.
fn quoted_where(s: &str, escapes: impl Fn(usize, char) -> bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for (at, c) in s.char_indices() {
        match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\0' => out.extend(c.escape_debug()),
            c if escapes(at, c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` with every [`needs_escape`] character escaped as [`printable`] does, and nothing else:
/// for a last pass over text whose backslashes are already unambiguous (Rust's `Debug`
/// quoting writes a typed backslash `\\`) and which may hold escapes already, a field's
/// `Debug` value or an error line quoting values escaped before. [`printable`] would write
/// those escapes' backslashes again (`\u{5c}u{9b}` for an escaped U+009B).
pub fn escape_hidden(s: &str) -> Cow<'_, str> {
    escaped_where(s, |_, c| needs_escape(c))
}

/// `s` with each character for which `escapes(byte offset, character)` holds written as a
/// Rust-style escape (`\u{2060}`); borrowed when there is none.
fn escaped_where(s: &str, escapes: impl Fn(usize, char) -> bool) -> Cow<'_, str> {
    if !s.char_indices().any(|(at, c)| escapes(at, c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for (at, c) in s.char_indices() {
        if escapes(at, c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The inverse of [`printable`] and [`printable_name`]: each escape they write (`\u{…}` in its
/// exact form, lower-case hex, of a non-ASCII or control character or of a backslash) is turned
/// back into the character;
/// any other text, `\u{41}` or `\u{A}` included, is left as it is. For what an administrator
/// sends back from a page (the admin page puts filter values back escaped), so searching for
/// what is shown finds exactly what it shows.
pub fn unprintable(s: &str) -> Cow<'_, str> {
    if !s.contains("\\u{") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("\\u{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let decoded = after.find('}').filter(|end| (1..=6).contains(end)).and_then(|end| {
            let c = u32::from_str_radix(&after[..end], 16).ok().and_then(char::from_u32)?;
            let canonical = c.escape_unicode().to_string() == rest[at..at + 3 + end + 1];
            // Any non-ASCII character: [`printable_name`] escapes look-alike letters too.
            // A space: [`printable_cell`] writes one of a run so.
            (canonical && (!c.is_ascii() || needs_escape(c) || c == '\\' || c == ' ')).then_some((c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("\\u{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// One serialised JSON text (as serde_json writes it: every character outside ASCII is inside
/// a string) with every [`needs_escape`] character written as a JSON `\uXXXX` escape (a
/// surrogate pair above U+FFFF). serde_json escapes only C0, `"` and `\`; this also covers
/// DEL, C1 (U+0085 is a line break to many readers), U+2028/U+2029 and the bidi controls, so
/// a line stays one line to every Unicode-aware reader (RFC 8259 §7 allows any escape), and
/// the blanks that are not format characters (U+2800, U+FFFC), which the terminal escapes too
/// (review 188: `admin⠀` read as `admin` in the file alone).
pub fn escape_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(needs_escape) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        // ASCII controls outside strings would be JSON whitespace (\t \n \r), which a caller's
        // line framing needs as is; inside strings serde_json has escaped them already.
        if needs_escape(c) && !c.is_ascii_whitespace() {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// How many terminal columns `s` takes: 2 for each wide character (CJK, most emoji), 0 for a
/// combining mark, 1 for the rest (Unicode UAX #11, East Asian Width, via `unicode-width`).
/// For text already passed through [`printable`], which leaves no control character to count.
pub fn columns(s: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(s)
}

/// `s` followed by spaces up to `width` terminal columns ([`columns`]), so the next column of
/// a table starts in line whatever script `s` is in; `s` as it is when it is that wide or
/// wider. Rust's `{:<width$}` counts characters, which pushes a row of wide ones right.
pub fn pad(s: &str, width: usize) -> String {
    let mut out = String::with_capacity(s.len() + width);
    out.push_str(s);
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(columns(s))));
    out
}

/// An error and its sources on one line, `outer: inner: …`. A source whose message the line
/// already ends with is not repeated: an error type that quotes its source in its own message
/// (thiserror's `"…: {0}"` beside `#[source]`) still appears once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_that_reads_as_ascii_but_is_not_is_escaped_and_read_back() {
        use super::{printable_name, unprintable};
        assert_eq!(printable_name("\u{430}dmin"), "\\u{430}dmin", "Cyrillic a");
        assert_eq!(printable_name("\u{441}\u{43e}\u{441}\u{43e}"), "\\u{441}\\u{43e}\\u{441}\\u{43e}", "Cyrillic coco");
        assert_eq!(printable_name("\u{ff41}dmin"), "\\u{ff41}dmin", "fullwidth");
        for kept in ["alice", "jos\u{e9}", "\u{418}\u{432}\u{430}\u{43d}", "\u{5c71}\u{7530}", "a\u{2060}b"] {
            assert_eq!(printable_name(kept), super::printable(kept), "{kept:?}");
        }
        for s in ["\u{430}dmin", "\u{ff41}d\\u{41}", "\\u{430}dmin", "\u{441}\u{43e}\u{1b}"] {
            assert_eq!(unprintable(&printable_name(s)), s, "{s:?}");
        }
    }

    #[test]
    fn quoted_escapes_what_debug_does_but_keeps_every_scripts_marks() {
        use super::quoted;
        for s in ["alice", "a\"b", "a\\u{41}", "a\nb\t\r\0", "x\u{1b}[2J", "ad\u{202e}min"] {
            assert_eq!(quoted(s), format!("{s:?}"), "{s:?}");
        }
        assert_eq!(quoted("\u{e23}\u{e49}\u{e32}\u{e19}"), "\"\u{e23}\u{e49}\u{e32}\u{e19}\"", "Thai, as written");
        assert_eq!(quoted("e\u{301}mile"), "\"e\u{301}mile\"");
        assert_eq!(quoted("\u{ff2e}O"), "\"\\u{ff2e}O\"", "full-width: escaped, as printable shows it");
    }

    #[test]
    fn columns_count_what_a_terminal_shows() {
        assert_eq!(super::columns("alice"), 5);
        assert_eq!(super::columns("山田"), 4, "wide characters take two columns");
        assert_eq!(super::columns("e\u{301}"), 1, "a combining mark takes none");
        assert_eq!(super::pad("山田", 6), "山田  ");
        assert_eq!(super::pad("alice", 3), "alice", "never cut");
    }

    #[test]
    fn unprintable_undoes_printable_and_nothing_else() {
        for s in [
            "alice",
            "\u{ff21}lice",
            "a\u{1b}[2Jb\u{202e}",
            "adm\u{200b}in",
            "x\u{0}y",
            "ok \u{10ffff}",
            // Typed as text: shown so it cannot pass for the escaped character, and undone exactly.
            "\\u{ff4d}6",
            "m2\\u{200b}",
            "\\\\u{41} \\ \\u",
        ] {
            assert_eq!(super::unprintable(&super::printable(s)), s, "{s:?}");
        }
        assert_ne!(super::printable("\\u{ff4d}6"), super::printable("\u{ff4d}6"));
        assert_eq!(super::printable("a\\b \\u"), "a\\b \\u", "a backslash alone is left alone");
        for literal in
            ["\\u{41}", "\\u{}", "\\u{zz}", "\\u{1234567}", "\\u{d800}", "a\\u{", "\\u{200b", "\\u{A}", "\\u{0a}"]
        {
            assert_eq!(super::unprintable(literal), literal, "{literal:?}");
        }
        assert_eq!(super::unprintable("\\u{200b}\\u{41}"), "\u{200b}\\u{41}");
    }

    /// A run of spaces, or a space at either end, cannot pass for a gap between a table's
    /// columns (review 188), and what the cell shows reads back as the name.
    #[test]
    fn a_table_cell_shows_runs_of_spaces_and_reads_back() {
        for (s, shown) in [
            ("ann lee", "ann lee"),
            ("admin   9999", "admin \\u{20}\\u{20}9999"),
            (" admin ", "\\u{20}admin\\u{20}"),
            ("a\u{200b}  b", "a\\u{200b} \\u{20}b"),
            (" ", "\\u{20}"),
        ] {
            assert_eq!(printable_cell(s), shown, "{s:?}");
            assert_eq!(unprintable(&printable_cell(s)), s, "{s:?}");
        }
        assert_eq!(unprintable("\\u{20}"), " ");
    }

    use super::*;

    /// Characters that look like nothing or break lines; each made look-alike usernames or
    /// forged lines before (issue 10, §5 and §6).
    const HIDDEN: &[char] = &[
        '\u{0}',
        '\u{1b}',
        '\u{7f}',
        '\u{85}',
        '\u{9b}',
        '\u{ad}',
        '\u{34f}',
        '\u{61c}',
        '\u{115f}',
        '\u{180e}',
        '\u{200b}',
        '\u{200d}',
        '\u{200e}',
        '\u{2028}',
        '\u{2029}',
        '\u{202e}',
        '\u{2060}',
        '\u{2066}',
        '\u{3164}',
        '\u{fe0f}',
        '\u{feff}',
        '\u{ffa0}',
        '\u{e0001}',
        '\u{e007f}',
    ];

    #[test]
    fn invisible_control_and_reordering_characters_are_hidden_and_letters_are_not() {
        for c in HIDDEN {
            assert!(is_hidden(*c), "U+{:04X}", *c as u32);
        }
        for c in ['a', 'Z', ' ', '~', 'é', 'ü', 'Ａ', 'ß', '中', 'ㄱ', '😀', '\u{301}'] {
            assert!(!is_hidden(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn printable_escapes_every_hidden_character_and_keeps_the_rest() {
        assert_eq!(printable("admin\u{2060}"), "admin\\u{2060}");
        assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\u{a}c");
        assert_eq!(printable("ok ünïcode"), "ok ünïcode");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
        for c in HIDDEN {
            let shown = printable(&format!("x{c}y")).into_owned();
            assert!(!shown.chars().any(is_hidden), "{shown:?}");
        }
    }

    #[test]
    fn printable_escapes_marks_stacked_past_what_a_username_may_hold() {
        // Vietnamese stacks two; four stay; the fifth and later are escaped, and read back.
        assert_eq!(printable("e\u{302}\u{301}"), "e\u{302}\u{301}");
        let four = format!("a{}", "\u{301}".repeat(4));
        assert_eq!(printable(&four), four);
        let zalgo = format!("a{}b", "\u{301}".repeat(59));
        let shown = printable(&zalgo).into_owned();
        assert_eq!(shown, format!("a{}{}b", "\u{301}".repeat(4), "\\u{301}".repeat(55)));
        assert_eq!(unprintable(&shown), zalgo);
    }

    #[test]
    fn printable_escapes_blanks_that_are_not_format_characters() {
        for c in ['\u{2800}', '\u{fffc}', '\u{3164}', '\u{1d159}', '\u{16fe4}', '\u{a0}', '\u{2003}'] {
            assert_eq!(printable(&format!("alice{c}")), format!("alice\\u{{{:x}}}", c as u32), "U+{:04X}", c as u32);
        }
        assert_eq!(printable("Zoë 김민수 Дмитрий 田中"), "Zoë 김민수 Дмитрий 田中");
    }

    #[test]
    fn escaped_json_has_no_raw_line_break_and_reads_back_the_same() {
        let value = "x\u{9b}2J\u{85}\u{2028}\u{2029}\u{7f}\u{202e}\u{e0001}\"\n";
        let json = serde_json::json!({ "username": value }).to_string();
        let escaped = escape_json(&json);
        assert!(escaped.is_ascii(), "{escaped}");
        assert!(escaped.contains("\\u009b") && escaped.contains("\\udb40\\udc01"), "{escaped}");
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["username"], value);
        assert_eq!(escape_json("{\"a\":1}\n"), "{\"a\":1}\n", "framing whitespace stays");
        // The blanks the terminal escapes, as it does (review 188); letters of every script stay.
        let json = serde_json::json!({ "username": "admin\u{2800}\u{1d159}\u{fffc} Zoë 김민수" }).to_string();
        assert_eq!(escape_json(&json), "{\"username\":\"admin\\u2800\\ud834\\udd59\\ufffc Zoë 김민수\"}");
    }

    #[test]
    fn an_error_chain_is_one_line_and_a_cause_quoted_by_its_wrapper_appears_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("disk full")]
        struct Io;
        #[derive(Debug, thiserror::Error)]
        #[error("store error: {0}")]
        struct Quoting(#[source] Io);
        #[derive(Debug, thiserror::Error)]
        #[error("could not record")]
        struct Plain(#[source] Quoting);
        assert_eq!(error_chain(&Quoting(Io)), "store error: disk full");
        assert_eq!(error_chain(&Plain(Quoting(Io))), "could not record: store error: disk full");
        let e = anyhow::Error::new(Quoting(Io)).context("cannot copy");
        assert_eq!(error_chain(e.as_ref()), "cannot copy: store error: disk full");
    }
}
