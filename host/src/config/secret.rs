//! Secrets and `${env:NAME}` references.
//!
//! Any string value of the manifest may contain `${env:NAME}`, replaced by
//! the environment variable `NAME` when the manifest is loaded (EMQX and
//! eKuiper users keep credentials out of files the same way). `$${env:`
//! stays literal (the template engine turns `$${` into `${`).
//!
//! What this module must never do: let a resolved value reach a log line or
//! a diagnostic. Diagnostics quote the manifest's own text (which holds the
//! reference, not the value), and the few values that are secrets by nature
//! (passwords, later tokens) are held in [`Secret`], whose `Debug` and
//! `Display` print `***`.

use std::fmt;

/// A value that must not be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (a connection).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where `${env:NAME}` references are looked up. The process environment
/// in production; a map in tests (setting the process environment from
/// tests races other tests).
pub type Environment<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Why a string's references could not all be resolved.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum EnvError {
    /// `${env:NAME}` with `NAME` unset (or not UTF-8).
    Unset(String),
    /// `${env:` without `}`, or an empty or malformed name.
    Malformed(String),
}

/// Whether `text` holds an `${env:` reference at all.
pub(super) fn has_reference(text: &str) -> bool {
    references(text).next().is_some()
}

/// Byte ranges of each `${env:...}` (or unterminated `${env:...`) in
/// `text`, skipping `$${env:`.
fn references(text: &str) -> impl Iterator<Item = (usize, Option<usize>)> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        loop {
            let at = from + text[from..].find("${env:")?;
            if at > 0 && text.as_bytes()[at - 1] == b'$' {
                from = at + 2;
                continue;
            }
            let end = text[at..].find('}').map(|e| at + e + 1);
            from = end.unwrap_or(text.len());
            return Some((at, end));
        }
    })
}

/// Replaces every `${env:NAME}` of `text`. `None` when there is none (the
/// common case: no copy). Every unset variable is reported, not just the
/// first.
pub(super) fn resolve(text: &str, env: Environment<'_>) -> Option<Result<String, Vec<EnvError>>> {
    let mut out = String::new();
    let mut errors = Vec::new();
    let mut copied = 0;
    let mut any = false;
    for (start, end) in references(text) {
        any = true;
        out.push_str(&text[copied..start]);
        let Some(end) = end else {
            errors.push(EnvError::Malformed(text[start..].to_owned()));
            copied = text.len();
            break;
        };
        let name = &text[start + "${env:".len()..end - 1];
        copied = end;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            errors.push(EnvError::Malformed(text[start..end].to_owned()));
            continue;
        }
        match env(name) {
            Some(value) => out.push_str(&value),
            None => errors.push(EnvError::Unset(name.to_owned())),
        }
    }
    if !any {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER" => Some("weir".into()),
            "PASS" => Some("s3cr3t".into()),
            _ => None,
        }
    }

    #[test]
    fn secrets_never_print_their_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(***)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn a_string_without_references_is_left_alone() {
        assert_eq!(resolve("plain $text {x}", &env), None);
        assert_eq!(resolve("alerts/${device}", &env), None);
    }

    #[test]
    fn references_are_replaced_anywhere_in_a_string() {
        assert_eq!(resolve("${env:PASS}", &env), Some(Ok("s3cr3t".into())));
        assert_eq!(
            resolve("${env:USER}:${env:PASS}@${host}", &env),
            Some(Ok("weir:s3cr3t@${host}".into()))
        );
    }

    #[test]
    fn a_doubled_dollar_keeps_the_reference_literal() {
        assert_eq!(resolve("$${env:PASS}", &env), None);
    }

    #[test]
    fn every_unset_variable_is_named() {
        assert_eq!(
            resolve("${env:NOPE}/${env:USER}/${env:ALSO_NOPE}", &env),
            Some(Err(vec![
                EnvError::Unset("NOPE".into()),
                EnvError::Unset("ALSO_NOPE".into())
            ]))
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        assert_eq!(
            resolve("${env:}", &env),
            Some(Err(vec![EnvError::Malformed("${env:}".into())]))
        );
        assert_eq!(
            resolve("x ${env:PASS", &env),
            Some(Err(vec![EnvError::Malformed("${env:PASS".into())]))
        );
        assert_eq!(
            resolve("${env:A B}", &env),
            Some(Err(vec![EnvError::Malformed("${env:A B}".into())]))
        );
    }
}
