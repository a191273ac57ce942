//! Domain types that can only hold checked values: parse, don't validate.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

use crate::text::is_hidden;

/// Longest username accepted, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;

/// A username as a person typed it (trimmed, NFKC) and its key: the same text case-folded,
/// so `Alice`, ` alice ` and `ＡＬＩＣＥ` (full-width) are one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Username {
    display: String,
    key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("the username is empty")]
    Empty,
    #[error("the username is longer than {MAX_USERNAME_CHARS} characters")]
    TooLong,
    #[error("the username contains invisible, control, bidi or line-break characters")]
    ControlCharacter,
    #[error(
        "the username contains U+{0:04X}, which is not a letter, digit or mark allowed in names (Unicode UTS #39)"
    )]
    NotAnIdentifierCharacter(u32),
    #[error(
        "the username mixes letters of different scripts (such as Latin and Cyrillic), which can pass for another name"
    )]
    MixedScripts,
    #[error("the username has two or more spaces in a row, which a page shows as one")]
    SpaceRun,
    #[error(
        "the username stacks more than {MAX_MARK_RUN} marks on one character, or one mark twice, which can draw over other text (Unicode UTS #39 section 5.4)"
    )]
    MarkRun,
}

/// Most nonspacing marks one character may carry in a new username (UTS #39 §5.4).
pub const MAX_MARK_RUN: usize = 4;

/// Whether `display`, decomposed (NFD), has a run of more than [`MAX_MARK_RUN`] nonspacing
/// or enclosing marks (General_Category Mn, Me), or the same mark twice in one run: the
/// optional checks of Unicode UTS #39 §5.4, against marks stacked to draw over the lines
/// around a name.
pub(crate) fn has_mark_run(display: &str) -> bool {
    let mut run: Vec<char> = Vec::new();
    for c in display.nfd() {
        if crate::text::is_mark(c) {
            if run.contains(&c) || run.len() == MAX_MARK_RUN {
                return true;
            }
            run.push(c);
        } else {
            run.clear();
        }
    }
    false
}

impl Username {
    pub fn parse(input: &str) -> Result<Self, UsernameError> {
        let display: String = input.nfkc().collect::<String>().trim().to_string();
        if display.is_empty() {
            return Err(UsernameError::Empty);
        }
        if display.chars().count() > MAX_USERNAME_CHARS {
            return Err(UsernameError::TooLong);
        }
        // Invisible characters make a second user who reads as the first (`alice` + U+2060):
        // refused by Unicode property, not by a list (UTS #39 §3.1; see `text::is_hidden`).
        if display.chars().any(is_hidden) {
            return Err(UsernameError::ControlCharacter);
        }
        let key = normalise_key(&display);
        Ok(Username { display, key })
    }

    /// [`Username::parse`] plus the rules for a name being created (Unicode UTS #39 §3.1 and
    /// §5): every non-ASCII character must have identifier status Allowed (this refuses blanks
    /// that are not format characters, such as U+2800, U+FFFC or U+1D159), all letters must be
    /// of one script (Han with Hiragana/Katakana or Hangul counts as one, as UTS #39 §5.1
    /// says), no run of two spaces may appear, and no character may carry more than
    /// [`MAX_MARK_RUN`] marks or one mark twice (§5.4). Sign-in keeps using [`Username::parse`], so
    /// names created before these rules keep working.
    ///
    /// # Errors
    /// [`UsernameError`] naming the rule broken.
    pub fn parse_new(input: &str) -> Result<Self, UsernameError> {
        use unicode_security::{GeneralSecurityProfile, MixedScript};
        let username = Username::parse(input)?;
        if let Some(c) = username.display.chars().find(|c| !c.is_ascii() && !c.identifier_allowed()) {
            return Err(UsernameError::NotAnIdentifierCharacter(u32::from(c)));
        }
        if !username.display.as_str().is_single_script() {
            return Err(UsernameError::MixedScripts);
        }
        if username.display.contains("  ") {
            return Err(UsernameError::SpaceRun);
        }
        if has_mark_run(&username.display) {
            return Err(UsernameError::MarkRun);
        }
        Ok(username)
    }

    /// What the name looks like ([`Looks`]): two names that look the same can pass for each
    /// other (`admin` and Cyrillic `аdmin`, `rn` and `m`, `aIice` and `alice`, `a  b` and
    /// `a b`, Hebrew `2דוד` and `דוד2`).
    pub fn looks(&self) -> Looks {
        Looks::of(&self.display)
    }

    /// Rebuilds a username from a stored record (already checked when it was created).
    pub fn from_stored(display: String, key: String) -> Self {
        Username { display, key }
    }

    /// The name as the person wrote it.
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The case-folded, normalised form used as the store key and for counting.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The counting key for any text typed as a username, even text that is not a valid username:
/// trimmed, NFKC, lower-cased, NFKC again (lower-casing can de-normalise). U+0000 becomes
/// U+FFFD: no valid username holds a control character, so no user's key changes, and every
/// engine can look the key up (PostgreSQL's text cannot hold U+0000, and a lookup that the
/// database refuses would be a fault, 503, instead of an unknown user).
pub fn normalise_key(input: &str) -> String {
    let nfkc: String = input.nfkc().collect();
    nfkc.trim().to_lowercase().nfkc().map(|c| if c == '\0' { char::REPLACEMENT_CHARACTER } else { c }).collect()
}

/// What a name as written looks like: the UTS #39 §4 confusable skeleton of the name as
/// written (so a capital `I` still reads as `l`), case-folded as keys are, and skeletoned again
/// (so case-folding cannot make a new confusable), with runs of whitespace read as one space.
pub fn looks_of(display: &str) -> String {
    let written: String = unicode_security::skeleton(display).collect();
    let looks: String = unicode_security::skeleton(&normalise_key(&written)).collect();
    looks.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a name looks like drawn in a left-to-right paragraph and in a right-to-left one: its
/// bidi skeletons (Unicode UTS #39 §4.1, `bidiSkeleton`, from Unicode 15.1), [`looks_of`] the
/// characters in the order the Unicode Bidirectional Algorithm (UAX #9) draws them. Two names
/// that share either can pass for each other on a page or terminal though their characters
/// differ in order: Hebrew `דוד2` and `2דוד` are both drawn `2דוד` in a left-to-right line.
/// Bracket mirroring (UAX #9 rule L4) is not applied: `unicode-bidi` does not give it, and a
/// name differing only in a mirrored bracket is still told apart by [`looks_of`].
pub fn bidi_looks_of(display: &str) -> [String; 2] {
    use unicode_bidi::{BidiInfo, Level};
    [Level::ltr(), Level::rtl()].map(|direction| {
        let info = BidiInfo::new(display, Some(direction));
        let visual: String =
            info.paragraphs.iter().map(|para| info.reorder_line(para, para.range.clone()).into_owned()).collect();
        looks_of(&visual)
    })
}

/// How a name looks, written plainly and drawn in either direction: its confusable skeleton
/// ([`looks_of`]) and its bidi skeletons ([`bidi_looks_of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Looks {
    plain: String,
    drawn: [String; 2],
}

impl Looks {
    /// The looks of `display`, a name as written.
    pub fn of(display: &str) -> Self {
        Looks { plain: looks_of(display), drawn: bidi_looks_of(display) }
    }

    /// Whether two names can pass for each other: the same confusable skeleton (UTS #39 §4), or
    /// drawn alike in a left-to-right or in a right-to-left line (§4.1).
    pub fn alike(&self, other: &Looks) -> bool {
        self.plain == other.plain || self.drawn[0] == other.drawn[0] || self.drawn[1] == other.drawn[1]
    }
}

/// Longest group name accepted, in characters.
pub const MAX_GROUP_CHARS: usize = 64;

/// The group every administrator is in without being listed (SPEC.md, "Gating other
/// applications").
pub const ADMINS_GROUP: &str = "admins";

/// A group name: 1 to [`MAX_GROUP_CHARS`] of ASCII lower-case letters, digits, `-`, `_` and
/// `.`, starting with a letter or digit. Upper-case letters are lowered on parse, so `Ops` and
/// `ops` are one group. The alphabet is narrow on purpose: groups travel to applications in
/// the comma-separated `Remote-Groups` header (so no comma, space or non-ASCII byte), and are
/// written in access rules and on command lines where a look-alike would be a hole.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Group(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("the group name is empty")]
    Empty,
    #[error("the group name is longer than {MAX_GROUP_CHARS} characters")]
    TooLong,
    /// The name holds a character outside the alphabet, or starts with `-`, `_` or `.`:
    /// `culprit` says which, by code point (a Cyrillic `о` in `оps` looks like the `o` of a
    /// name the rule allows, so the name as typed shows nothing wrong).
    #[error("a group name holds only a-z, 0-9, `-`, `_` and `.`, and starts with a letter or digit ({culprit})")]
    BadCharacter { culprit: String },
}

impl Group {
    /// Parses a group name (see the type's docs for the rule).
    ///
    /// # Errors
    /// [`GroupError`] naming the rule broken.
    pub fn parse(input: &str) -> Result<Self, GroupError> {
        let name = input.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(GroupError::Empty);
        }
        if name.len() > MAX_GROUP_CHARS {
            return Err(GroupError::TooLong);
        }
        if let Some(c) = name.chars().find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))) {
            return Err(GroupError::BadCharacter { culprit: format!("this one holds U+{:04X}", u32::from(c)) });
        }
        // Past the check above, a name that does not start with a letter or digit starts with
        // one of `-`, `_` and `.`, which print as themselves.
        if let Some(first) = name.chars().next().filter(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit())) {
            return Err(GroupError::BadCharacter { culprit: format!("this one starts with `{first}`") });
        }
        Ok(Group(name))
    }

    /// The `admins` group.
    pub fn admins() -> Self {
        Group(ADMINS_GROUP.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Group {
    type Error = GroupError;
    fn try_from(s: String) -> Result<Self, GroupError> {
        Group::parse(&s)
    }
}

impl From<Group> for String {
    fn from(g: Group) -> String {
        g.0
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_width_and_spaces_do_not_make_a_new_user() {
        let a = Username::parse("Alice").unwrap();
        let b = Username::parse("  alice ").unwrap();
        let c = Username::parse("ＡＬＩＣＥ").unwrap();
        assert_eq!(a.key(), "alice");
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key(), c.key());
        assert_eq!(a.as_str(), "Alice");
    }

    #[test]
    fn empty_long_and_control_characters_are_refused() {
        assert_eq!(Username::parse("   "), Err(UsernameError::Empty));
        assert_eq!(Username::parse(&"x".repeat(65)), Err(UsernameError::TooLong));
        assert!(Username::parse(&"x".repeat(64)).is_ok());
        assert_eq!(Username::parse("a\nb"), Err(UsernameError::ControlCharacter));
        assert_eq!(Username::parse("a\u{1b}[31mb"), Err(UsernameError::ControlCharacter));
        assert_eq!(Username::parse("adm\u{202e}in"), Err(UsernameError::ControlCharacter));
    }

    #[test]
    fn invisible_characters_do_not_make_a_look_alike_user() {
        // Each of these was accepted as a new user that reads as `alice` (issue 10, §5).
        for c in ['\u{200b}', '\u{2060}', '\u{feff}', '\u{ad}', '\u{180e}', '\u{34f}', '\u{3164}', '\u{e0001}'] {
            for name in [format!("alice{c}"), format!("al{c}ice"), format!("{c}alice")] {
                assert_eq!(Username::parse(&name), Err(UsernameError::ControlCharacter), "U+{:04X}", c as u32);
            }
        }
        // Line separators are whitespace: trimmed around a name, refused inside one.
        assert_eq!(Username::parse("al\u{2028}ice"), Err(UsernameError::ControlCharacter));
        assert!(Username::parse("Zoë Ångström").is_ok());
        assert!(Username::parse("김민수").is_ok());
    }

    #[test]
    fn new_names_refuse_blank_symbols_mixed_scripts_and_space_runs() {
        // Each was accepted as a new user that reads as `alice` or `admin` (task F, item 2).
        for c in ['\u{2800}', '\u{1d159}', '\u{fffc}', '\u{16fe4}'] {
            assert_eq!(
                Username::parse_new(&format!("alice{c}")),
                Err(UsernameError::NotAnIdentifierCharacter(c as u32)),
                "U+{:04X}",
                c as u32
            );
        }
        assert_eq!(Username::parse_new("\u{430}dmin"), Err(UsernameError::MixedScripts));
        assert_eq!(Username::parse_new("a  b"), Err(UsernameError::SpaceRun));
        for good in ["alice", "Zoë Ångström", "김민수", "田中さくら", "jean-luc.picard_2", "Дмитрий", "a b"]
        {
            assert!(Username::parse_new(good).is_ok(), "{good}");
        }
        // Sign-in still reads a name stored before these rules.
        assert!(Username::parse("\u{430}dmin").is_ok());
    }

    #[test]
    fn group_names_are_lowered_and_hold_only_a_narrow_ascii_alphabet() {
        assert_eq!(Group::parse(" Ops ").unwrap().as_str(), "ops");
        for good in ["admins", "team-a", "x_1.dev", "9lives"] {
            assert!(Group::parse(good).is_ok(), "{good}");
        }
        assert_eq!(Group::parse(""), Err(GroupError::Empty));
        assert_eq!(Group::parse(&"g".repeat(65)), Err(GroupError::TooLong));
        for bad in ["a,b", "a b", "-x", ".x", "gr\u{f6}up", "a\nb", "\u{430}dmins", "a;b"] {
            assert!(matches!(Group::parse(bad), Err(GroupError::BadCharacter { .. })), "{bad:?}");
        }
        // The look-alike is named by code point: the name as typed looks allowed.
        let said = Group::parse("\u{43e}ps").unwrap_err().to_string();
        assert!(said.ends_with("(this one holds U+043E)"), "{said}");
        assert!(Group::parse("-x").unwrap_err().to_string().ends_with("(this one starts with `-`)"));
        let back: Group = serde_json::from_str("\"ops\"").unwrap();
        assert_eq!(back, Group::parse("ops").unwrap());
        assert!(serde_json::from_str::<Group>("\"a,b\"").is_err());
    }

    #[test]
    fn look_alike_names_share_a_skeleton_and_different_names_do_not() {
        let looks = |s: &str| looks_of(Username::parse(s).unwrap().as_str());
        assert_eq!(looks("admin"), looks("\u{430}dmin"));
        assert_eq!(looks("admin"), looks("adrnin"));
        assert_eq!(looks("a b"), looks_of("a  b"));
        assert_eq!(looks("Alice"), looks("alice"));
        assert_eq!(looks("aIice"), looks("alice"), "a capital I reads as l");
        assert_eq!(looks("paypaI"), looks("paypal"));
        assert_ne!(looks("alice"), looks("alicia"));
    }

    #[test]
    fn stacked_marks_are_refused_and_ordinary_ones_kept() {
        for good in [
            "jos\u{e9}",
            "e\u{301}mile",
            "Vi\u{1ec7}t",
            "\u{e2a}\u{e49}\u{e21}",
            "\u{928}\u{92e}\u{938}\u{94d}\u{924}\u{947}",
        ] {
            assert!(Username::parse_new(good).is_ok(), "{good:?}");
        }
        let zalgo = "zalgo\u{301}\u{302}\u{303}\u{304}\u{306}";
        assert_eq!(Username::parse_new(zalgo), Err(UsernameError::MarkRun));
        assert_eq!(Username::parse_new("a\u{301}\u{301}"), Err(UsernameError::MarkRun), "one mark twice");
        assert!(Username::parse_new("a\u{301}\u{302}\u{303}\u{304}").is_ok(), "four are allowed");
        assert!(Username::parse(zalgo).is_ok(), "an existing name still signs in");
    }

    #[test]
    fn names_drawn_alike_share_a_bidi_skeleton_and_others_do_not() {
        // In a left-to-right line a digit after Hebrew letters is drawn before them.
        assert_eq!(bidi_looks_of("\u{5d3}\u{5d5}\u{5d3}2")[0], bidi_looks_of("2\u{5d3}\u{5d5}\u{5d3}")[0]);
        assert_ne!(
            looks_of("\u{5d3}\u{5d5}\u{5d3}2"),
            looks_of("2\u{5d3}\u{5d5}\u{5d3}"),
            "the plain skeletons differ"
        );
        // And Latin in a right-to-left line: `ab 1` is drawn there as `1 ab`.
        assert_eq!(bidi_looks_of("ab 1")[1], bidi_looks_of("1 ab")[1]);
        assert_ne!(bidi_looks_of("ab 1")[0], bidi_looks_of("1 ab")[0]);
        assert_ne!(bidi_looks_of("\u{5d3}\u{5d5}\u{5d3}1"), bidi_looks_of("\u{5d3}\u{5d5}\u{5d3}2"));
        assert_eq!(bidi_looks_of("alice")[0], looks_of("alice"), "a left-to-right name is drawn as written");
    }
}
