//! Request and response signatures, body digests and the `x-ots-date`
//! clock format.
//!
//! V2 (HMAC-SHA1 over the action path, the method and every `x-ots-*`
//! header sent) is what the sink signs with; V4 (HMAC-SHA256 with a key
//! derived from the secret, the day and the region) is here too, because
//! the Python and Java SDKs use it and the response signature of a V4
//! client is keyed with the derived key. Test vectors: the reference's §3–§5.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};

/// `Base64(MD5(body))`, the value of `x-ots-contentmd5`.
pub fn content_md5(body: &[u8]) -> String {
    BASE64.encode(Md5::digest(body))
}

/// The V2 string to sign: `/<action>\nPOST\n\n` then each `x-ots-*`
/// header except the signatures, sorted by lowercase name, as
/// `name:trimmed value\n`.
pub fn v2_string_to_sign<'a>(
    action: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut canonical: Vec<(String, &str)> = headers
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim()))
        .filter(|(name, _)| {
            name.starts_with("x-ots-") && name != "x-ots-signature" && name != "x-ots-signaturev4"
        })
        .collect();
    canonical.sort();
    let mut out = format!("/{action}\nPOST\n\n");
    for (name, value) in canonical {
        out.push_str(&name);
        out.push(':');
        out.push_str(value);
        out.push('\n');
    }
    out
}

/// `x-ots-signature`: `Base64(HMAC-SHA1(secret, string to sign))`.
pub fn v2_signature<'a>(
    secret: &str,
    action: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    hmac_sha1_base64(
        secret.as_bytes(),
        v2_string_to_sign(action, headers).as_bytes(),
    )
}

/// The V4 signing key `K` (a Base64 string, used as text): HMAC-SHA256
/// chained over `"aliyun_v4" + secret`, the day (`yyyyMMdd`), the region,
/// `"ots"` and `"aliyun_v4_request"`.
pub fn v4_signing_key(secret: &str, sign_date: &str, region: &str) -> String {
    let mut key = hmac_sha256(
        format!("aliyun_v4{secret}").as_bytes(),
        sign_date.as_bytes(),
    );
    for part in [region, "ots", "aliyun_v4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    BASE64.encode(key)
}

/// `x-ots-signaturev4`: `Base64(HMAC-SHA256(K, V2 string to sign + "ots"))`;
/// the headers must include `x-ots-signdate` and `x-ots-signregion`.
pub fn v4_signature<'a>(
    signing_key: &str,
    action: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut text = v2_string_to_sign(action, headers);
    text.push_str("ots");
    BASE64.encode(hmac_sha256(signing_key.as_bytes(), text.as_bytes()))
}

/// The signature part of a response's `authorization: OTS <id>:<sig>`:
/// each `x-ots-*` response header sorted by lowercase name as
/// `name:value\n`, then `/<action>`, HMAC-SHA1 with `key` (the secret for
/// V2, the derived key for V4).
pub fn response_signature<'a>(
    key: &str,
    action: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut canonical: Vec<(String, &str)> = headers
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim()))
        .filter(|(name, _)| name.starts_with("x-ots-"))
        .collect();
    canonical.sort();
    let mut text = String::new();
    for (name, value) in canonical {
        text.push_str(&name);
        text.push(':');
        text.push_str(value);
        text.push('\n');
    }
    text.push('/');
    text.push_str(action);
    hmac_sha1_base64(key.as_bytes(), text.as_bytes())
}

fn hmac_sha1_base64(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    BASE64.encode(mac.finalize().into_bytes())
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Compares two signatures in time independent of where they differ.
pub fn same_signature(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `x-ots-date` for `unix_ms` milliseconds since the epoch:
/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn ots_date(unix_ms: i64) -> String {
    let (days, ms_of_day) = (
        unix_ms.div_euclid(86_400_000),
        unix_ms.rem_euclid(86_400_000),
    );
    let (y, m, d) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms_of_day % 1000
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS(.fraction)?Z` (the service replies with
/// microseconds) into milliseconds since the epoch.
pub fn parse_ots_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let ms = match &text[19..text.len() - 1] {
        "" => 0,
        frac => {
            let digits = frac.strip_prefix('.')?;
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let mut ms = 0;
            for (i, c) in digits.bytes().take(3).enumerate() {
                ms += i64::from(c - b'0') * [100, 10, 1][i];
            }
            ms
        }
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

/// `yyyyMMdd` of a time, for V4's `x-ots-signdate`.
pub fn sign_date(unix_ms: i64) -> String {
    let (y, m, d) = civil_from_days(unix_ms.div_euclid(86_400_000));
    format!("{y:04}{m:02}{d:02}")
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADERS: [(&str, &str); 5] = [
        ("x-ots-date", "2024-01-02T03:04:05.000Z"),
        ("x-ots-apiversion", "2015-12-31"),
        ("x-ots-accesskeyid", "testAccessKeyId"),
        ("x-ots-instancename", "myinst"),
        ("x-ots-contentmd5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
    ];

    #[test]
    fn the_md5_of_an_empty_body_is_the_reference_value() {
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }

    #[test]
    fn the_v2_signature_matches_the_reference_vector() {
        assert_eq!(
            v2_string_to_sign("PutTimeseriesData", HEADERS),
            "/PutTimeseriesData\nPOST\n\nx-ots-accesskeyid:testAccessKeyId\nx-ots-apiversion:2015-12-31\nx-ots-contentmd5:1B2M2Y8AsgTpgAmY7PhCfg==\nx-ots-date:2024-01-02T03:04:05.000Z\nx-ots-instancename:myinst\n"
        );
        assert_eq!(
            v2_signature("testAccessKeySecret", "PutTimeseriesData", HEADERS),
            "fv7WInmTIE52SBGFfxFtD7uLWjk="
        );
    }

    #[test]
    fn v2_signs_only_ots_headers_other_than_the_signatures_case_insensitively() {
        let mut headers = HEADERS.to_vec();
        headers.push(("User-Agent", "weir"));
        headers.push(("x-ots-signature", "ignored"));
        headers.push(("X-OTS-SignatureV4", "ignored"));
        assert_eq!(
            v2_signature("testAccessKeySecret", "PutTimeseriesData", headers),
            "fv7WInmTIE52SBGFfxFtD7uLWjk="
        );
        let mut changed = HEADERS.to_vec();
        changed[3].1 = "otherinst";
        assert_ne!(
            v2_signature("testAccessKeySecret", "PutTimeseriesData", changed),
            "fv7WInmTIE52SBGFfxFtD7uLWjk="
        );
    }

    #[test]
    fn the_v4_key_and_signature_match_the_reference_vectors() {
        let key = v4_signing_key("testAccessKeySecret", "20240102", "cn-hangzhou");
        assert_eq!(key, "V5zuYdJazNI+aX/e6DuhJmwlV2ksvzlGiM6xX8TSNaE=");
        let mut headers = HEADERS.to_vec();
        headers.push(("x-ots-signdate", "20240102"));
        headers.push(("x-ots-signregion", "cn-hangzhou"));
        assert_eq!(
            v4_signature(&key, "PutTimeseriesData", headers),
            "KIGzSKwAp3SlUExowRoLpr+nwplnYo4ma4MGlF9VnZs="
        );
    }

    #[test]
    fn the_response_signature_matches_the_reference_vector() {
        let headers = [
            ("x-ots-contentmd5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
            ("x-ots-requestid", "req-1"),
            ("x-ots-date", "2024-01-02T03:04:05.000Z"),
            ("x-ots-contenttype", "protocol buffer"),
            ("content-length", "0"),
        ];
        assert_eq!(
            response_signature("testAccessKeySecret", "PutTimeseriesData", headers),
            "H9man9pJtVNIKrxpHH4Ek70buJY="
        );
    }

    #[test]
    fn dates_are_formatted_with_milliseconds_and_parsed_with_any_fraction() {
        // 2024-01-02T03:04:05.000Z
        let t = 1_704_164_645_000;
        assert_eq!(ots_date(t), "2024-01-02T03:04:05.000Z");
        assert_eq!(ots_date(t + 7), "2024-01-02T03:04:05.007Z");
        assert_eq!(ots_date(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ots_date(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(sign_date(t), "20240102");
        assert_eq!(parse_ots_date("2024-01-02T03:04:05.000Z"), Some(t));
        assert_eq!(parse_ots_date("2024-01-02T03:04:05.680616Z"), Some(t + 680));
        assert_eq!(parse_ots_date("2024-01-02T03:04:05Z"), Some(t));
        for bad in [
            "2024-01-02 03:04:05.000Z",
            "2024-01-02T03:04:05.000",
            "2024-13-02T03:04:05.000Z",
            "2024-01-02T03:04:05.Z",
            "yesterday",
        ] {
            assert_eq!(parse_ots_date(bad), None, "{bad}");
        }
        for t in [0, 1, 86_399_999, 1_704_164_645_123, 4_102_444_800_000] {
            assert_eq!(parse_ots_date(&ots_date(t)), Some(t));
        }
    }
}
