//! The one error type a plugin returns, for a failed message or a refused
//! config.
//!
//! The host only ever sees the text (a `failure.message` or the `init`
//! error), so an [`Error`] is a message and nothing else. It converts from
//! strings and from the errors plugins commonly meet, so `?` works on them.

use std::fmt;

/// Why a message could not be processed, or why a config was refused.
///
/// Build one with [`Error::new`], `"text".into()`, or let `?` convert a
/// [`serde_json::Error`], an [`std::io::Error`] or a number-parsing error.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

/// `Result` with the SDK's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// The message, as the host will log it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what was being done: `context: message`.
    #[must_use]
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self {
            message: format!("{context}: {}", self.message),
        }
    }

    pub(crate) fn into_message(self) -> String {
        self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.message, f)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

// A blanket `impl<E: std::error::Error> From<E>` would collide with the
// string impls above (coherence cannot rule out `impl Error for String`
// upstream), so the common sources are listed one by one.
macro_rules! from_display {
    ($($source:ty),* $(,)?) => {$(
        impl From<$source> for Error {
            fn from(error: $source) -> Self {
                Self::new(error)
            }
        }
    )*};
}

from_display!(
    serde_json::Error,
    std::io::Error,
    fmt::Error,
    std::num::ParseIntError,
    std::num::ParseFloatError,
    std::str::Utf8Error,
    std::string::FromUtf8Error,
);
