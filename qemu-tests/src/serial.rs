//! Waiting for text in a growing serial-console log file.
//!
//! Works on any file path, so it is testable without QEMU. Lines are
//! compared after removing `\r` and ANSI escape sequences (systemd colours
//! its `[  OK  ]`), so patterns are written as the text appears on screen.
//! Offsets are byte offsets into the raw file.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often the log is read while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How many lines of the log an error message quotes.
pub const TAIL_LINES: usize = 60;

/// A serial log file, possibly not yet created, that something appends to.
#[derive(Clone, Debug)]
pub struct SerialLog {
    path: PathBuf,
    label: String,
}

/// What to wait for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted<'a> {
    /// Byte offset in the file where the search starts.
    pub since: u64,
    /// Substring to find.
    pub pattern: &'a str,
    /// Only match lines already ended by `\n` (so the whole line is
    /// returned); otherwise a trailing partial line (a `login: ` prompt)
    /// also matches.
    pub whole_line: bool,
}

impl SerialLog {
    /// A log at `path`; errors call it "serial log".
    pub fn new(path: impl Into<PathBuf>) -> SerialLog {
        SerialLog::with_label(path, "serial log")
    }

    /// A log at `path`; errors call its producer `label` (e.g. "vm node1").
    pub fn with_label(path: impl Into<PathBuf>, label: impl Into<String>) -> SerialLog {
        SerialLog {
            path: path.into(),
            label: label.into(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Current size in bytes (0 if the file does not exist yet): pass it to
    /// the `_after` waits to only look at output written from now on.
    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// True if nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole log as lossy UTF-8, raw (escapes and `\r` kept); empty if
    /// the file does not exist yet.
    pub fn text(&self) -> String {
        std::fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines, cleaned, joined with `\n`.
    pub fn tail(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<String> = text.lines().map(clean_line).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a line containing `pattern` appears (a trailing partial
    /// line counts), returning that line, cleaned.
    pub fn wait_for(&self, pattern: &str, deadline: Duration) -> Result<String> {
        self.wait_for_after(0, pattern, deadline)
    }

    /// Like [`wait_for`](Self::wait_for), looking only at bytes from
    /// `offset` on (see [`len`](Self::len)).
    pub fn wait_for_after(&self, offset: u64, pattern: &str, deadline: Duration) -> Result<String> {
        let wanted = Wanted {
            since: offset,
            pattern,
            whole_line: false,
        };
        self.wait(wanted, deadline, &mut || None)
    }

    /// Waits until a complete (newline-ended) line containing `prefix`
    /// appears, returning the full line, cleaned: use it for lines that
    /// carry values, which a partial line would cut short.
    pub fn wait_for_line_with_prefix(&self, prefix: &str, deadline: Duration) -> Result<String> {
        self.wait_for_line_with_prefix_after(0, prefix, deadline)
    }

    /// Like [`wait_for_line_with_prefix`](Self::wait_for_line_with_prefix),
    /// from byte `offset` on.
    pub fn wait_for_line_with_prefix_after(
        &self,
        offset: u64,
        prefix: &str,
        deadline: Duration,
    ) -> Result<String> {
        let wanted = Wanted {
            since: offset,
            pattern: prefix,
            whole_line: true,
        };
        self.wait(wanted, deadline, &mut || None)
    }

    /// Polls the file every [`POLL_INTERVAL`] until `wanted` matches or
    /// `deadline` passes. `gone` is asked each round whether the producer
    /// has died; `Some(reason)` ends the wait with an error (after a last
    /// look at the file).
    pub(crate) fn wait(
        &self,
        wanted: Wanted<'_>,
        deadline: Duration,
        gone: &mut dyn FnMut() -> Option<String>,
    ) -> Result<String> {
        let start = Instant::now();
        let mut scanner = Scanner {
            read_pos: wanted.since,
            pending: Vec::new(),
        };
        tracing::debug!(
            "{}: waiting up to {deadline:?} for {:?}",
            self.label,
            wanted.pattern
        );
        loop {
            let died = gone();
            if let Some(line) = scanner.scan(&self.path, wanted)? {
                tracing::debug!(
                    "{}: found {:?} after {:.1?}",
                    self.label,
                    wanted.pattern,
                    start.elapsed()
                );
                return Ok(line);
            }
            if let Some(reason) = died {
                bail!(
                    "{} stopped after {:.1?} while waiting for {:?}: {reason}\n{}",
                    self.label,
                    start.elapsed(),
                    wanted.pattern,
                    self.tail_block()
                );
            }
            let elapsed = start.elapsed();
            if elapsed >= deadline {
                bail!(
                    "timed out after {elapsed:.1?} waiting for {:?} from {} (serial log {}, from byte {})\n{}",
                    wanted.pattern,
                    self.label,
                    self.path.display(),
                    wanted.since,
                    self.tail_block()
                );
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - elapsed));
        }
    }

    fn tail_block(&self) -> String {
        let tail = self.tail(TAIL_LINES);
        if tail.is_empty() {
            format!("--- no output in {} ---", self.path.display())
        } else {
            format!(
                "--- last {TAIL_LINES} lines of {} ---\n{tail}\n--- end ---",
                self.path.display()
            )
        }
    }
}

/// Incremental reader: remembers how far the file was read and keeps an
/// unfinished last line until its newline arrives.
struct Scanner {
    read_pos: u64,
    pending: Vec<u8>,
}

impl Scanner {
    fn scan(&mut self, path: &Path, wanted: Wanted<'_>) -> Result<Option<String>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        if len < self.read_pos {
            // Truncated (the VM was restarted on the same log): start over.
            tracing::debug!("{} shrank to {len} bytes; rescanning", path.display());
            self.read_pos = 0;
            self.pending.clear();
        }
        file.seek(SeekFrom::Start(self.read_pos))
            .with_context(|| format!("cannot seek in {}", path.display()))?;
        let n = file
            .read_to_end(&mut self.pending)
            .with_context(|| format!("cannot read {}", path.display()))?;
        self.read_pos += n as u64;
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=nl).collect();
            let line = clean_line(&String::from_utf8_lossy(&raw[..nl]));
            if line.contains(wanted.pattern) {
                return Ok(Some(line));
            }
        }
        if !wanted.whole_line && !self.pending.is_empty() {
            let line = clean_line(&String::from_utf8_lossy(&self.pending));
            if line.contains(wanted.pattern) {
                return Ok(Some(line));
            }
        }
        Ok(None)
    }
}

/// Removes `\r`, other control characters except tab, and ANSI escape
/// sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL`, and two-byte
/// `ESC x`).
pub fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                Some('(' | ')') => {
                    chars.next();
                }
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn timeout_message_has_pattern_elapsed_and_last_60_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.serial.log");
        for i in 1..=100 {
            append(&path, &format!("boot line {i}\r\n"));
        }
        let log = SerialLog::with_label(&path, "vm node1");
        let start = Instant::now();
        let err = log
            .wait_for("HABUILD-READY", Duration::from_millis(500))
            .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(500));
        assert!(start.elapsed() < Duration::from_secs(3));
        let msg = err.to_string();
        assert!(msg.contains("timed out after"), "{msg}");
        assert!(msg.contains("\"HABUILD-READY\""), "{msg}");
        assert!(msg.contains("vm node1"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("boot line 100\n"), "{msg}");
        assert!(msg.contains("boot line 41\n"), "{msg}");
        assert!(!msg.contains("boot line 40\n"), "{msg}");
        assert!(!msg.contains('\r'));
        // elapsed is printed like "501.2ms" or "0.5s"
        assert!(msg.contains("ms ") || msg.contains("s "), "{msg}");
    }

    #[test]
    fn timeout_on_missing_file_says_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = SerialLog::new(dir.path().join("never"));
        let msg = log
            .wait_for("x", Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("--- no output in"), "{msg}");
    }

    #[test]
    fn finds_text_appended_while_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, "early\n");
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            append(&writer_path, "[   3.1] habuild: PHASE=");
            std::thread::sleep(Duration::from_millis(400));
            append(&writer_path, "joined node=3\r\nmore\n");
        });
        let log = SerialLog::new(&path);
        let line = log
            .wait_for_line_with_prefix("PHASE=", Duration::from_secs(10))
            .unwrap();
        assert_eq!(line, "[   3.1] habuild: PHASE=joined node=3");
        writer.join().unwrap();
    }

    #[test]
    fn partial_line_matches_only_for_wait_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, "Debian GNU/Linux 12 node1 ttyS0\n\nnode1 login: ");
        let log = SerialLog::new(&path);
        assert_eq!(
            log.wait_for("login:", Duration::from_secs(1)).unwrap(),
            "node1 login: "
        );
        assert!(log
            .wait_for_line_with_prefix("login:", Duration::from_millis(300))
            .is_err());
    }

    #[test]
    fn offset_skips_earlier_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, "MARK first\n");
        let log = SerialLog::new(&path);
        let offset = log.len();
        assert!(log
            .wait_for_after(offset, "MARK", Duration::from_millis(300))
            .is_err());
        append(&path, "MARK second\n");
        assert_eq!(
            log.wait_for_after(offset, "MARK", Duration::from_secs(1))
                .unwrap(),
            "MARK second"
        );
        assert_eq!(
            log.wait_for("MARK", Duration::from_secs(1)).unwrap(),
            "MARK first"
        );
    }

    #[test]
    fn ansi_colours_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(
            &path,
            "[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mhabuild-agent.service\x1b[0m.\r\n",
        );
        let log = SerialLog::new(&path);
        let line = log
            .wait_for(
                "[  OK  ] Started habuild-agent.service",
                Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(line, "[  OK  ] Started habuild-agent.service.");
    }

    #[test]
    fn dead_producer_fails_fast_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        append(&path, "kernel panic\n");
        let log = SerialLog::with_label(&path, "vm x");
        let wanted = Wanted {
            since: 0,
            pattern: "never",
            whole_line: false,
        };
        let start = Instant::now();
        let err = log
            .wait(wanted, Duration::from_secs(30), &mut || {
                Some("qemu exited: exit status: 1".into())
            })
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        let msg = err.to_string();
        assert!(msg.contains("vm x stopped after"), "{msg}");
        assert!(msg.contains("qemu exited: exit status: 1"), "{msg}");
        assert!(msg.contains("kernel panic"), "{msg}");
    }

    #[test]
    fn clean_line_cases() {
        assert_eq!(clean_line("a\x1b[1;31mb\x1b[0mc\r"), "abc");
        assert_eq!(clean_line("\x1b]0;title\x07x"), "x");
        assert_eq!(clean_line("\x1b(Bq\x1bcz"), "qz");
        assert_eq!(clean_line("tab\there"), "tab\there");
    }
}
