//! File watching for hot reload: `notify` events (inotify on Linux), or
//! polling where a file system has no events, debounced and settled.
//!
//! The folders of the files of interest are watched, not the files: an
//! editor's atomic rename replaces the file (a new inode), `cp` over it
//! truncates and rewrites it, and a plugin named in a new manifest may not
//! exist yet. Events for other files of those folders are ignored.
//!
//! Polling looks at the files of interest themselves, comparing size,
//! modification time to the nanosecond and inode. (`notify`'s
//! `PollWatcher` compares modification times in whole seconds, so a file
//! rewritten within the second of its last change goes unseen.)
//!
//! A burst of events for one file becomes one [`Change`], and only once
//! the file has **settled**: its size and modification time stayed the same
//! over [`SETTLE`]. A file still being written keeps moving, so it is not
//! reported until the writer is done. (The reader still validates what it
//! loads: a writer that pauses longer than [`SETTLE`] is caught there.)

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Quiet time after the last event for a file before it is looked at.
/// Editors write in several steps (truncate, write, rename, chmod) within
/// a few milliseconds.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How long a file's size and modification time must stay the same before
/// it counts as written.
pub const SETTLE: Duration = Duration::from_millis(50);

/// A file of interest changed and has settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The file (as it was registered).
    pub path: PathBuf,
}

/// A file's size and modification time; `None` when it does not exist.
pub type Stamp = Option<(u64, SystemTime)>;

/// Size and modification time of `path`.
pub fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// How changes are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// File-system events, falling back to polling every second when the
    /// platform's event API cannot be used.
    Events,
    /// Polling at this interval (file systems without events, such as
    /// some network and FUSE mounts).
    Poll(Duration),
}

/// Default polling interval of the fallback.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    /// File-system events; `None` when polling.
    inner: Option<Box<dyn notify::Watcher + Send>>,
    /// The poller, when polling.
    poll: Option<tokio::task::JoinHandle<()>>,
    /// Files of interest.
    files: Arc<Mutex<HashSet<PathBuf>>>,
    /// Folders watched.
    dirs: HashSet<PathBuf>,
    /// The debouncer's input, for files that become of interest.
    raw: mpsc::UnboundedSender<PathBuf>,
    debounce: tokio::task::JoinHandle<()>,
    /// What the watcher runs on, for the log.
    pub kind: &'static str,
}

impl Watcher {
    /// Starts watching `files`; settled changes go to `out`.
    pub fn start(files: &[PathBuf], mode: Mode, out: mpsc::Sender<Change>) -> anyhow::Result<Self> {
        let interest: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let (raw_tx, raw_rx) = mpsc::unbounded_channel::<PathBuf>();
        let raw = raw_tx.clone();
        let handler = {
            let interest = interest.clone();
            move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                let interest = interest.lock().unwrap();
                for path in event.paths {
                    if interest.contains(&path) {
                        let _ = raw_tx.send(path);
                    }
                }
            }
        };
        let poll_every = match mode {
            Mode::Poll(every) => Some(every),
            Mode::Events => None,
        };
        let inner: Option<Box<dyn notify::Watcher + Send>> = match poll_every {
            Some(_) => None,
            None => match notify::recommended_watcher(handler) {
                Ok(w) => Some(Box::new(w)),
                Err(e) => {
                    tracing::warn!(error = %e, every_ms = FALLBACK_POLL.as_millis() as u64, "File events are unavailable; polling for changes.");
                    None
                }
            },
        };
        let (poll, kind) = match inner {
            Some(_) => (None, "events"),
            None => (
                Some(tokio::spawn(poll(
                    interest.clone(),
                    raw.clone(),
                    poll_every.unwrap_or(FALLBACK_POLL),
                ))),
                "polling",
            ),
        };
        let mut watcher = Watcher {
            inner,
            poll,
            files: interest,
            dirs: HashSet::new(),
            raw,
            debounce: tokio::spawn(debounce(raw_rx, out)),
            kind,
        };
        watcher.set_files(files)?;
        Ok(watcher)
    }

    /// Replaces the files of interest (after a manifest reload named other
    /// plugins). A newly named file is looked at once, in case it changed
    /// before it was watched.
    pub fn set_files(&mut self, files: &[PathBuf]) -> anyhow::Result<()> {
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        if let Some(inner) = &mut self.inner {
            for dir in dirs.difference(&self.dirs.clone()) {
                inner
                    .watch(dir, notify::RecursiveMode::NonRecursive)
                    .with_context(|| format!("cannot watch {}", dir.display()))?;
                self.dirs.insert(dir.clone());
            }
            for dir in self.dirs.difference(&dirs).cloned().collect::<Vec<_>>() {
                let _ = inner.unwatch(&dir);
                self.dirs.remove(&dir);
            }
        }
        let mut interest = self.files.lock().unwrap();
        for file in files {
            // A file named since the last call (or at start) may have
            // changed between its load and now, before anything watched
            // it: look once. (The reloader compares content hashes, so an
            // unchanged file costs a read.)
            if !interest.contains(file) {
                let _ = self.raw.send(file.clone());
            }
        }
        *interest = files.iter().cloned().collect();
        Ok(())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.debounce.abort();
        if let Some(poll) = &self.poll {
            poll.abort();
        }
    }
}

/// What polling compares: size, modification time and inode (an atomic
/// rename with the same size within the same tick still changes the inode).
fn poll_stamp(path: &Path) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?, meta.ino()))
}

/// Looks at every file of interest every `every`, and reports the ones
/// that differ from the last look. A file seen for the first time is not
/// reported here ([`Watcher::set_files`] already asks for one look).
async fn poll(
    interest: Arc<Mutex<HashSet<PathBuf>>>,
    raw: mpsc::UnboundedSender<PathBuf>,
    every: Duration,
) {
    let mut seen: HashMap<PathBuf, Option<(u64, SystemTime, u64)>> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let files: Vec<PathBuf> = interest.lock().unwrap().iter().cloned().collect();
        seen.retain(|path, _| files.contains(path));
        for path in files {
            let now = poll_stamp(&path);
            let before = seen.insert(path.clone(), now);
            if before.is_some_and(|b| b != now) && raw.send(path).is_err() {
                return;
            }
        }
    }
}

/// One file waiting to settle.
struct Pending {
    /// When to look at it next.
    due: Instant,
    /// What it looked like last time (`None`: not looked at yet).
    seen: Option<Stamp>,
}

/// Turns raw events into settled changes.
async fn debounce(mut raw: mpsc::UnboundedReceiver<PathBuf>, out: mpsc::Sender<Change>) {
    let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
    loop {
        let next_due = pending.values().map(|p| p.due).min();
        tokio::select! {
            event = raw.recv() => {
                let Some(path) = event else { return };
                // Every event restarts the quiet period.
                pending.insert(path, Pending { due: Instant::now() + DEBOUNCE, seen: None });
            }
            () = sleep_until(next_due) => {
                let now = Instant::now();
                let due: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, p)| p.due <= now)
                    .map(|(path, _)| path.clone())
                    .collect();
                for path in due {
                    let current = stamp(&path);
                    let entry = pending.get_mut(&path).expect("listed above");
                    if current.is_some() && entry.seen == Some(current) {
                        pending.remove(&path);
                        if out.send(Change { path }).await.is_err() {
                            return;
                        }
                    } else if current.is_none() && entry.seen == Some(None) {
                        // Deleted: a running plugin stays as it is; a new
                        // file brings a new event.
                        pending.remove(&path);
                    } else {
                        // Still moving (or gone, mid-rename): look again.
                        entry.seen = Some(current);
                        entry.due = now + SETTLE;
                    }
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_for_a_settled_file_is_one_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.wasm");
        std::fs::write(&file, b"one").unwrap();
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let (out, mut changes) = mpsc::channel(8);
        tokio::spawn(debounce(raw_rx, out));
        for _ in 0..5 {
            raw_tx.send(file.clone()).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let change = changes.recv().await.unwrap();
        assert_eq!(change.path, file);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(changes.try_recv().is_err(), "one change for the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_file_is_not_reported_until_it_exists_and_settles() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("later.wasm");
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let (out, mut changes) = mpsc::channel(8);
        tokio::spawn(debounce(raw_rx, out));
        raw_tx.send(file.clone()).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(changes.try_recv().is_err(), "nothing to load yet");
        std::fs::write(&file, b"now").unwrap();
        raw_tx.send(file.clone()).unwrap();
        let change = changes.recv().await.unwrap();
        assert_eq!(change.path, file);
    }

    #[tokio::test(start_paused = true)]
    async fn polling_sees_a_same_size_rewrite_within_the_same_second() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, b"one").unwrap();
        let interest = Arc::new(Mutex::new(HashSet::from([file.clone()])));
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
        tokio::spawn(poll(interest, raw_tx, Duration::from_millis(100)));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(raw_rx.try_recv().is_err(), "a first look reports nothing");

        let tmp = dir.path().join("weir.toml.tmp");
        std::fs::write(&tmp, b"two").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(raw_rx.try_recv().ok(), Some(file.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(raw_rx.try_recv().is_err(), "reported once");
    }
}
