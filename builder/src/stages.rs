//! A clear step log for long builds: each stage announced, timed, and a
//! summary table at the end.

use std::time::Instant;

#[derive(Debug, Default)]
pub struct Stages {
    pub done: Vec<(String, f64)>,
    total: usize,
}

impl Stages {
    pub fn new(total: usize) -> Self {
        Self {
            done: Vec::new(),
            total,
        }
    }

    /// Run one stage, logging its start and duration.
    pub fn run<T, E>(&mut self, name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let n = self.done.len() + 1;
        tracing::info!("[{n}/{}] {name} ...", self.total);
        let t = Instant::now();
        let r = f();
        let secs = t.elapsed().as_secs_f64();
        match &r {
            Ok(_) => tracing::info!("[{n}/{}] {name}: done in {secs:.1}s", self.total),
            Err(_) => tracing::error!("[{n}/{}] {name}: failed after {secs:.1}s", self.total),
        }
        self.done.push((name.to_string(), secs));
        r
    }

    pub fn summary(&self) -> String {
        let total: f64 = self.done.iter().map(|(_, s)| s).sum();
        let mut out = String::from("stage                 seconds\n");
        for (name, s) in &self.done {
            out.push_str(&format!("{name:<20} {s:>8.1}\n"));
        }
        out.push_str(&format!("{:<20} {total:>8.1}\n", "total"));
        out
    }
}
