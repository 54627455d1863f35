//! The replicated cluster state: what Raft agrees on. Every change is a
//! [`Command`]; [`ClusterState::apply`] is the state machine (pure, so the
//! consensus layer, the in-process tests and the planner share it).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cluster::{Ipv4Cidr, Ipv4Range};

/// A node's id: derived from its machine-id (see [`node_id_from_machine_id`]).
pub type NodeId = u64;

/// First 8 bytes of sha256(machine-id), big-endian; never 0.
pub fn node_id_from_machine_id(machine_id: &str) -> NodeId {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(machine_id.trim().as_bytes());
    let id = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    id.max(1)
}

/// What the planner needs to know about a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub hostname: String,
    /// Address on the cluster network and its prefix length.
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// Agent port (Raft and joins, over the authenticated transport).
    pub port: u16,
    pub cpus: u32,
    pub mem_bytes: u64,
    /// Spare disks (no partitions, no filesystem) usable for Gluster.
    pub spare_disks: Vec<String>,
    /// Free bytes on the data partition.
    pub data_free_bytes: u64,
    /// Optional placement labels, e.g. zone, rack: the `labels` of this
    /// machine's `[[nodes]]` entry in the site file.
    pub labels: BTreeMap<String, String>,
    /// Whether the agent runs Kubernetes here: `false` when this machine's
    /// `[[nodes]]` entry says `kubernetes = false` (never control plane; no
    /// kubelet, kube-proxy or pod network). Records written before the field
    /// existed read as `true`.
    #[serde(default = "yes")]
    pub kubernetes: bool,
    /// Whether this machine keeps /var in RAM (netbooted live with no
    /// usable disk): it forgets everything on a reboot, so it is a worker
    /// only, never etcd, control plane or a brick. Records written before
    /// the field existed read as `false`.
    #[serde(default)]
    pub var_in_ram: bool,
    /// Healthy as last seen by the leader (reachable, agent up).
    pub healthy: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

/// The leader's decision of who is what. Produced by `plan::plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Increases by one every time the plan changes.
    pub version: u64,
    /// etcd + control-plane members, in bootstrap order (first runs `kubeadm init`).
    pub control_plane: Vec<NodeId>,
    pub workers: Vec<NodeId>,
    /// Nodes carrying Gluster bricks, and the one that forms the pool.
    pub storage: Vec<NodeId>,
    pub storage_leader: Option<NodeId>,
    /// The brick device of each storage node: a disk, or
    /// [`crate::gluster::LOOP_DEVICE`] for the backing file on the data
    /// partition. Fixed once chosen (the disk stops looking spare once used).
    #[serde(default)]
    pub storage_devices: BTreeMap<NodeId, String>,
    pub vip: Ipv4Addr,
    pub metallb: Ipv4Range,
    pub pod_cidrs: BTreeMap<NodeId, Ipv4Cidr>,
    /// kubeadm bootstrap token "abcdef.0123456789abcdef".
    pub bootstrap_token: String,
}

impl Plan {
    pub fn role_of(&self, id: NodeId) -> Option<Role> {
        if self.control_plane.contains(&id) {
            Some(Role::ControlPlane)
        } else if self.workers.contains(&id) {
            Some(Role::Worker)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Running,
    Done,
    Failed,
}

/// Progress of one converge step on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub node: NodeId,
    pub step: String,
    pub status: StepStatus,
    /// Error text (command and stderr) when failed; empty otherwise.
    pub detail: String,
    pub attempts: u32,
}

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add a member or refresh its facts.
    UpsertMember(Member),
    SetHealth {
        id: NodeId,
        healthy: bool,
    },
    /// Commit a new plan; refused unless `plan.version == current + 1`.
    SetPlan(Plan),
    /// Secrets, each already sealed with [`crate::secretbox::SecretBox`]
    /// under its name, stored at once (the PKI the leader issues is one
    /// command, one Raft entry); never replaces a secret that exists, so two
    /// leaders racing cannot swap a CA.
    PutSecretsIfAbsent(BTreeMap<String, Vec<u8>>),
    RecordStep(StepRecord),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Rejected(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub members: BTreeMap<NodeId, Member>,
    pub plan: Option<Plan>,
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Keyed by (node, step name).
    pub steps: BTreeMap<(NodeId, String), StepRecord>,
}

impl ClusterState {
    pub fn apply(&mut self, cmd: Command) -> Response {
        match cmd {
            Command::UpsertMember(m) => {
                self.members.insert(m.id, m);
            }
            Command::SetHealth { id, healthy } => match self.members.get_mut(&id) {
                Some(m) => m.healthy = healthy,
                None => return Response::Rejected(format!("no member {id:016x}")),
            },
            Command::SetPlan(p) => {
                let current = self.plan.as_ref().map_or(0, |p| p.version);
                if p.version != current + 1 {
                    return Response::Rejected(format!(
                        "plan version {} does not follow {current}",
                        p.version
                    ));
                }
                self.plan = Some(p);
            }
            Command::PutSecretsIfAbsent(items) => {
                for (name, ciphertext) in items {
                    self.secrets.entry(name).or_insert(ciphertext);
                }
            }
            Command::RecordStep(r) => {
                self.steps.insert((r.node, r.step.clone()), r);
            }
        }
        Response::Ok
    }

    /// Whether `step` is done on every node in `nodes`.
    pub fn step_done_on(&self, step: &str, nodes: &[NodeId]) -> bool {
        nodes.iter().all(|n| {
            self.steps
                .get(&(*n, step.to_string()))
                .is_some_and(|r| r.status == StepStatus::Done)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_versions_must_follow() {
        let mut s = ClusterState::default();
        let plan = Plan {
            version: 2,
            control_plane: vec![1],
            workers: vec![],
            storage: vec![],
            storage_leader: None,
            storage_devices: BTreeMap::new(),
            vip: Ipv4Addr::new(10, 0, 0, 5),
            metallb: "10.0.0.200-10.0.0.210".parse::<Ipv4Range>().unwrap(),
            pod_cidrs: BTreeMap::new(),
            bootstrap_token: "abcdef.0123456789abcdef".into(),
        };
        assert!(matches!(
            s.apply(Command::SetPlan(plan.clone())),
            Response::Rejected(_)
        ));
        let p1 = Plan { version: 1, ..plan };
        assert_eq!(s.apply(Command::SetPlan(p1)), Response::Ok);
        assert_eq!(
            s.plan.as_ref().unwrap().role_of(1),
            Some(Role::ControlPlane)
        );
    }

    #[test]
    fn member_records_without_the_kubernetes_field_read_as_kubernetes() {
        let old = r#"{"id": 7, "hostname": "n7", "ip": "10.0.0.7", "prefix": 24,
            "port": 7946, "cpus": 2, "mem_bytes": 1024, "spare_disks": [],
            "data_free_bytes": 0, "labels": {}, "healthy": true}"#;
        let m: Member = serde_json::from_str(old).unwrap();
        assert!(m.kubernetes);
        let off = Member {
            kubernetes: false,
            ..m
        };
        let back: Member = serde_json::from_str(&serde_json::to_string(&off).unwrap()).unwrap();
        assert_eq!(back, off);
    }

    #[test]
    fn node_ids_are_stable_and_nonzero() {
        let a = node_id_from_machine_id("a4c7254f304940638898ba255b11298b\n");
        assert_eq!(
            a,
            node_id_from_machine_id("a4c7254f304940638898ba255b11298b")
        );
        assert_ne!(a, 0);
        assert_ne!(
            a,
            node_id_from_machine_id("b4c7254f304940638898ba255b11298b")
        );
    }
}
