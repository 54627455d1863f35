//! `habuild-agent`: the first-boot agent baked into every habuild image.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firstboot::agent::{self, AgentConfig};
use firstboot::cluster::Ipv4Cidr;
use firstboot::cluster::{ClusterConfig, ESP_CLUSTER_PATH};
use firstboot::consensus::ConsensusConfig;
use firstboot::facts;
use firstboot::host::real::HostExec;
use firstboot::netif;
use firstboot::protocol::{self, StatusDoc, STATUS_VERSION};
use firstboot::source::SourceFile;
use firstboot::state::{node_id_from_machine_id, NodeId};
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
        /// The cluster file. Default: /run/habuild/cluster.toml when a
        /// network (live) boot fetched one (kernel argument habuild.cluster=URL),
        /// else the ESP's /boot/efi/habuild/cluster.toml.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Print facts once and exit instead of staying up.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Print the running agent's status JSON (from its status socket).
    Status {
        #[arg(long, default_value = agent::status::STATUS_SOCKET)]
        status_socket: PathBuf,
    },
    /// Print this host's facts as JSON.
    Facts,
    /// Exit 0 when a TCP connection to ADDR (host:port) opens within 2 s,
    /// else 1. keepalived's health check of the local haproxy runs this.
    ///
    /// With --http PATH: GET PATH, print the body, exit 0 only on status 200
    /// (e.g. `habuild-agent probe 10.0.0.250:8404 --http /healthz` names the
    /// node holding the API VIP).
    Probe {
        #[arg(value_name = "ADDR")]
        addr: SocketAddr,
        #[arg(long, value_name = "PATH")]
        http: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServicesArg {
    /// systemd units (a booted node)
    Systemd,
    /// child processes of the agent (running outside systemd, e.g. in a
    /// network namespace); logs under <state-dir>/services
    Supervise,
    /// no converge steps: discovery, consensus and the plan only
    None,
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// Persistent state (Raft log, bootstrap decisions, transport key).
    #[arg(long, default_value = agent::STATE_DIR)]
    state_dir: PathBuf,
    /// Address the agent listens on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], agent::AGENT_PORT)))]
    listen: SocketAddr,
    /// Node id (decimal or 0x-hex); default: derived from /etc/machine-id.
    #[arg(long, value_parser = parse_node_id)]
    node_id: Option<NodeId>,
    /// This node's cluster-network address, e.g. 10.88.0.2/24; default: an
    /// IPv4 address of the cluster interface (see --interface).
    #[arg(long)]
    advertise: Option<Ipv4Cidr>,
    /// The cluster network interface (mDNS runs only there); default:
    /// cluster.toml's network.interface, and when that is "auto", the first
    /// non-loopback IPv4 address (inside network.subnet when given).
    #[arg(long)]
    interface: Option<String>,
    /// Host name of this member; default: the one chosen on first boot by
    /// cluster.toml's network.hostname pattern (kept in the state dir).
    #[arg(long)]
    hostname: Option<String>,
    /// Unix socket serving the status JSON.
    #[arg(long, default_value = agent::status::STATUS_SOCKET)]
    status_socket: PathBuf,
    /// Root directory the converge steps write files under (certificates,
    /// etcd data, keepalived/haproxy configs).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// How the steps run etcd, keepalived and haproxy.
    #[arg(long, value_enum, default_value = "systemd")]
    services: ServicesArg,
}

fn parse_node_id(s: &str) -> Result<NodeId, String> {
    let id = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("node id {s:?}: {e}"))?;
    if id == 0 {
        return Err("node id must not be 0".into());
    }
    Ok(id)
}

/// The log filter without `RUST_LOG`. openraft logs every vote request
/// and election step at info (about 180 lines per node while three
/// emulated nodes assembled), and its replication module a warning and an
/// error for every failed attempt to reach a peer, for as long as the peer
/// is down; on a VM the console is a serial line that costs emulated CPU.
/// openraft keeps its warnings and errors but not the replication retries;
/// the transport says once when a peer becomes unreachable and when it is
/// back. `RUST_LOG=info` shows everything again.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::replication=off";

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_target(false)
        .without_time()
        .init();
    match Cli::parse().cmd {
        Cmd::Run {
            cluster,
            once,
            agent,
        } => run(&cluster.unwrap_or_else(default_cluster_path), once, agent),
        Cmd::Status { status_socket } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            print!("{}", rt.block_on(agent::status::fetch(&status_socket))?);
            Ok(())
        }
        Cmd::Probe { addr, http } => probe(addr, http.as_deref()),
        Cmd::Facts => {
            println!(
                "{}",
                serde_json::to_string_pretty(&facts::collect(Path::new("/")))?
            );
            Ok(())
        }
    }
}

fn probe(addr: SocketAddr, http: Option<&str>) -> anyhow::Result<()> {
    use firstboot::host::Net;
    let result = match http {
        None => std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| format!("{addr}: {e}")),
        Some(path) => match firstboot::host::real::HostNet.http_get(addr, path) {
            Ok((200, body)) => {
                println!("{body}");
                Ok(())
            }
            Ok((code, body)) => Err(format!("{addr}{path}: HTTP {code}: {body}")),
            Err(e) => Err(e.to_string()),
        },
    };
    result.map_err(|e| {
        eprintln!("habuild-agent probe: {e}");
        std::process::exit(1)
    })
}

/// Where the live boot's initramfs puts the cluster file it fetched.
const LIVE_CLUSTER_PATH: &str = "/run/habuild/cluster.toml";

/// The live boot's cluster file when there is one, else the ESP's.
fn default_cluster_path() -> PathBuf {
    let live = PathBuf::from(LIVE_CLUSTER_PATH);
    if live.exists() {
        live
    } else {
        PathBuf::from(ESP_CLUSTER_PATH)
    }
}

fn run(cluster_path: &Path, once: bool, args: AgentArgs) -> anyhow::Result<()> {
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
    let Some(loaded) = wait_for_cluster_file(cluster_path, once)? else {
        return Ok(());
    };
    let cluster = loaded.cfg;
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
        "sha256": loaded.sha256,
    });
    println!("HABUILD-CLUSTER {line}");
    if once {
        return Ok(());
    }
    let emulated = facts::emulated_cpu();
    let consensus = ConsensusConfig::for_cpu(emulated);
    if emulated {
        firstboot::gluster::set_query_timeout(firstboot::gluster::QUERY_TIMEOUT_EMULATED_SECS);
        println!(
            "habuild-agent: emulated CPU (QEMU without KVM): Raft heartbeat {} ms, elections after {}-{} ms, gluster queries bounded at {} s",
            consensus.heartbeat_ms,
            consensus.election_min_ms,
            consensus.election_max_ms,
            firstboot::gluster::query_timeout()
        );
    }
    let services = match args.services {
        ServicesArg::Systemd => agent::converge::ServiceMode::Systemd,
        ServicesArg::Supervise => {
            agent::converge::ServiceMode::Supervise(args.state_dir.join("services"))
        }
        ServicesArg::None => agent::converge::ServiceMode::Off,
    };
    let node_id = args
        .node_id
        .unwrap_or_else(|| node_id_from_machine_id(&facts.machine_id));
    // The kernel's name until the agent has established its own.
    let hostname = args.hostname.clone().unwrap_or(facts.hostname);
    let wish = netif::Wish::new(
        args.interface.as_deref(),
        &cluster.network,
        loaded.interface_line,
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let (advertise, interface) = match args.advertise {
                Some(a) => (a, wish.name().map(str::to_string)),
                None => {
                    let waiting = Waiting {
                        node_id,
                        hostname: &hostname,
                        status_socket: &args.status_socket,
                    };
                    let c = wait_for_interface(&wish, &cluster, &waiting).await?;
                    // "auto" keeps mDNS on every interface, as before.
                    (c.addr, wish.name().map(|_| c.interface))
                }
            };
            let cfg = AgentConfig {
                cluster,
                state_dir: args.state_dir,
                listen: args.listen,
                node_id,
                hostname: args.hostname,
                advertise,
                interface,
                status_socket: args.status_socket,
                consensus,
                services,
                root: args.root,
                emulated,
            };
            println!(
                "habuild-agent: node id {:016x} at {}:{} (state in {})",
                cfg.node_id,
                cfg.advertise.addr,
                cfg.listen.port(),
                cfg.state_dir.display()
            );
            agent::run(cfg).await
        })
}

/// How often a missing cluster interface is looked for again.
const INTERFACE_RETRY: Duration = Duration::from_secs(3);

/// Who is waiting, for the status document served meanwhile.
struct Waiting<'a> {
    node_id: NodeId,
    hostname: &'a str,
    status_socket: &'a Path,
}

/// Looks for the cluster interface and its address until they are there.
/// Meanwhile the console says what is wrong (once per new reason) and the
/// status socket answers with it; that socket is closed before returning,
/// for the agent to bind it again.
async fn wait_for_interface(
    wish: &netif::Wish,
    cluster: &ClusterConfig,
    waiting: &Waiting<'_>,
) -> anyhow::Result<netif::Choice> {
    let mut said = String::new();
    let mut serving: Option<(agent::status::Shared, tokio::task::JoinHandle<()>)> = None;
    loop {
        let found = netif::links(&HostExec)
            .and_then(|links| netif::choose(wish, cluster.network.subnet, &links));
        let msg = match found {
            Ok(choice) => {
                if let Some((_, task)) = serving.take() {
                    task.abort();
                    let _ = task.await;
                    println!(
                        "habuild-agent: {wish}: using {} ({})",
                        choice.interface, choice.addr
                    );
                }
                return Ok(choice);
            }
            Err(e) => e.to_string(),
        };
        if msg != said {
            println!("habuild-agent: error: {msg}");
            println!(
                "habuild-agent: waiting for the cluster network interface (retrying every {} s)",
                INTERFACE_RETRY.as_secs()
            );
            said.clone_from(&msg);
        }
        let shared = match &serving {
            Some((shared, _)) => shared.clone(),
            None => {
                let shared = agent::status::Shared::default();
                let listener = agent::status::bind(waiting.status_socket)?;
                let task = tokio::spawn(agent::status::serve(listener, shared.clone()));
                serving = Some((shared.clone(), task));
                shared
            }
        };
        *shared.write().unwrap_or_else(|e| e.into_inner()) = waiting_status(waiting, &msg);
        tokio::time::sleep(INTERFACE_RETRY).await;
    }
}

/// The status document while the agent waits for its interface.
fn waiting_status(w: &Waiting<'_>, error: &str) -> StatusDoc {
    StatusDoc {
        version: STATUS_VERSION,
        node_id: protocol::hex(w.node_id),
        hostname: w.hostname.to_string(),
        phase: "starting".into(),
        waiting_for: Some("the cluster network interface".into()),
        error: Some(error.to_string()),
        ..StatusDoc::default()
    }
}

/// A valid cluster file as read.
struct Loaded {
    cfg: ClusterConfig,
    sha256: String,
    /// The line `network.interface` is written on, if it is.
    interface_line: Option<usize>,
}

/// The ESP's device link (fstab mounts `PARTLABEL=ESP` on /boot/efi).
const ESP_DEVICE: &str = "/dev/disk/by-partlabel/ESP";

/// Whether the ESP is there (`device_present`) but nothing is mounted on
/// /boot/efi (`mounts`: /proc/self/mounts).
fn esp_mount_missing(mounts: &str, device_present: bool) -> bool {
    device_present
        && !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/boot/efi"))
}

/// systemd gives up on the ESP's `nofail` mount when udev has not named its
/// device within 90 s of boot, and never tries again. On a host slow
/// enough (emulated nodes on a loaded machine: seen in `cluster_qemu`, two
/// of three nodes waited for ever) the device comes later; the agent, which
/// needs the cluster file on it, starts the mount again.
fn retry_esp_mount() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !esp_mount_missing(&mounts, Path::new(ESP_DEVICE).exists()) {
        return;
    }
    println!(
        "habuild-agent: the ESP ({ESP_DEVICE}) is there but not mounted on /boot/efi (systemd gave up waiting for it): mounting it"
    );
    let started = std::process::Command::new("systemctl")
        .args(["start", "--no-block", "boot-efi.mount"])
        .status();
    match started {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!(status = %s, "systemctl start boot-efi.mount"),
        Err(e) => tracing::warn!(error = %e, "running systemctl start boot-efi.mount"),
    }
}

/// Read and validate the cluster file, waiting (and saying so) until it is present and valid.
fn wait_for_cluster_file(path: &Path, once: bool) -> anyhow::Result<Option<Loaded>> {
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
                let text = std::str::from_utf8(&bytes)
                    .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
                let src = SourceFile::from_text(path, text);
                Ok(Loaded {
                    cfg: ClusterConfig::from_source(&src)?,
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    interface_line: src.locate("network.interface").map(|(line, _)| line),
                })
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
                if path == Path::new(ESP_CLUSTER_PATH) {
                    retry_esp_mount();
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_esp_is_mounted_again_only_when_it_is_there_and_not_mounted() {
        let mounted = "/dev/vda2 / erofs ro 0 0\n/dev/vda1 /boot/efi vfat rw 0 0\n";
        let not = "/dev/vda2 / erofs ro 0 0\n/dev/vda4 /var ext4 rw 0 0\n";
        assert!(esp_mount_missing(not, true));
        assert!(!esp_mount_missing(mounted, true));
        assert!(!esp_mount_missing(not, false), "no ESP (a live node)");
        assert!(!esp_mount_missing("x /boot/efi/x y\n", false));
    }

    #[test]
    fn the_waiting_status_is_a_typed_document_with_the_error() {
        let w = Waiting {
            node_id: 0xab,
            hostname: "n1",
            status_socket: Path::new("/nonexistent"),
        };
        let v = waiting_status(&w, "network.interface = \"eth7\" (cluster.toml line 16): no such interface; interfaces here: eth0");
        // what the status socket serves, read back as a reader would
        let doc = StatusDoc::parse(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(doc.version, STATUS_VERSION);
        assert_eq!(doc.phase, "starting");
        assert_eq!(doc.node_id, "00000000000000ab");
        assert_eq!(doc.hostname, "n1");
        assert_eq!(
            doc.waiting_for.as_deref(),
            Some("the cluster network interface")
        );
        assert!(doc.error.unwrap().contains("no such interface"));
    }
}
