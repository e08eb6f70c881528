//! Signatures and digests as the service computes them, and its clock
//! format. Independent of weir's own implementation on purpose.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use md5::Digest as _;

pub fn md5_base64(body: &[u8]) -> String {
    BASE64.encode(md5::Md5::digest(body))
}

fn hmac_sha1(key: &[u8], text: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
    mac.update(text);
    mac.finalize().into_bytes().to_vec()
}

fn hmac_sha256(key: &[u8], text: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(text);
    mac.finalize().into_bytes().to_vec()
}

/// The canonical `x-ots-*` lines of a request: every received `x-ots-*`
/// header except the two signature headers, lowercased, sorted.
fn canonical_request(action: &str, headers: &[(String, String)]) -> String {
    let mut lines: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| {
            n.starts_with("x-ots-") && n != "x-ots-signature" && n != "x-ots-signaturev4"
        })
        .map(|(n, v)| (n.clone(), v.trim().to_owned()))
        .collect();
    lines.sort();
    let mut text = format!("/{action}\nPOST\n\n");
    for (n, v) in lines {
        text.push_str(&format!("{n}:{v}\n"));
    }
    text
}

pub fn v2(secret: &str, action: &str, headers: &[(String, String)]) -> String {
    BASE64.encode(hmac_sha1(
        secret.as_bytes(),
        canonical_request(action, headers).as_bytes(),
    ))
}

pub fn v4_key(secret: &str, date: &str, region: &str) -> String {
    let mut k = hmac_sha256(format!("aliyun_v4{secret}").as_bytes(), date.as_bytes());
    for part in [region, "ots", "aliyun_v4_request"] {
        k = hmac_sha256(&k, part.as_bytes());
    }
    BASE64.encode(k)
}

pub fn v4(key: &str, action: &str, headers: &[(String, String)]) -> String {
    let text = canonical_request(action, headers) + "ots";
    BASE64.encode(hmac_sha256(key.as_bytes(), text.as_bytes()))
}

/// `authorization` of a response: HMAC-SHA1 over its `x-ots-*` headers
/// and `/<action>`.
pub fn response(key: &str, action: &str, headers: &[(String, String)]) -> String {
    let mut lines: Vec<&(String, String)> = headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-ots-"))
        .collect();
    lines.sort();
    let mut text = String::new();
    for (n, v) in lines {
        text.push_str(&format!("{n}:{v}\n"));
    }
    text.push('/');
    text.push_str(action);
    BASE64.encode(hmac_sha1(key.as_bytes(), text.as_bytes()))
}

/// Parses `YYYY-MM-DDTHH:MM:SS(.\d+)?Z` into microseconds since the epoch.
pub fn parse_date(text: &str) -> Option<i64> {
    let (main, frac) = match text.strip_suffix('Z')?.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (text.strip_suffix('Z')?, None),
    };
    let b = main.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let n = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (n(&main[0..4])?, n(&main[5..7])?, n(&main[8..10])?);
    let (h, mi, s) = (n(&main[11..13])?, n(&main[14..16])?, n(&main[17..19])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut us = 0;
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        for (i, c) in f.bytes().take(6).enumerate() {
            us += i64::from(c - b'0') * 10i64.pow(5 - i as u32);
        }
    }
    // Days from civil (proleptic Gregorian).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy.rem_euclid(400);
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((((days * 24 + h) * 60 + mi) * 60 + s) * 1_000_000 + us)
}

/// Microseconds since the epoch as the service writes `x-ots-date`:
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_date(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        us.rem_euclid(1_000_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> Vec<(String, String)> {
        [
            ("x-ots-date", "2024-01-02T03:04:05.000Z"),
            ("x-ots-apiversion", "2015-12-31"),
            ("x-ots-accesskeyid", "testAccessKeyId"),
            ("x-ots-instancename", "myinst"),
            ("x-ots-contentmd5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn the_reference_vectors_hold() {
        assert_eq!(md5_base64(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(
            v2("testAccessKeySecret", "PutTimeseriesData", &headers()),
            "fv7WInmTIE52SBGFfxFtD7uLWjk="
        );
        let key = v4_key("testAccessKeySecret", "20240102", "cn-hangzhou");
        assert_eq!(key, "V5zuYdJazNI+aX/e6DuhJmwlV2ksvzlGiM6xX8TSNaE=");
        let mut h = headers();
        h.push(("x-ots-signdate".into(), "20240102".into()));
        h.push(("x-ots-signregion".into(), "cn-hangzhou".into()));
        assert_eq!(
            v4(&key, "PutTimeseriesData", &h),
            "KIGzSKwAp3SlUExowRoLpr+nwplnYo4ma4MGlF9VnZs="
        );
        let resp: Vec<(String, String)> = [
            ("x-ots-contentmd5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
            ("x-ots-requestid", "req-1"),
            ("x-ots-date", "2024-01-02T03:04:05.000Z"),
            ("x-ots-contenttype", "protocol buffer"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(
            response("testAccessKeySecret", "PutTimeseriesData", &resp),
            "H9man9pJtVNIKrxpHH4Ek70buJY="
        );
    }

    #[test]
    fn dates_round_trip_with_microseconds() {
        let us = 1_704_164_645_680_616;
        assert_eq!(format_date(us), "2024-01-02T03:04:05.680616Z");
        assert_eq!(parse_date("2024-01-02T03:04:05.680616Z"), Some(us));
        assert_eq!(parse_date("2024-01-02T03:04:05.680Z"), Some(us - 616));
        assert_eq!(parse_date("2024-01-02T03:04:05Z"), Some(us - 680_616));
        assert_eq!(parse_date("2024-01-02 03:04:05Z"), None);
    }
}
