//! Running commands inside a booted VM through the QEMU guest agent.
//!
//! Why QGA: the images carry `qemu-guest-agent`, which listens only on the
//! virtio-serial port `org.qemu.guest_agent.0` that [`crate::Vm`] gives every
//! VM; QEMU exposes the other end as a Unix socket in the workdir
//! (`NAME.qga.sock`). So a test can run `guest-exec` in any VM without
//! network traffic (nothing on the bridge besides what the test is
//! observing), without SSH keys or passwords in the image, and without
//! scraping a serial console.
//!
//! Protocol (see the "QEMU Guest Agent Protocol Reference"): one JSON
//! object per line each way. A connection starts with a raw `0xFF` byte
//! (flushes qemu-ga's parser) and `guest-sync-delimited` with a random id;
//! the agent answers with `0xFF` and `{"return": id}`, and everything before
//! that answer is stale (an earlier client's replies) and skipped.
//! `guest-exec` with `capture-output` returns a pid; `guest-exec-status`
//! is polled until `exited`, and carries base64 `out-data`/`err-data`.
//!
//! Each call opens its own connection (QEMU serves one client at a time;
//! calls on one [`Guest`] are serialized). Every read has a timeout.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

/// How long the handshake and each request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Between `guest-exec-status` polls.
const POLL: Duration = Duration::from_millis(200);
/// Lines of stdout/stderr quoted in errors.
const TAIL_LINES: usize = 20;

/// What a command run with [`Guest::exec`] left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code; `128 + N` if it was killed by signal N (as a shell says).
    pub code: i32,
    /// Standard output, lossy UTF-8.
    pub stdout: String,
    /// Standard error, lossy UTF-8.
    pub stderr: String,
}

impl ExecOutput {
    /// `Ok(self)` if the exit code is 0, else an error naming `what` and
    /// quoting the tails of stdout and stderr.
    pub fn check(self, what: &str) -> Result<ExecOutput> {
        if self.code == 0 {
            return Ok(self);
        }
        bail!(
            "{what} exited {}\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.code,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

/// The guest agent of one VM, reached through QEMU's socket.
#[derive(Debug)]
pub struct Guest {
    socket: PathBuf,
    label: String,
    lock: Mutex<()>,
}

impl Guest {
    /// A client for the agent behind `socket`; `label` names it in errors
    /// (e.g. `"vm node1"`). Connects only when used.
    pub fn new(socket: impl Into<PathBuf>, label: impl Into<String>) -> Guest {
        Guest {
            socket: socket.into(),
            label: label.into(),
            lock: Mutex::new(()),
        }
    }

    /// The Unix socket QEMU listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Retries connecting and `guest-sync` until the agent answers (it
    /// starts late in boot) or `deadline` passes; returns the time waited.
    pub fn wait_ready(&self, deadline: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let err = match self.session(REQUEST_TIMEOUT.min(deadline)) {
                Ok(_) => {
                    tracing::info!("{}: guest agent answers", self.label);
                    return Ok(start.elapsed());
                }
                Err(e) => e,
            };
            if start.elapsed() >= deadline {
                return Err(err.context(format!(
                    "{}: guest agent at {} did not answer within {deadline:?}",
                    self.label,
                    self.socket.display()
                )));
            }
            tracing::debug!("{}: guest agent not ready: {err:#}", self.label);
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Runs `argv` (`argv[0]` a path or a name in the guest's `PATH`) and
    /// waits up to `timeout` for it to exit. A non-zero exit is not an error
    /// here (see [`ExecOutput::check`]); on timeout the command is left
    /// running in the guest.
    pub fn exec(&self, argv: &[&str], timeout: Duration) -> Result<ExecOutput> {
        self.exec_inner(argv, timeout)
            .with_context(|| format!("{}: guest-exec {argv:?}", self.label))
    }

    /// Runs `/bin/sh -c script`; fails if it exits non-zero, quoting the
    /// tails of its stdout and stderr.
    pub fn sh(&self, script: &str, timeout: Duration) -> Result<ExecOutput> {
        self.exec(&["/bin/sh", "-c", script], timeout)?
            .check(&format!("{}: sh -c {script:?}", self.label))
    }

    fn exec_inner(&self, argv: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let start = Instant::now();
        let mut s = self.session(REQUEST_TIMEOUT)?;
        let ret = s.call(&exec_request(argv)?)?;
        let pid = ret["pid"]
            .as_i64()
            .ok_or_else(|| anyhow!("guest-exec returned no pid: {ret}"))?;
        loop {
            let status = s.call(&request("guest-exec-status", json!({ "pid": pid })))?;
            if let Some(out) = parse_exec_status(&status)? {
                return Ok(out);
            }
            if start.elapsed() >= timeout {
                bail!("still running (guest pid {pid}) after {timeout:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Connects and synchronizes; the session holds the lock.
    fn session(&self, timeout: Duration) -> Result<Session<'_>> {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let ctx = || format!("{}: guest agent at {}", self.label, self.socket.display());
        let stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("{}: cannot connect", ctx()))?;
        stream.set_read_timeout(Some(Duration::from_millis(250)))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut s = Session {
            stream,
            buf: Vec::new(),
            timeout,
            _guard: guard,
        };
        s.sync(random_id()).with_context(ctx)?;
        Ok(s)
    }
}

struct Session<'a> {
    stream: UnixStream,
    buf: Vec<u8>,
    timeout: Duration,
    _guard: std::sync::MutexGuard<'a, ()>,
}

impl Session<'_> {
    /// `0xFF`, `guest-sync-delimited`, then skip everything up to `{"return": id}`.
    fn sync(&mut self, id: u64) -> Result<()> {
        let mut msg = vec![0xFF];
        msg.extend_from_slice(&request("guest-sync-delimited", json!({ "id": id })));
        self.stream.write_all(&msg).context("writing guest-sync")?;
        let start = Instant::now();
        loop {
            let reply = self
                .read_message(start)
                .context("waiting for the guest-sync reply")?;
            if reply.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
            tracing::debug!("guest agent: skipping stale reply {reply}");
        }
    }

    /// Sends one request line and returns its `return` value.
    fn call(&mut self, line: &[u8]) -> Result<Value> {
        self.stream.write_all(line).context("writing a request")?;
        let reply = self.read_message(Instant::now())?;
        parse_reply(reply)
    }

    /// The next JSON object, with a sentinel `0xFF` flushing what came before.
    fn read_message(&mut self, start: Instant) -> Result<Value> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(v) = next_message(&mut self.buf) {
                return Ok(v);
            }
            if start.elapsed() >= self.timeout {
                bail!(
                    "no reply within {:?} (read so far: {:?})",
                    self.timeout,
                    String::from_utf8_lossy(&self.buf)
                );
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("the socket was closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading from the socket"),
            }
        }
    }
}

/// One request line: `{"execute": .., "arguments": ..}` and `\n`.
fn request(execute: &str, arguments: Value) -> Vec<u8> {
    let mut line = json!({ "execute": execute, "arguments": arguments }).to_string();
    line.push('\n');
    line.into_bytes()
}

/// `guest-exec` of `argv` with its output captured.
fn exec_request(argv: &[&str]) -> Result<Vec<u8>> {
    let (path, args) = argv.split_first().context("empty argv")?;
    Ok(request(
        "guest-exec",
        json!({ "path": path, "arg": args, "capture-output": true }),
    ))
}

/// Takes the next complete line off `buf` and parses it; drops whatever
/// precedes a `0xFF` sentinel, and lines that are not JSON objects.
fn next_message(buf: &mut Vec<u8>) -> Option<Value> {
    loop {
        if let Some(ff) = buf.iter().rposition(|&b| b == 0xFF) {
            buf.drain(..=ff);
        }
        let nl = buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = buf.drain(..=nl).collect();
        match serde_json::from_slice::<Value>(&line) {
            Ok(v) if v.is_object() => return Some(v),
            _ => tracing::debug!("guest agent: skipping {:?}", String::from_utf8_lossy(&line)),
        }
    }
}

/// `{"return": v}` to `v`; `{"error": {"class", "desc"}}` to an error.
fn parse_reply(reply: Value) -> Result<Value> {
    if let Some(err) = reply.get("error") {
        bail!(
            "guest agent error {}: {}",
            err["class"].as_str().unwrap_or("?"),
            err["desc"].as_str().unwrap_or("?")
        );
    }
    match reply {
        Value::Object(mut m) if m.contains_key("return") => Ok(m.remove("return").unwrap()),
        other => bail!("unexpected guest agent reply {other}"),
    }
}

/// A `guest-exec-status` return: `None` while running.
fn parse_exec_status(status: &Value) -> Result<Option<ExecOutput>> {
    if !status["exited"]
        .as_bool()
        .with_context(|| format!("no `exited` in {status}"))?
    {
        return Ok(None);
    }
    let code = match (status["exitcode"].as_i64(), status["signal"].as_i64()) {
        (_, Some(sig)) => 128 + sig as i32,
        (Some(code), None) => code as i32,
        (None, None) => bail!("exited without exitcode or signal: {status}"),
    };
    let data = |key: &str| -> Result<String> {
        let Some(b64) = status[key].as_str() else {
            return Ok(String::new());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .with_context(|| format!("bad base64 in {key}"))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let (stdout, stderr) = (data("out-data")?, data("err-data")?);
    for key in ["out-truncated", "err-truncated"] {
        if status[key] == Value::Bool(true) {
            tracing::warn!("guest agent: {key}: output was cut short");
        }
    }
    Ok(Some(ExecOutput {
        code,
        stdout,
        stderr,
    }))
}

/// A fresh id for `guest-sync`, below 2^53 so any JSON reader keeps it exact.
fn random_id() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() & ((1 << 53) - 1)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn exec_request_captures_output() {
        let line = exec_request(&["/bin/sh", "-c", "echo hi"]).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(
            parse(&line),
            json!({"execute": "guest-exec", "arguments": {
                "path": "/bin/sh", "arg": ["-c", "echo hi"], "capture-output": true}})
        );
        assert!(exec_request(&[]).is_err());
    }

    #[test]
    fn stale_replies_and_sentinel_are_skipped() {
        // A half-line from an earlier client, a sentinel, then the answer.
        let mut buf =
            b"{\"return\": {\"pid\"\xff{\"return\": 42}\n{\"return\": {}}\npartial".to_vec();
        assert_eq!(next_message(&mut buf), Some(json!({"return": 42})));
        assert_eq!(next_message(&mut buf), Some(json!({"return": {}})));
        assert_eq!(next_message(&mut buf), None);
        assert_eq!(buf, b"partial");
        let mut junk = b"not json\n{\"return\": 1}\n".to_vec();
        assert_eq!(next_message(&mut junk), Some(json!({"return": 1})));
    }

    #[test]
    fn replies_and_errors() {
        assert_eq!(
            parse_reply(json!({"return": {"pid": 7}})).unwrap(),
            json!({"pid": 7})
        );
        let err = parse_reply(json!({"error": {"class": "GenericError",
            "desc": "Guest agent command failed, error was 'Failed to execute child process'"}}))
        .unwrap_err();
        assert!(err.to_string().contains("GenericError"), "{err}");
        assert!(parse_reply(json!({"event": "x"})).is_err());
    }

    #[test]
    fn exec_status_decodes_base64_output() {
        assert_eq!(parse_exec_status(&json!({"exited": false})).unwrap(), None);
        // "0123456789abcdef0123456789abcdef\n" and "warn\n", as qemu-ga sends them.
        let status = json!({"exited": true, "exitcode": 0,
            "out-data": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYK",
            "err-data": "d2Fybgo="});
        assert_eq!(
            parse_exec_status(&status).unwrap(),
            Some(ExecOutput {
                code: 0,
                stdout: "0123456789abcdef0123456789abcdef\n".into(),
                stderr: "warn\n".into(),
            })
        );
        let killed = parse_exec_status(&json!({"exited": true, "signal": 9}))
            .unwrap()
            .unwrap();
        assert_eq!(
            (killed.code, killed.stdout.as_str(), killed.stderr.as_str()),
            (137, "", "")
        );
        assert!(
            parse_exec_status(&json!({"exited": true, "exitcode": 0, "out-data": "!!"})).is_err()
        );
    }

    #[test]
    fn failed_check_quotes_tails() {
        let out = ExecOutput {
            code: 2,
            stdout: (1..=30).map(|i| format!("line{i}\n")).collect(),
            stderr: "boom\n".into(),
        };
        let msg = out.check("sh -c x").unwrap_err().to_string();
        assert!(msg.contains("exited 2") && msg.contains("boom"), "{msg}");
        assert!(msg.contains("line30") && !msg.contains("line10\n"), "{msg}");
    }

    /// A fake agent on a real socket: stale output before the sync reply,
    /// one "still running" status, then the result.
    #[test]
    fn exec_over_a_socket() {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.qga.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let agent = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut out = conn.try_clone().unwrap();
            let mut polls = 0;
            for line in BufReader::new(conn).split(b'\n') {
                let line = line.unwrap();
                let start = line.iter().position(|&b| b == b'{').unwrap();
                let req: Value = serde_json::from_slice(&line[start..]).unwrap();
                let mut reply = match req["execute"].as_str().unwrap() {
                    "guest-sync-delimited" => {
                        assert_eq!(line[0], 0xFF);
                        let mut b = b"{\"return\": {\"pid\": 1\n{\"return\": 7}\n\xff".to_vec();
                        b.extend(format!("{{\"return\": {}}}", req["arguments"]["id"]).bytes());
                        b
                    }
                    "guest-exec" => br#"{"return": {"pid": 99}}"#.to_vec(),
                    "guest-exec-status" if polls == 0 => {
                        polls += 1;
                        br#"{"return": {"exited": false}}"#.to_vec()
                    }
                    "guest-exec-status" => {
                        br#"{"return": {"exited": true, "exitcode": 1, "err-data": "bm8K"}}"#
                            .to_vec()
                    }
                    other => panic!("unexpected {other}"),
                };
                reply.push(b'\n');
                out.write_all(&reply).unwrap();
            }
        });
        let guest = Guest::new(&path, "vm test");
        let out = guest.exec(&["false"], Duration::from_secs(10)).unwrap();
        assert_eq!((out.code, out.stderr.as_str()), (1, "no\n"));
        agent.join().unwrap();
        let err = guest.wait_ready(Duration::ZERO).unwrap_err();
        assert!(format!("{err:#}").contains("vm test"), "{err:#}");
    }

    #[test]
    fn sync_ids_fit_in_a_double() {
        let (a, b) = (random_id(), random_id());
        assert!(a < 1 << 53 && b < 1 << 53);
        assert_ne!(a, b);
    }
}
