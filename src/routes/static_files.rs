//! `GET /static/...`: the stylesheet and images, compiled into the binary.

use poem::http::{header, StatusCode};
use poem::web::Path;
use poem::{handler, Response};

const FILES: &[(&str, &str, &[u8])] = &[
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../static/style.css")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../../static/favicon.svg")),
    // The one script (passkeys), allowed only on pages with a passkey button (PASSKEY_CSP).
    ("passkey.js", "text/javascript; charset=utf-8", include_bytes!("../../static/passkey.js")),
];

#[handler]
pub async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => {
            Response::builder().content_type(*mime).header(header::CACHE_CONTROL, "public, max-age=3600").body(*body)
        }
        None => super::error_page(StatusCode::NOT_FOUND),
    }
}

#[cfg(test)]
mod tests {
    /// The relative luminance of `#rrggbb` (WCAG 2.2, "relative luminance").
    fn luminance(hex: &str) -> f64 {
        let channel = |i: usize| {
            let c = f64::from(u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap()) / 255.0;
            if c <= 0.039_28 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * channel(0) + 0.7152 * channel(1) + 0.0722 * channel(2)
    }

    fn contrast(a: &str, b: &str) -> f64 {
        let (a, b) = (luminance(a), luminance(b));
        (a.max(b) + 0.05) / (a.min(b) + 0.05)
    }

    /// The value of the custom property `name` in the style sheet's `:root`.
    fn var<'a>(css: &'a str, name: &str) -> &'a str {
        let at = css.find(&format!("{name}:")).unwrap() + name.len() + 1;
        css[at..].trim_start().split(';').next().unwrap().trim()
    }

    /// WCAG 1.4.11 (3:1 for what shows where a control is and which has focus) and 1.4.3 for
    /// placeholders (4.5:1): field edges, placeholders and focus rings are drawn in colours that
    /// meet them on the card and on the fields' fill (review 209 measured 1.48:1 edges and a
    /// 1.68:1 ring).
    #[test]
    fn field_edges_placeholders_and_focus_rings_contrast_enough() {
        let css = std::str::from_utf8(include_bytes!("../../static/style.css")).unwrap();
        let (field, blue) = (var(css, "--field"), var(css, "--blue"));
        for background in ["#ffffff", "#f8fafc"] {
            assert!(contrast(field, background) >= 4.5, "{field} on {background}");
            assert!(contrast(blue, background) >= 3.0, "{blue} on {background}");
        }
        assert!(css.contains("input::placeholder { color: var(--field); }"));
        for rule in
            ["input:focus { outline: 2px solid var(--blue);", "button:focus-visible { outline: 3px solid var(--blue);"]
        {
            assert!(css.contains(rule), "{rule}");
        }
        assert!(!css.contains("outline: 3px solid rgba"), "a faint ring is back");
        // The field an error is about shows it, as the error is tied to it (review 211).
        assert!(css.contains(r#"input[aria-invalid="true"] { border-color: var(--danger);"#));
        for background in ["#ffffff", "#f8fafc"] {
            let danger = var(css, "--danger");
            assert!(contrast(danger, background) >= 3.0, "{danger} on {background}");
        }
    }

    /// WCAG 1.4.10: reflow loses nothing; the sessions' browser column, which tells a
    /// stranger's session apart, is not hidden on narrow screens (review 209): each row is a
    /// card there with every field labelled, its button last (review 212), and the table keeps
    /// its roles for screen readers.
    #[test]
    fn no_column_of_the_sessions_table_is_hidden_on_narrow_screens() {
        let css = std::str::from_utf8(include_bytes!("../../static/style.css")).unwrap();
        assert!(!css.contains("nth-child(4) { display: none; }"), "a column is hidden");
        let narrow = &css[css.find("@media (max-width: 600px)").expect("a phone's rules")..];
        assert!(narrow.contains(".sessions, .sessions tbody, .sessions tr, .sessions td { display: block; }"));
        assert!(narrow.contains(".sessions td[data-label]::before { content: attr(data-label)"));
        let table = include_str!("../../templates/sessions_table.html");
        assert!(table.starts_with("<div class=\"table-scroll\">"), "wider tables scroll in their box");
        for label in ["Signed in", "Last active", "Address", "Browser"] {
            assert!(table.contains(&format!("role=\"cell\" data-label=\"{label}\"")), "{label}");
        }
        assert!(table.contains("<table class=\"sessions\" role=\"table\">") && table.contains("<tr role=\"row\""));
        let (browser, button) = (table.find("data-label=\"Browser\"").unwrap(), table.find("<button").unwrap());
        assert!(browser < button, "the button after what tells the row apart");
    }
}
