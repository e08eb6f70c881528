//! The file sink: appends JSON Lines, rotates by size.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::encode::{self, Lines};
use crate::message::Message;
use crate::sink::{ErrorClass, Rejected, Sink, Written};

/// Writes JSON Lines to a file, rotating it by size.
#[derive(Clone)]
pub struct FileSink {
    state: Arc<Mutex<FileState>>,
}

/// A file operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done: `open`, `write`, `rotate`.
    pub op: &'static str,
    /// The file concerned.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

struct FileState {
    path: PathBuf,
    max_file_bytes: u64,
    max_files: u32,
    /// Open lazily again after a failure.
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
}

impl FileSink {
    /// Opens (creating it and its folder if needed) the file at `path` for
    /// appending, so that a sink that cannot write fails at start, not at
    /// its first message.
    pub fn open(path: &Path, max_file_bytes: u64, max_files: u32) -> Result<FileSink, FileError> {
        let mut state = FileState {
            path: path.to_owned(),
            max_file_bytes: max_file_bytes.max(1),
            max_files,
            file: None,
            size: 0,
        };
        state.ensure_open()?;
        Ok(FileSink {
            state: Arc::new(Mutex::new(state)),
        })
    }
}

impl Sink for FileSink {
    type Request = Lines;
    type Error = FileError;

    fn encode(&self, batch: &[Message], _rejected: &mut Vec<Rejected>) -> Lines {
        encode::encode(batch)
    }

    async fn write(&self, request: &Lines) -> Result<Written, FileError> {
        let state = self.state.clone();
        let lines = request.clone();
        // File I/O blocks; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .append(&lines)
        })
        .await
        .unwrap_or_else(|e| {
            Err(FileError {
                op: "write",
                path: PathBuf::new(),
                source: io::Error::other(e.to_string()),
            })
        })?;
        Ok(Written::All)
    }

    fn classify(&self, error: &FileError) -> ErrorClass {
        classify(error.source.kind())
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .ensure_open()
                .map(|_| ())
        })
        .await??;
        Ok(())
    }
}

/// Whether retrying a failed file operation may help. A file's problems
/// (disk full, permissions, a missing mount) are the machine's, not a
/// message's, and an operator can fix them: retry. Only errors that say the
/// request itself is malformed are permanent.
fn classify(kind: io::ErrorKind) -> ErrorClass {
    use io::ErrorKind::*;
    match kind {
        InvalidInput | InvalidData | Unsupported => ErrorClass::Permanent,
        _ => ErrorClass::Retryable,
    }
}

impl FileState {
    fn ensure_open(&mut self) -> Result<&mut File, FileError> {
        if self.file.is_none() {
            let error = |op, source| FileError {
                op,
                path: self.path.clone(),
                source,
            };
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| error("create the folder of", e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| error("open", e))?;
            self.size = file.metadata().map_err(|e| error("open", e))?.len();
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Appends every line, rotating between lines as needed.
    fn append(&mut self, lines: &Lines) -> Result<(), FileError> {
        let mut segment_start = 0;
        let mut line_start = 0;
        for &end in &lines.ends {
            let pending = (line_start - segment_start) as u64;
            let line = (end - line_start) as u64;
            if self.size + pending > 0 && self.size + pending + line > self.max_file_bytes {
                self.write_segment(&lines.bytes[segment_start..line_start])?;
                self.rotate()?;
                segment_start = line_start;
            }
            line_start = end;
        }
        self.write_segment(&lines.bytes[segment_start..line_start])
    }

    /// Writes `bytes` and flushes; on failure, cuts the file back to where
    /// it was so no torn line is left for the retry to follow.
    fn write_segment(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let size = self.size;
        let file = self.ensure_open()?;
        let written = file.write_all(bytes).and_then(|()| file.flush());
        match written {
            Ok(()) => {
                self.size = size + bytes.len() as u64;
                Ok(())
            }
            Err(source) => {
                if let Some(file) = self.file.take() {
                    let _ = file.set_len(size);
                }
                Err(FileError {
                    op: "write",
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// `path.<n-1>` → `path.<n>`, …, `path` → `path.1`, then a fresh `path`.
    fn rotate(&mut self) -> Result<(), FileError> {
        self.file = None;
        let error = |source| FileError {
            op: "rotate",
            path: self.path.clone(),
            source,
        };
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.max_files == 0 {
            remove_if_exists(&self.path).map_err(error)?;
        } else {
            remove_if_exists(&numbered(self.max_files)).map_err(error)?;
            for n in (1..self.max_files).rev() {
                rename_if_exists(&numbered(n), &numbered(n + 1)).map_err(error)?;
            }
            rename_if_exists(&self.path, &numbered(1)).map_err(error)?;
        }
        self.size = 0;
        self.ensure_open()?;
        Ok(())
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[&str]) -> Lines {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for t in texts {
            bytes.extend_from_slice(t.as_bytes());
            bytes.push(b'\n');
            ends.push(bytes.len());
        }
        Lines {
            bytes: bytes.into(),
            ends,
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn numbered(path: &Path, n: u32) -> PathBuf {
        PathBuf::from(format!("{}.{n}", path.display()))
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        use io::ErrorKind::*;
        let table = [
            (StorageFull, ErrorClass::Retryable),
            (PermissionDenied, ErrorClass::Retryable),
            (NotFound, ErrorClass::Retryable),
            (Interrupted, ErrorClass::Retryable),
            (ReadOnlyFilesystem, ErrorClass::Retryable),
            (Other, ErrorClass::Retryable),
            (InvalidInput, ErrorClass::Permanent),
            (InvalidData, ErrorClass::Permanent),
            (Unsupported, ErrorClass::Permanent),
        ];
        for (kind, class) in table {
            assert_eq!(classify(kind), class, "{kind:?}");
        }
    }

    #[test]
    fn lines_are_appended_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/out.jsonl");
        let mut state = FileSink::open(&path, 1 << 20, 3).unwrap();
        let s = Arc::get_mut(&mut state.state).unwrap().get_mut().unwrap();
        s.append(&lines(&["a", "b"])).unwrap();
        drop(state);
        let again = FileSink::open(&path, 1 << 20, 3).unwrap();
        again.state.lock().unwrap().append(&lines(&["c"])).unwrap();
        assert_eq!(read(&path), "a\nb\nc\n");
    }

    #[test]
    fn rotation_shifts_numbered_files_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        // Each line is 4 bytes with its newline; 8 bytes = two lines a file.
        let sink = FileSink::open(&path, 8, 2).unwrap();
        let mut state = sink.state.lock().unwrap();
        state
            .append(&lines(&["001", "002", "003", "004", "005", "006", "007"]))
            .unwrap();
        assert_eq!(read(&path), "007\n");
        assert_eq!(read(&numbered(&path, 1)), "005\n006\n");
        assert_eq!(read(&numbered(&path, 2)), "003\n004\n");
        assert!(!numbered(&path, 3).exists(), "only max_files are kept");
    }

    #[test]
    fn a_line_larger_than_the_limit_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let sink = FileSink::open(&path, 4, 5).unwrap();
        let mut state = sink.state.lock().unwrap();
        state.append(&lines(&["a", "much-too-long", "b"])).unwrap();
        assert_eq!(read(&path), "b\n");
        assert_eq!(read(&numbered(&path, 1)), "much-too-long\n");
        assert_eq!(read(&numbered(&path, 2)), "a\n");
    }

    #[test]
    fn zero_max_files_keeps_no_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let sink = FileSink::open(&path, 4, 0).unwrap();
        let mut state = sink.state.lock().unwrap();
        state.append(&lines(&["aaa", "bbb"])).unwrap();
        assert_eq!(read(&path), "bbb\n");
        assert!(!numbered(&path, 1).exists());
    }

    #[test]
    fn an_unwritable_path_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = FileSink::open(&blocker.join("out.jsonl"), 10, 1)
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("cannot create the folder of"),
            "{err}"
        );
    }
}
