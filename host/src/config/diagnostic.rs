//! Problems found in a manifest: where (file, line, column), what, and a
//! hint when one helps, rendered the way compilers do:
//!
//! ```text
//! weir.toml:12:9: error: unknown field "tpoic" in [sinks.alerts]
//!   = hint: did you mean "topic"?
//! ```
//!
//! Locations come from byte spans of the parsed TOML; lines and columns are
//! 1-based and columns count characters, as editors do. Messages quote the
//! manifest's own text, never a value resolved from the environment (see
//! `secret.rs`).

use std::fmt;
use std::ops::Range;

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The manifest is refused.
    Error,
    /// Allowed, but probably not what was meant (a password in clear).
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The manifest, as named to the user.
    pub file: String,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column, in characters; 0 with `line`.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// Sets the hint (builder style, for the validator).
    pub(super) fn hint(&mut self, hint: impl Into<String>) -> &mut Self {
        self.hint = Some(hint.into());
        self
    }

    /// An error about the whole file.
    pub(super) fn file_error(file: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: message.into(),
            hint: None,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        write!(f, "{}: {}", self.severity, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem of a manifest, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The errors (warnings left out).
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }

    /// How many errors.
    pub fn error_count(&self) -> usize {
        self.errors().count()
    }

    /// Whether the manifest is refused.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// The closing line: `error: 3 problems in weir.toml`.
    pub fn summary(&self, file: &str) -> String {
        match self.error_count() {
            1 => format!("error: 1 problem in {file}"),
            n => format!("error: {n} problems in {file}"),
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics while a manifest is checked.
pub(super) struct Reporter<'s> {
    file: String,
    source: &'s str,
    /// Byte offset of each line start.
    lines: Vec<usize>,
    found: Vec<(usize, Diagnostic)>,
    /// Spans already reported in a way that makes any further complaint
    /// about them noise (a string whose `${env:…}` is unset).
    muted: Vec<Range<usize>>,
    discard: Diagnostic,
}

impl<'s> Reporter<'s> {
    /// The manifest text being checked.
    pub(super) fn source(&self) -> &'s str {
        self.source
    }

    pub(super) fn new(file: &str, source: &'s str) -> Self {
        let lines = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Reporter {
            file: file.to_owned(),
            source,
            lines,
            found: Vec::new(),
            muted: Vec::new(),
            discard: Diagnostic::file_error(file, ""),
        }
    }

    /// The manifest's text at `span` (what diagnostics may quote).
    pub(super) fn text(&self, span: &Range<usize>) -> &'s str {
        self.source.get(span.clone()).unwrap_or("")
    }

    /// 1-based line and column of a byte offset.
    pub(super) fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.lines.partition_point(|&start| start <= offset);
        let start = self.lines[line - 1];
        let column = self
            .source
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }

    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.push(Severity::Error, span, message.into())
    }

    pub(super) fn warning(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.push(Severity::Warning, span, message.into())
    }

    /// Further diagnostics at exactly this span are dropped.
    pub(super) fn mute(&mut self, span: Range<usize>) {
        self.muted.push(span);
    }

    pub(super) fn error_count(&self) -> usize {
        self.found
            .iter()
            .filter(|(_, d)| d.severity == Severity::Error)
            .count()
    }

    fn push(&mut self, severity: Severity, span: Range<usize>, message: String) -> &mut Diagnostic {
        if self.muted.contains(&span) {
            self.discard = Diagnostic::file_error(&self.file, message);
            return &mut self.discard;
        }
        let (line, column) = self.line_column(span.start);
        self.found.push((
            span.start,
            Diagnostic {
                severity,
                file: self.file.clone(),
                line,
                column,
                message,
                hint: None,
            },
        ));
        &mut self.found.last_mut().expect("just pushed").1
    }

    /// The diagnostics in file order (a stable sort: problems at one place
    /// keep the order they were found in).
    pub(super) fn finish(mut self) -> Diagnostics {
        self.found.sort_by_key(|(offset, _)| *offset);
        Diagnostics(self.found.into_iter().map(|(_, d)| d).collect())
    }
}

/// The closest of `candidates` to `word`, if one is close enough to be what
/// was meant: at most two edits (a swap of neighbours counts as one) and no
/// more than half the word, or `word` cut short (`drop_old`).
pub(super) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let len = word.chars().count();
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .filter_map(|c| {
            let d = strsim::damerau_levenshtein(word, c);
            let typo = d <= 2 && d * 2 <= len;
            let cut_short = len >= 3 && c.starts_with(word);
            (typo || cut_short).then_some((d, c))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based_and_count_characters() {
        let source = "a = 1\n\nnamé = \"x\" # ü\nz";
        let r = Reporter::new("weir.toml", source);
        assert_eq!(r.line_column(0), (1, 1));
        assert_eq!(r.line_column(4), (1, 5));
        assert_eq!(r.line_column(6), (2, 1));
        assert_eq!(r.line_column(7), (3, 1));
        let quote = source.find('"').unwrap();
        assert_eq!(r.line_column(quote), (3, 8));
        assert_eq!(r.line_column(source.len()), (4, 2));
    }

    #[test]
    fn diagnostics_render_like_a_compiler_in_file_order() {
        let source = "[sinks.alerts]\ntype = \"mqtt\"\ntpoic = \"x\"\n";
        let mut r = Reporter::new("weir.toml", source);
        let at = source.find("tpoic").unwrap();
        r.error(at..at + 5, "unknown field \"tpoic\" in [sinks.alerts]")
            .hint("did you mean \"topic\"?");
        r.warning(0..14, "sink \"alerts\" is not used by any rule");
        let d = r.finish();
        assert_eq!(
            d.to_string(),
            "weir.toml:1:1: warning: sink \"alerts\" is not used by any rule\n\
             weir.toml:3:1: error: unknown field \"tpoic\" in [sinks.alerts]\n  \
             = hint: did you mean \"topic\"?"
        );
        assert_eq!(d.error_count(), 1);
        assert_eq!(d.summary("weir.toml"), "error: 1 problem in weir.toml");
    }

    #[test]
    fn muted_spans_take_no_further_diagnostics() {
        let mut r = Reporter::new("weir.toml", "url = \"${env:URL}\"");
        r.error(6..18, "environment variable \"URL\" is not set");
        r.mute(6..18);
        r.error(6..18, "not a URL").hint("ignored");
        assert_eq!(r.finish().0.len(), 1);
    }

    #[test]
    fn suggestions_are_offered_only_when_close() {
        let known = ["topic", "payload", "qos", "retain"];
        assert_eq!(did_you_mean("tpoic", known), Some("topic"));
        assert_eq!(did_you_mean("retian", known), Some("retain"));
        assert_eq!(did_you_mean("zzz", known), None);
        assert_eq!(did_you_mean("form", ["format", "from", "to"]), Some("from"));
        assert_eq!(
            did_you_mean("drop_old", ["block", "drop_oldest", "drop_newest"]),
            Some("drop_oldest")
        );
        assert_eq!(did_you_mean("ab", ["xy", "cd"]), None);
    }
}
