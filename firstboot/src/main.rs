//! `habuild-agent`: the first-boot agent baked into every habuild image.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firstboot::cluster::{ClusterConfig, ESP_CLUSTER_PATH};
use firstboot::facts;
use sha2::{Digest, Sha256};

/// The habuild node agent: reads the site's cluster.toml from the ESP, learns
/// this host's facts, and (in later phases) finds its peers and converges this
/// host to its planned role. Progress goes to the journal and the consoles.
#[derive(Debug, Parser)]
#[command(name = "habuild-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent (what habuild-agent.service starts).
    Run {
        /// The cluster file (normally on the ESP).
        #[arg(long, default_value = ESP_CLUSTER_PATH)]
        cluster: PathBuf,
        /// Print facts once and exit instead of staying up.
        #[arg(long)]
        once: bool,
    },
    /// Print this host's facts as JSON.
    Facts,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .without_time()
        .init();
    match Cli::parse().cmd {
        Cmd::Run { cluster, once } => run(&cluster, once),
        Cmd::Facts => {
            println!(
                "{}",
                serde_json::to_string_pretty(&facts::collect(Path::new("/")))?
            );
            Ok(())
        }
    }
}

fn run(cluster_path: &Path, once: bool) -> anyhow::Result<()> {
    let facts = facts::collect(Path::new("/"));
    // One line a person can read on the console, one a machine can parse.
    println!(
        "habuild-agent: node {} root={} ({}) var={} ({} MiB)",
        facts.machine_id,
        if facts.root_ro { "ro" } else { "rw" },
        facts.root_fstype,
        facts.var_device.as_deref().unwrap_or("-"),
        facts.var_partition_bytes.unwrap_or(0) / (1024 * 1024),
    );
    println!("HABUILD-FACTS {}", serde_json::to_string(&facts)?);
    let Some((cluster, sha)) = wait_for_cluster_file(cluster_path, once)? else {
        return Ok(());
    };
    println!(
        "habuild-agent: cluster {} (bootstrap_expect {}) from {}",
        cluster.cluster.name,
        cluster.cluster.bootstrap_expect,
        cluster_path.display()
    );
    let line = serde_json::json!({
        "name": cluster.cluster.name,
        "bootstrap_expect": cluster.cluster.bootstrap_expect,
        "file": cluster_path,
        "sha256": sha,
    });
    println!("HABUILD-CLUSTER {line}");
    if once {
        return Ok(());
    }
    println!(
        "habuild-agent: phase=identified; discovery and consensus are not part of this build yet"
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Read and validate the cluster file, waiting (and saying so) until it is present and valid.
fn wait_for_cluster_file(
    path: &Path,
    once: bool,
) -> anyhow::Result<Option<(ClusterConfig, String)>> {
    let mut said = String::new();
    loop {
        let attempt = std::fs::read(path)
            .with_context(|| {
                format!(
                    "{} not readable: put the site's cluster.toml on the ESP",
                    path.display()
                )
            })
            .and_then(|bytes| {
                let cfg = ClusterConfig::load(path)?;
                Ok((cfg, hex::encode(Sha256::digest(&bytes))))
            });
        match attempt {
            Ok(v) => return Ok(Some(v)),
            Err(e) if once => {
                println!("habuild-agent: waiting for a valid cluster file: {e:#}");
                return Ok(None);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != said {
                    println!("habuild-agent: waiting for a valid cluster file: {msg}");
                    said = msg;
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    }
}
