//! TOTP (RFC 6238): HMAC-SHA-1, 6 digits, 30-second steps, one step of drift either way
//! (§5.2), as authenticator apps compute by default. `totp-rs` computes and checks codes and
//! says which step matched; refusing a step used before is the store's (`use_totp_step`).

use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

/// Bytes of a new secret: 160 bits, the HMAC-SHA-1 output size RFC 4226 §4 recommends.
pub const SECRET_BYTES: usize = 20;
/// Seconds per time step (RFC 6238 §4: X = 30).
pub const STEP_SECS: u64 = 30;
/// Digits per code.
pub const DIGITS: usize = 6;

/// Why a TOTP secret cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid TOTP secret or label: {0}")]
pub struct TotpError(String);

fn build(secret: &[u8], issuer: Option<&str>, account: &str) -> Result<Totp, TotpError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS as u8)
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .with_secret(secret.to_vec())
        .with_issuer(issuer.map(label))
        .with_account_name(label(account))
        .build()
        .map_err(|e| TotpError(e.to_string()))
}

/// An issuer or account name as the `otpauth://` label allows it (Key Uri Format: no `:`).
fn label(s: &str) -> String {
    s.replace(':', "_")
}

/// A new random secret.
///
/// # Errors
/// [`crate::random::RandomError`] when the random source fails.
pub fn new_secret() -> Result<Zeroizing<Vec<u8>>, crate::random::RandomError> {
    let mut s = Zeroizing::new(vec![0u8; SECRET_BYTES]);
    crate::random::fill(&mut s)?;
    Ok(s)
}

/// The secret as base32 (RFC 4648, no padding), as apps take it typed; wiped when dropped.
pub fn base32(secret: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(totp_rs::Secret::from(secret.to_vec()).to_base32())
}

/// The secret from its base32 form, if it is a valid one of [`SECRET_BYTES`].
pub fn from_base32(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let s = totp_rs::Secret::try_from_base32(text).ok()?;
    (s.as_bytes().len() == SECRET_BYTES).then(|| Zeroizing::new(s.as_bytes().to_vec()))
}

/// The `otpauth://totp/...` URI an app scans (Google Authenticator's Key Uri Format).
///
/// # Errors
/// [`TotpError`] when the label cannot be encoded.
pub fn uri(secret: &[u8], issuer: &str, account: &str) -> Result<Zeroizing<String>, TotpError> {
    build(secret, Some(issuer), account)?.to_url().map(Zeroizing::new).map_err(|e| TotpError(e.to_string()))
}

/// A code as typed or pasted, if it is one: the digits, with spaces, tabs and dashes that
/// apps put in the middle taken out; wiped when dropped (`compact_code`).
pub fn normalise_code(typed: &str) -> Option<Zeroizing<String>> {
    let digits = super::compact_code(typed, |c| c);
    (digits.len() == DIGITS && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// The time step `code` matches at `now_secs` (within one step either way), if any.
pub fn check(secret: &[u8], code: &str, now_secs: u64) -> Option<u64> {
    let code = normalise_code(code)?;
    build(secret, None, "").ok()?.check(&code, now_secs)
}

/// The code for `secret` at `time_secs` (tests and the test suite's "authenticator app").
pub fn code_at(secret: &[u8], time_secs: u64) -> Option<String> {
    Some(build(secret, None, "").ok()?.generate(time_secs).to_string())
}

/// A QR code of `text` as an SVG `data:` URI, for an `<img>` (no script; CSP `img-src data:`).
///
/// # Errors
/// [`TotpError`] when the text is too long for a QR code.
/// Wiped when dropped, as the text it draws (an `otpauth://` URI holds the secret); the
/// QR code's own modules are not (the `qrcode` crate offers no way).
pub fn qr_data_uri(text: &str) -> Result<Zeroizing<String>, TotpError> {
    use base64::Engine;
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| TotpError(e.to_string()))?;
    let svg = Zeroizing::new(
        code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(220, 220).quiet_zone(true).build(),
    );
    const PREFIX: &str = "data:image/svg+xml;base64,";
    // Sized before it is written, so no copy of the secret is left behind by a reallocation.
    let mut uri = Zeroizing::new(String::with_capacity(PREFIX.len() + svg.len().div_ceil(3) * 4));
    uri.push_str(PREFIX);
    base64::engine::general_purpose::STANDARD.encode_string(svg.as_bytes(), &mut uri);
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 (8-digit codes there; their last 6 digits here).
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (t, code) in [(59, "287082"), (1111111109, "081804"), (1111111111, "050471"), (1234567890, "005924")] {
            assert_eq!(code_at(secret, t).unwrap(), code, "t={t}");
            assert_eq!(check(secret, code, t), Some(t / STEP_SECS));
        }
    }

    #[test]
    fn one_step_of_drift_is_accepted_and_two_are_not() {
        let secret = b"12345678901234567890";
        let now = 1_700_000_000;
        let step = now / STEP_SECS;
        let prev = code_at(secret, now - STEP_SECS).unwrap();
        let old = code_at(secret, now - 2 * STEP_SECS).unwrap();
        assert_eq!(check(secret, &prev, now), Some(step - 1));
        assert_eq!(check(secret, &old, now), None);
    }

    #[test]
    fn pasted_codes_with_spaces_or_dashes_are_read() {
        assert_eq!(normalise_code(" 123 456\n").as_deref().map(String::as_str), Some("123456"));
        assert_eq!(normalise_code("123-456").as_deref().map(String::as_str), Some("123456"));
        // Full-width, as an East Asian input method types them, with its wide space.
        assert_eq!(normalise_code("１２３\u{3000}４５６").as_deref().map(String::as_str), Some("123456"));
        for bad in ["12345", "1234567", "12345a", "+12345", "١٢٣٤٥٦"] {
            assert_eq!(normalise_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_normalised_code_is_wiped_when_dropped() {
        // The type is the test: a plain String would leave the code in freed memory.
        let code: Option<Zeroizing<String>> = normalise_code("123 456");
        assert!(code.is_some());
    }

    #[test]
    fn the_uri_carries_the_issuer_and_the_base32_secret() {
        let secret = [1u8; SECRET_BYTES];
        let uri = uri(&secret, "portcullis", "ali:ce").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{}", *uri);
        assert!(uri.contains(&format!("secret={}", *base32(&secret))), "{}", *uri);
        assert!(uri.contains("issuer=portcullis"), "{}", *uri);
        assert_eq!(from_base32(&base32(&secret)).unwrap().as_slice(), &secret);
        assert!(qr_data_uri(&uri).unwrap().starts_with("data:image/svg+xml;base64,"));
    }
}
