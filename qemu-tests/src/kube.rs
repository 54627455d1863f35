//! Kubernetes from the test namespace, as an operator would drive it: the
//! admin kubeconfig fetched with `habuild cluster kubeconfig` (the agents'
//! authenticated channel), and the real `kubectl` (the one
//! `scripts/build-kube` built for the image) talking to the API through
//! the VIP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::image::{release_bin, workspace};
use crate::TestNet;

/// The directory of the kube binaries the image carries, from
/// `scripts/build-kube` (prints it; builds once per machine, then does
/// nothing).
pub fn kube_bin_dir() -> Result<PathBuf> {
    let script = workspace().join("scripts/build-kube");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}\nkubectl for the tests comes from it: run it by hand to see why",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !dir.join("kubectl").is_file() {
        bail!(
            "{} printed {}, which holds no kubectl",
            script.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// Fetches the admin kubeconfig into `out` with `habuild cluster
/// kubeconfig`, run in the namespace.
pub fn fetch_kubeconfig(net: &TestNet, cluster_file: &Path, out: &Path) -> Result<()> {
    let habuild = release_bin("habuild")?;
    let o = net
        .exec(&habuild)
        .args(["cluster", "kubeconfig", "--cluster"])
        .arg(cluster_file)
        .arg("--out")
        .arg(out)
        .output()
        .context("running habuild cluster kubeconfig")?;
    if !o.status.success() {
        bail!(
            "habuild cluster kubeconfig failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// `kubectl` with the admin kubeconfig, in the namespace.
pub struct Kubectl<'a> {
    pub net: &'a TestNet,
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl<'_> {
    /// Runs `kubectl args…`; stdout on success, an error with stderr
    /// otherwise. Every call has a 20 s request timeout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_stdin(args, "")
    }

    /// Like [`Kubectl::run`], with `stdin` fed to the command (`apply -f -`).
    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        use std::io::Write;
        let mut child = self
            .net
            .exec(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(stdin.as_bytes())?;
        let o = child.wait_with_output()?;
        if !o.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// [`Kubectl::run_stdin`], tried again for up to `limit` while it
    /// fails: an emulated apiserver answers the odd request with "an error
    /// on the server" or a timeout, which an operator would simply retry.
    /// The last error when it never succeeds.
    pub fn retrying(&self, args: &[&str], stdin: &str, limit: Duration) -> Result<String> {
        let mut last = String::new();
        crate::cluster::wait_until(&format!("kubectl {}", args.join(" ")), limit, || match self
            .run_stdin(args, stdin)
        {
            Ok(out) => Some(out),
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        })
        .with_context(|| format!("last error: {last}"))
    }

    /// Every node with whether its `Ready` condition is `True`.
    pub fn nodes(&self) -> Result<Vec<NodeState>> {
        let text = self.run(&["get", "nodes", "-o", "json"])?;
        parse_nodes(&text)
    }
}

/// One Kubernetes node as `kubectl get nodes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub ready: bool,
    pub internal_ip: Option<String>,
    pub kubelet_version: String,
}

#[derive(Deserialize)]
struct List {
    items: Vec<Item>,
}
#[derive(Deserialize)]
struct Item {
    metadata: Meta,
    status: NodeStatus,
}
#[derive(Deserialize)]
struct Meta {
    name: String,
}
#[derive(Deserialize)]
struct NodeStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    addresses: Vec<Address>,
    #[serde(rename = "nodeInfo")]
    node_info: Option<NodeInfo>,
}
#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}
#[derive(Deserialize)]
struct Address {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}
#[derive(Deserialize)]
struct NodeInfo {
    #[serde(rename = "kubeletVersion")]
    kubelet_version: String,
}

/// Reads `kubectl get nodes -o json`.
pub fn parse_nodes(text: &str) -> Result<Vec<NodeState>> {
    let list: List = serde_json::from_str(text).context("kubectl get nodes -o json")?;
    Ok(list
        .items
        .into_iter()
        .map(|i| NodeState {
            name: i.metadata.name,
            ready: i
                .status
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.status == "True"),
            internal_ip: i
                .status
                .addresses
                .iter()
                .find(|a| a.kind == "InternalIP")
                .map(|a| a.address.clone()),
            kubelet_version: i
                .status
                .node_info
                .map(|n| n.kubelet_version)
                .unwrap_or_default(),
        })
        .collect())
}

/// Waits until the API answers `/readyz` through the kubeconfig's server.
pub fn api_ready(kubectl: &Kubectl, limit: Duration) -> Result<()> {
    let mut last = String::new();
    crate::cluster::wait_until("the API to answer /readyz", limit, || {
        match kubectl.run(&["get", "--raw", "/readyz"]) {
            Ok(t) if t.trim() == "ok" => Some(()),
            Ok(t) => {
                last = t;
                None
            }
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        }
    })
    .with_context(|| format!("last answer: {last}"))
}

/// Waits until `want` nodes are registered and all of them are `Ready`.
pub fn nodes_ready(kubectl: &Kubectl, want: usize, limit: Duration) -> Result<Vec<NodeState>> {
    let mut last = String::new();
    crate::cluster::wait_until(&format!("{want} nodes Ready"), limit, || {
        match kubectl.nodes() {
            Ok(n) => {
                last = format!("{n:?}");
                (n.len() == want && n.iter().all(|x| x.ready)).then_some(n)
            }
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        }
    })
    .with_context(|| format!("last seen: {last}"))
}

/// The workload's pods, once `want` of them are Ready on distinct nodes.
pub fn pods_ready(kubectl: &Kubectl, want: usize, limit: Duration) -> Result<Vec<PodState>> {
    let mut last = String::new();
    crate::cluster::wait_until(
        &format!("{want} web pods Ready on distinct nodes"),
        limit,
        || {
            let text = match kubectl.run(&["get", "pods", "-l", "app=web", "-o", "json"]) {
                Ok(t) => t,
                Err(e) => {
                    last = format!("{e:#}");
                    return None;
                }
            };
            let pods: Vec<PodState> = parse_pods(&text)
                .ok()?
                .into_iter()
                .filter(|p| p.ready)
                .collect();
            last = format!("{pods:?}");
            let nodes: std::collections::BTreeSet<_> =
                pods.iter().map(|p| p.node.clone()).collect();
            (pods.len() == want && nodes.len() == want).then_some(pods)
        },
    )
    .with_context(|| {
        let events = kubectl
            .run(&["get", "events", "-A", "--sort-by=.lastTimestamp"])
            .unwrap_or_default();
        format!("last seen: {last}\nevents:\n{events}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ready_and_addresses() {
        let text = r#"{"items":[
          {"metadata":{"name":"node-a"},"status":{"conditions":[{"type":"MemoryPressure","status":"False"},{"type":"Ready","status":"True"}],
            "addresses":[{"type":"InternalIP","address":"10.77.0.51"},{"type":"Hostname","address":"node-a"}],
            "nodeInfo":{"kubeletVersion":"v1.20.2"}}},
          {"metadata":{"name":"node-b"},"status":{"conditions":[{"type":"Ready","status":"False"}]}}]}"#;
        let n = parse_nodes(text).unwrap();
        assert_eq!(n.len(), 2);
        assert!(n[0].ready);
        assert_eq!(n[0].internal_ip.as_deref(), Some("10.77.0.51"));
        assert_eq!(n[0].kubelet_version, "v1.20.2");
        assert!(!n[1].ready);
        assert_eq!(n[1].internal_ip, None);
    }
}

/// The test workload's image reference (seeded, never pulled).
pub const WORKLOAD_IMAGE: &str = "habuild.test/web:1";

/// Builds the test workload (`qemu-tests/workload/main.go`, static, with
/// Debian's Go: reproducible with `-trimpath` and an empty build id) and
/// packs it with habuild's own OCI writer into
/// `<dir>/web-<sha256 prefix>.tar`, a name that changes with its bytes (the
/// test image's cache key hashes the profile that names it).
pub fn workload_archive(dir: &Path) -> Result<PathBuf> {
    let go = crate::tools::require("go").context(
        "the Kubernetes test workload is built with Go (scripts/build-kube installs golang-go; \
         or apt-get install golang-go)",
    )?;
    std::fs::create_dir_all(dir)?;
    let bin = dir.join("web.bin");
    let src = workspace().join("qemu-tests/workload/main.go");
    let o = Command::new(go)
        .env("CGO_ENABLED", "0")
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("gocache"))
        .args(["build", "-trimpath", "-ldflags=-buildid= -s -w", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running go build")?;
    if !o.status.success() {
        bail!(
            "go build {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let contents = std::fs::read(&bin)?;
    let spec = builder::oci::ImageSpec {
        reference: WORKLOAD_IMAGE.to_string(),
        files: vec![builder::oci::ImageFile {
            path: "web".into(),
            mode: 0o755,
            contents,
        }],
        entrypoint: vec!["/web".into()],
        arch: "amd64".into(),
    };
    let mut bytes = Vec::new();
    builder::oci::write_archive(&spec, &mut bytes)?;
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(&bytes));
    let out = dir.join(format!("web-{}.tar", &sum[..16]));
    if !out.is_file() {
        let tmp = dir.join(".web.tar.partial");
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &out)?;
    }
    Ok(out)
}

/// The workload: one pod per node (required anti-affinity), each serving
/// on :8080 with the host directory `data` (the Gluster mount
/// `/mnt/gluster` on a storage cluster; propagated from the host so a mount
/// made after the pod started is seen; created if missing) at `/data`; a
/// ClusterIP Service `web` (port 80) and a NodePort Service `web-node`
/// (port 30080, `externalTrafficPolicy: Local`, so a node's port is
/// answered by that node's own pod).
pub fn workload_manifest(replicas: u32, data: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector:
              matchLabels:
                app: web
            topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: {WORKLOAD_IMAGE}
        imagePullPolicy: Never
        ports:
        - containerPort: 8080
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        volumeMounts:
        - name: data
          mountPath: /data
          mountPropagation: HostToContainer
      volumes:
      - name: data
        hostPath:
          path: {data}
          type: DirectoryOrCreate
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web-node
  namespace: default
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector:
    app: web
  ports:
  - port: 8080
    targetPort: 8080
    nodePort: {NODE_PORT}
"#
    )
}

/// The NodePort of `web-node`.
pub const NODE_PORT: u16 = 30080;

/// One pod of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub node: String,
    pub ip: String,
    pub ready: bool,
}

/// Reads `kubectl get pods -o json`.
pub fn parse_pods(text: &str) -> Result<Vec<PodState>> {
    let v: serde_json::Value = serde_json::from_str(text).context("kubectl get pods -o json")?;
    let items = v["items"].as_array().context("no items")?;
    Ok(items
        .iter()
        .map(|p| PodState {
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            ip: p["status"]["podIP"].as_str().unwrap_or_default().into(),
            ready: p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            }),
        })
        .collect())
}

/// An HTTP request from the test namespace (curl, 15 s limit): the body on
/// a 2xx answer, an error with what curl said otherwise.
pub fn http(net: &TestNet, method: &str, url: &str, body: Option<&str>) -> Result<String> {
    let mut c = net.exec("curl");
    c.args(["-sS", "--fail-with-body", "--max-time", "15", "-X", method]);
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let o = c.arg(url).output().context("running curl")?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        bail!(
            "{method} {url}: {} {}",
            String::from_utf8_lossy(&o.stderr).trim(),
            text.trim()
        );
    }
    Ok(text)
}

/// The `kubeadm join` line an operator types on a machine the agents do
/// not manage, built the way kubeadm's documentation says: the cluster's
/// bootstrap token (the plan's, read from its `bootstrap-token-*` Secret
/// with the admin kubeconfig) and `sha256:` of the cluster CA's
/// SubjectPublicKeyInfo (DER), taken from the kubeconfig with `openssl`.
/// The API endpoint is the kubeconfig's server (the VIP).
pub fn kubeadm_join_command(kubectl: &Kubectl, kubeconfig: &Path) -> Result<String> {
    let secrets = kubectl.retrying(
        &[
            "-n",
            "kube-system",
            "get",
            "secrets",
            "--field-selector",
            "type=bootstrap.kubernetes.io/token",
            "-o",
            "json",
        ],
        "",
        Duration::from_secs(120),
    )?;
    let v: serde_json::Value = serde_json::from_str(&secrets).context("bootstrap token secrets")?;
    let data = &v["items"][0]["data"];
    let field = |k: &str| -> Result<String> {
        let b = data[k]
            .as_str()
            .with_context(|| format!("no {k} in the bootstrap token secret: {secrets}"))?;
        Ok(String::from_utf8(BASE64.decode(b)?)?)
    };
    let token = format!("{}.{}", field("token-id")?, field("token-secret")?);
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let value = |key: &str| -> Result<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("no {key} in {}", kubeconfig.display()))
    };
    let ca_pem = BASE64.decode(value("certificate-authority-data:")?)?;
    let server = value("server:")?;
    let endpoint = server.trim_start_matches("https://");
    let openssl = crate::tools::require("openssl")?;
    let pubkey = pipe(&openssl, &["x509", "-pubkey", "-noout"], &ca_pem)?;
    let der = pipe(&openssl, &["pkey", "-pubin", "-outform", "der"], &pubkey)?;
    let hash = hex::encode(Sha256::digest(&der));
    Ok(format!(
        "kubeadm join {endpoint} --token {token} --discovery-token-ca-cert-hash sha256:{hash}"
    ))
}

/// The token in a `kubeadm join` line (to keep it out of printed output).
pub fn join_token(join: &str) -> String {
    join.split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// What an operator runs on a machine of the image whose agent stays out
/// of Kubernetes, before and with `kubeadm join`: start containerd (the
/// image leaves it off at boot), import the image's seeded archives (no
/// registry), give the kubelet a CNI network (Debian's bridge plugin on a
/// pod range of the operator's own: the agents route only the plan's
/// CIDRs), then the join. kubeadm 1.20's preflight wants `crictl`, which
/// Debian does not ship: its errors are shown and ignored.
pub fn operator_join_script(join: &str) -> String {
    format!(
        r#"set -e
systemctl start containerd
for f in /usr/share/habuild/images/*.tar; do ctr -n k8s.io images import "$f" >/dev/null; done
mkdir -p /etc/cni/net.d
cat > /etc/cni/net.d/10-operator.conflist <<'CNI'
{{
  "cniVersion": "0.4.0",
  "name": "operator",
  "plugins": [
    {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
     "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.245.3.0/24"}}]]}}}},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
CNI
{join} --ignore-preflight-errors=all 2>&1
"#
    )
}

/// Runs `bin args…` with `input` on stdin; its stdout.
fn pipe(bin: &Path, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = std::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    child.stdin.take().context("stdin")?.write_all(input)?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "{} {} failed: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(o.stdout)
}

#[cfg(test)]
mod pod_tests {
    use super::*;

    #[test]
    fn reads_pods() {
        let text = r#"{"items":[{"metadata":{"name":"web-1"},"spec":{"nodeName":"node-a"},
          "status":{"podIP":"10.244.0.5","conditions":[{"type":"Ready","status":"True"}]}},
          {"metadata":{"name":"web-2"},"spec":{},"status":{}}]}"#;
        let p = parse_pods(text).unwrap();
        assert_eq!(
            p[0],
            PodState {
                name: "web-1".into(),
                node: "node-a".into(),
                ip: "10.244.0.5".into(),
                ready: true
            }
        );
        assert!(!p[1].ready);
        assert_eq!(p[1].node, "");
    }

    #[test]
    fn manifest_spreads_one_pod_per_node_and_pins_the_seeded_image() {
        let m = workload_manifest(3, "/mnt/gluster");
        assert!(m.contains("replicas: 3"));
        assert!(m.contains("topologyKey: kubernetes.io/hostname"));
        assert!(m.contains("image: habuild.test/web:1\n        imagePullPolicy: Never"));
        assert!(m.contains("nodePort: 30080"));
        assert!(m.contains("path: /mnt/gluster\n          type: DirectoryOrCreate"));
    }
}
