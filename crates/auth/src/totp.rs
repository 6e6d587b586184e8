//! RFC 6238 TOTP with the parameters every authenticator app uses:
//! HMAC-SHA1, 6 digits, 30-second steps.

use ring::hmac;

pub const STEP: u64 = 30;
pub const DIGITS: u32 = 6;

/// The code for time step `step` (unix time / 30).
pub fn code_at_step(secret: &[u8], step: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let h = tag.as_ref();
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let bin = (u32::from(h[offset] & 0x7f) << 24)
        | (u32::from(h[offset + 1]) << 16)
        | (u32::from(h[offset + 2]) << 8)
        | u32::from(h[offset + 3]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

pub fn code(secret: &[u8], unix_time: u64) -> String {
    code_at_step(secret, unix_time / STEP)
}

/// Checks `given` against the steps around `unix_time` (one step of clock
/// skew either way) and returns the matching step. The caller rejects a
/// step it has already accepted, which makes each code single-use.
pub fn verify(secret: &[u8], given: &str, unix_time: u64) -> Option<u64> {
    let given = given.trim();
    if given.len() != DIGITS as usize || !given.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = unix_time / STEP;
    [now, now.saturating_sub(1), now + 1]
        .into_iter()
        .find(|&step| constant_time_eq(code_at_step(secret, step).as_bytes(), given.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 4648 base32 without padding, as otpauth URIs carry secrets.
pub fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes RFC 4648 base32 (padding and case ignored).
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').chars() {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u32 - 'A' as u32,
            c @ '2'..='7' => c as u32 - '2' as u32 + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// The `otpauth://` URI an authenticator app scans.
pub fn uri(user: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/Gatehouse:{user}?secret={}&issuer=Gatehouse&algorithm=SHA1&digits={DIGITS}&period={STEP}",
        base32(secret)
    )
}

/// The URI as a QR code drawn with Unicode half blocks for a terminal.
pub fn qr_text(data: &str) -> Option<String> {
    let code = qrcode::QrCode::new(data.as_bytes()).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let dark = |x: isize, y: isize| -> bool {
        if x < 0 || y < 0 || x as usize >= width || y as usize >= width {
            return false;
        }
        colors[y as usize * width + x as usize] == qrcode::Color::Dark
    };
    let mut out = String::new();
    let quiet = 2isize;
    let w = width as isize;
    let mut y = -quiet;
    while y < w + quiet {
        for x in -quiet..w + quiet {
            out.push(match (dark(x, y), dark(x, y + 1)) {
                (true, true) => ' ',
                (true, false) => '▄',
                (false, true) => '▀',
                (false, false) => '█',
            });
        }
        out.push('\n');
        y += 2;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238 appendix B, SHA-1 seed, truncated to 6 digits.
    const SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc6238_test_vectors() {
        for (t, want) in [
            (59u64, "287082"),
            (1111111109, "081804"),
            (1111111111, "050471"),
            (1234567890, "005924"),
            (2000000000, "279037"),
            (20000000000, "353130"),
        ] {
            assert_eq!(code(SEED, t), want, "t={t}");
        }
    }

    #[test]
    fn verify_accepts_one_step_of_skew_and_reports_the_step() {
        let t = 1111111109;
        assert_eq!(verify(SEED, "081804", t), Some(t / 30));
        assert_eq!(verify(SEED, &code(SEED, t - 30), t), Some(t / 30 - 1));
        assert_eq!(verify(SEED, &code(SEED, t + 30), t), Some(t / 30 + 1));
        assert_eq!(verify(SEED, &code(SEED, t - 90), t), None);
        assert_eq!(verify(SEED, "12345", t), None);
        assert_eq!(verify(SEED, "abcdef", t), None);
    }

    #[test]
    fn base32_and_uri() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32_decode("MZXW6YTBOI").unwrap(), b"foobar");
        assert_eq!(
            base32_decode(&base32(&[1, 2, 3, 250, 99])).unwrap(),
            vec![1, 2, 3, 250, 99]
        );
        assert!(base32_decode("not base32!").is_none());
        assert!(uri("alice", b"foobar")
            .starts_with("otpauth://totp/Gatehouse:alice?secret=MZXW6YTBOI&issuer=Gatehouse"));
        let qr = qr_text("otpauth://totp/x").unwrap();
        assert!(qr.lines().count() > 10);
    }
}
