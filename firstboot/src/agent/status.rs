//! The status document ([`crate::protocol::StatusDoc`]) on a unix socket:
//! each connection gets the current document as JSON (one document, then
//! EOF). It never contains the cluster secret or keys.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Default path of the status socket.
pub const STATUS_SOCKET: &str = "/run/habuild/status.sock";

/// Shared, latest status document (serialised when served).
pub type Shared = Arc<RwLock<crate::protocol::StatusDoc>>;

/// Binds `path` (replacing a stale socket, creating the directory) and serves
/// the status until the task is dropped.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale {}", path.display()))
        }
        _ => {}
    }
    UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
}

pub async fn serve(listener: UnixListener, status: Shared) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let body = {
            let v = status.read().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec_pretty(&*v).unwrap_or_default()
        };
        tokio::spawn(async move {
            let _ = conn.write_all(&body).await;
            let _ = conn.write_all(b"\n").await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Reads the status document from the socket at `path`.
pub async fn fetch(path: &PathBuf) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(path).await.with_context(|| {
        format!(
            "connecting to {} (is habuild-agent running?)",
            path.display()
        )
    })?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}
