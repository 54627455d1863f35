//! `habuild`: bake immutable, self-assembling bare-metal Kubernetes node images.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use builder::build::{self, BuildOptions, Images};
use builder::cluster_status;
use builder::error::BuildError;
use builder::exec::HostExec;
use builder::kubeconfig;
use builder::locate;
use clap::{Parser, Subcommand};

/// Bake one immutable OS image that every bare-metal node boots; on first boot
/// the nodes find each other and assemble an HA Kubernetes cluster themselves.
///
/// Exit codes: 0 success; 1 build failed (a tool or a download failed);
/// 2 bad command line or bad input file (the message names file, line and key);
/// 3 a required host tool is missing (run scripts/setup).
#[derive(Debug, Parser)]
#[command(name = "habuild", version, about, long_about)]
struct Cli {
    /// More output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a node image: <name>.raw (GPT disk to flash), <name>.qcow2, manifest.json.
    ///
    /// Example:
    ///   habuild image --profile configs/debian-12.toml --cluster configs/cluster.example.toml --out out/
    ///
    /// Nothing is written at the output paths unless the whole build succeeds.
    ///
    /// Builds are bit-identical by default: the epoch every timestamp and GUID
    /// derives from is --source-date-epoch, else $SOURCE_DATE_EPOCH, else the
    /// profile's [rootfs] source_date_epoch, else the newest Date: of the signed
    /// InRelease files the packages were resolved against (manifest.json records
    /// which: source_date_epoch_from).
    ///
    /// Builds are incremental: the installed package tree is cached under
    /// <cache>/base/<key>, keyed by the resolved package set with versions,
    /// mirrors, release, hooks, epoch and habuild's base format; a rebuild with
    /// the same key only redoes the overlay, agent, kube binaries, finalize,
    /// root image, ESP and disk. An incremental build has the same bytes as a
    /// cold one.
    Image(ImageArgs),
    /// Validate profiles and cluster files without building.
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Cluster secrets.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Look at a running cluster from any machine on its network.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Debug, clap::Args)]
struct ImageArgs {
    /// Image profile (configs/<distro>.toml).
    #[arg(long, value_name = "FILE")]
    profile: PathBuf,
    /// cluster.toml to validate and write onto the ESP as habuild/cluster.toml.
    /// Without it the image boots and waits for one to be put on the ESP.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "out")]
    out: PathBuf,
    /// Cache: downloaded packages (per distro/release/arch), the apt index,
    /// the installed base trees (see --cache-keep) and kube binaries.
    #[arg(
        long,
        value_name = "DIR",
        env = "HABUILD_CACHE",
        default_value = "/var/cache/habuild"
    )]
    cache: PathBuf,
    /// Replace a profile repo's URL: ID=URL (repeatable), e.g. debian=file:///srv/mirror/debian.
    #[arg(long = "mirror", value_name = "ID=URL")]
    mirrors: Vec<String>,
    /// Read the image overlays from this directory (laid out like the checkout's
    /// images/) instead of the copy compiled into habuild; for editing overlays
    /// without rebuilding habuild.
    #[arg(long, value_name = "DIR", env = "HABUILD_IMAGES")]
    images: Option<PathBuf>,
    /// The habuild-agent binary to bake in (default: habuild-agent next to
    /// this habuild, else the first on PATH).
    #[arg(long, value_name = "FILE", env = "HABUILD_AGENT")]
    agent: Option<PathBuf>,
    /// Timestamp for every file and filesystem (default: $SOURCE_DATE_EPOCH,
    /// else the profile's [rootfs] source_date_epoch, else the signed index's newest Date:).
    #[arg(long, value_name = "SECONDS")]
    source_date_epoch: Option<u64>,
    /// How many installed base trees, and how many root images, the cache
    /// keeps (least recently used go first; a base tree is the size of an
    /// installed root, ~1 GiB; a root image its compressed filesystem).
    #[arg(
        long,
        value_name = "N",
        env = "HABUILD_CACHE_KEEP",
        default_value_t = 2
    )]
    cache_keep: usize,
    /// Install the base tree anew and make the root image anew even when the
    /// cache holds them (the image is built from the fresh tree; the cache
    /// keeps one copy per key).
    #[arg(long)]
    cold: bool,
    /// Keep the work directory (rootfs, staging) for inspection.
    #[arg(long)]
    keep_work: bool,
    /// Print the manifest as JSON on stdout when done.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ProfileCmd {
    /// Check a profile (configs/<distro>.toml) or a cluster file (has a [cluster] table).
    Check {
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SecretCmd {
    /// Print a new random cluster secret (64 hex digits) for cluster.toml.
    New,
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Show what every agent of a running cluster says: phase, role, Raft, plan
    ///
    /// Listens to mDNS (_habuild._tcp.local.) for --timeout seconds without
    /// announcing anything and keeps only the announcements whose MAC verifies
    /// with the cluster file's secret (the others are counted, never trusted).
    /// Then asks each agent for its status over the encrypted, authenticated
    /// agent transport (TCP 7946). Run it on the cluster network with the
    /// cluster file the nodes were built with.
    ///
    /// Examples:
    ///   habuild cluster status --cluster cluster.toml
    ///   habuild cluster status --cluster cluster.toml --interface eth0 --json | jq .
    ///
    /// One row per agent: node id (* marks the Raft leader), hostname,
    /// address, phase, planned role, Raft state, term and leader, plan
    /// version, what the agent rejected (mDNS announcements, handshakes), the
    /// members it sees down and what it is waiting for; then agents that announced themselves but did
    /// not answer, and a summary: how many answered, the leader, and whether
    /// all agree on the plan. --json prints one document instead:
    ///   {"version": 1, "agents": [<status>...], "unreachable": [...],
    ///    "rejected_announcements": {...}, "member_health": {total, up, down: [...]}}
    /// (schema: module docs of builder::cluster_status). Members the Raft
    /// leader no longer hears from are shown DOWN (table column, a "down:"
    /// line and the summary: "2/3 members up, X down"). REJECTED auth=N
    /// counts peers that failed authentication (no cluster secret); handshake
    /// timeouts and aborts are listed apart. Older agents are read too.
    /// Status documents never contain the secret or keys.
    ///
    /// --gluster shows the storage instead: the volume (type, replica,
    /// bricks), each node's gluster steps, and the heketi topology.json
    /// (with --json: {"gluster": {...,"topology": ...}, "steps": [...]}).
    ///   habuild cluster status --cluster cluster.toml --gluster --json | jq .gluster.topology
    ///
    /// --timeline shows where each node's boot went: one block per node with
    /// power-on (kernel start), agent start, discovery (first peer seen),
    /// Raft group, plan, and each converge step's start and done, as the
    /// time of day (UTC) and as seconds since that node's power-on, with how
    /// long each step took and how long it waited on others first (with
    /// --json: each agent's "timeline", unix seconds).
    ///   habuild cluster status --cluster cluster.toml --timeline
    ///   habuild cluster status --cluster cluster.toml --json | jq '.agents[].timeline'
    ///
    /// Exit codes: 0 at least one agent answered; 1 none found or none
    /// answered (the message says whether announcements failed verification,
    /// i.e. another secret); 2 bad cluster file (file, line and key named).
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),
    /// Fetch the cluster's admin kubeconfig (server https://VIP:6443)
    ///
    /// Finds the agents like `habuild cluster status` does (mDNS, verified
    /// with the cluster file's secret, nothing announced) and asks them over
    /// the encrypted, authenticated agent transport (TCP 7946) for the admin
    /// kubeconfig: the agent renders it from the cluster CA and the admin
    /// client certificate (CN=kubernetes-admin, O=system:masters) the Raft
    /// leader issued; its server is the plan's VIP on port 6443. Whoever
    /// holds the cluster file's secret already owns the cluster, so that is
    /// the only credential asked for.
    ///
    /// The kubeconfig carries the admin's private key. With --out it is
    /// written atomically with mode 0600 (a temporary file in the same
    /// directory, renamed over FILE: never a partial file); without --out
    /// it goes to stdout.
    ///
    /// Examples:
    ///   habuild cluster kubeconfig --cluster cluster.toml --out admin.conf
    ///   kubectl --kubeconfig admin.conf get nodes -o wide
    ///   habuild cluster kubeconfig --cluster cluster.toml > ~/.kube/config
    ///
    /// Exit codes: 0 kubeconfig written (or printed); 1 no agent found or
    /// none answered (the message says whether announcements failed
    /// verification, i.e. another secret), or FILE could not be written;
    /// 2 bad command line or bad cluster file (file, line and key named);
    /// 4 agents answered but the cluster has not issued its admin
    /// certificate yet (plan not committed? try again in a minute), or
    /// Kubernetes is disabled in the site file.
    #[command(verbatim_doc_comment)]
    Kubeconfig(KubeconfigArgs),
}

#[derive(Debug, clap::Args)]
struct KubeconfigArgs {
    /// The cluster file the nodes were built with (its name and secret are used).
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
    /// Write the kubeconfig here (mode 0600, atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Seconds to listen for announcements; also how long each agent has to answer.
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_secs)]
    timeout: Duration,
    /// Run mDNS only on this interface (default: every interface).
    #[arg(long, value_name = "IFACE")]
    interface: Option<String>,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The cluster file the nodes were built with (its name and secret are used).
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Seconds to listen for announcements; also how long each agent has to answer.
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_secs)]
    timeout: Duration,
    /// Run mDNS only on this interface (default: every interface).
    #[arg(long, value_name = "IFACE")]
    interface: Option<String>,
    /// Show the Gluster volume, the storage steps and topology.json.
    #[arg(long)]
    gluster: bool,
    /// Show when each node reached power-on, agent start, discovery, Raft
    /// group, plan and each step's start and done (seconds since its
    /// power-on); --json carries it in every agent's "timeline".
    #[arg(long, conflicts_with = "gluster")]
    timeline: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "expected seconds, more than 0 and at most 3600, got {s:?}"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.cmd {
        Cmd::Image(args) => image(args),
        Cmd::Profile(ProfileCmd::Check { files }) => check(&files),
        Cmd::Secret(SecretCmd::New) => secret_new(),
        Cmd::Cluster(ClusterCmd::Status(args)) => cluster_status(args),
        Cmd::Cluster(ClusterCmd::Kubeconfig(args)) => cluster_kubeconfig(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(kubeconfig::FetchError::NotAvailable(_)) = e.downcast_ref() {
        return 4;
    }
    match e.downcast_ref::<BuildError>() {
        Some(BuildError::Config(_) | BuildError::Invalid(_)) => 2,
        Some(BuildError::MissingPackages { .. }) => 2,
        Some(BuildError::ToolMissing { .. }) => 3,
        _ => 1,
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

fn image(args: ImageArgs) -> anyhow::Result<()> {
    let opts = BuildOptions {
        images: match args.images {
            Some(dir) => Images::Dir(dir),
            None => Images::Embedded,
        },
        agent: match args.agent {
            Some(p) => p,
            None => default_agent()?,
        },
        profile: args.profile,
        cluster: args.cluster,
        out: args.out,
        cache: args.cache,
        mirrors: args.mirrors,
        source_date_epoch: args.source_date_epoch,
        keep_bases: args.cache_keep,
        cold: args.cold,
        keep_work: args.keep_work,
    };
    tracing::info!(
        "overlays: {}; agent: {}",
        match &opts.images {
            Images::Dir(dir) => dir.display().to_string(),
            Images::Embedded => "embedded in habuild".to_string(),
        },
        opts.agent.display()
    );
    let report = build::build_image(&HostExec, &opts)?;
    eprintln!("\n{}", report.summary);
    for a in &report.manifest.artifacts {
        eprintln!("{}  {} ({} MiB)", a.sha256, a.file, a.size / (1024 * 1024));
    }
    eprintln!("wrote {}", report.manifest_path.display());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.manifest)?);
    }
    Ok(())
}

fn default_agent() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the habuild binary")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    Ok(locate::find_agent(
        dir,
        std::env::var_os("PATH").as_deref(),
    )?)
}

fn check(files: &[PathBuf]) -> anyhow::Result<()> {
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let is_cluster = text.lines().any(|l| l.trim() == "[cluster]");
        if is_cluster {
            build::load_cluster(Some(f))?;
            println!("{}: ok (cluster file)", f.display());
        } else {
            build::load_profile(f, &[])?;
            println!("{}: ok (profile)", f.display());
        }
    }
    Ok(())
}

fn secret_new() -> anyhow::Result<()> {
    let s = firstboot::cluster::Secret::generate().context("reading /dev/urandom")?;
    println!("{}", s.to_hex());
    Ok(())
}

fn cluster_status(args: StatusArgs) -> anyhow::Result<()> {
    // a bad cluster file is bad input: exit 2, nothing sent on the network
    let cfg = firstboot::cluster::ClusterConfig::load(&args.cluster).map_err(BuildError::Config)?;
    let opts = cluster_status::Options::new(args.timeout, args.interface);
    let report = cluster_status::query(&cfg, &opts).context("asking the cluster's agents")?;
    match (args.gluster, args.json) {
        (false, true) => println!("{}", serde_json::to_string_pretty(&report.to_json())?),
        (false, false) if args.timeline => print!("{}", report.render_timeline()),
        (false, false) => print!("{}", report.render()),
        (true, true) => println!("{}", serde_json::to_string_pretty(&report.gluster())?),
        (true, false) => print!("{}", report.render_gluster()),
    }
    anyhow::ensure!(
        !report.agents.is_empty(),
        "{}",
        report.nobody_answered(&cfg.cluster.name, args.timeout)
    );
    Ok(())
}

fn cluster_kubeconfig(args: KubeconfigArgs) -> anyhow::Result<()> {
    // a bad cluster file is bad input: exit 2, nothing sent on the network
    let cfg = firstboot::cluster::ClusterConfig::load(&args.cluster).map_err(BuildError::Config)?;
    let opts = cluster_status::Options::new(args.timeout, args.interface);
    // FetchError stays the error's root, so exit_code finds it
    let got = kubeconfig::fetch(&cfg, &opts)?;
    match &args.out {
        Some(path) => {
            kubeconfig::write_private(path, &got.kubeconfig)?;
            eprintln!(
                "wrote {} (cluster {}, server {}, plan v{}); try: kubectl --kubeconfig {} get nodes",
                path.display(),
                got.cluster,
                got.server,
                got.plan,
                path.display()
            );
        }
        None => print!("{}", got.kubeconfig),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubeconfig_help_teaches_and_names_exit_codes() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("cluster")
            .and_then(|c| c.find_subcommand_mut("kubeconfig"))
            .expect("cluster kubeconfig exists")
            .render_long_help()
            .to_string();
        for want in [
            "habuild cluster kubeconfig --cluster cluster.toml --out admin.conf",
            "kubectl --kubeconfig admin.conf get nodes",
            "mode 0600",
            "Exit codes: 0 kubeconfig written",
            "4 agents answered but the cluster has not issued its admin",
        ] {
            assert!(help.contains(want), "{want:?} missing from\n{help}");
        }
        let cli = Cli::try_parse_from([
            "habuild",
            "cluster",
            "kubeconfig",
            "--cluster",
            "c.toml",
            "--out",
            "admin.conf",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Cluster(ClusterCmd::Kubeconfig(a)) => {
                assert_eq!(a.out, Some(PathBuf::from("admin.conf")));
                assert_eq!(a.timeout, Duration::from_secs(3));
            }
            other => panic!("{other:?}"),
        }
    }
}
