//! The Kubernetes node side, on every member (control plane and workers):
//! the pod network ([`pod_network`]), the kubelet ([`kubelet`]) and
//! kube-proxy ([`kube_proxy`]). What they share lives here: whether
//! Kubernetes is wanted at all, the refusal when the image has no
//! Kubernetes binaries, the items they read from the replicated state, and
//! the gate "the control plane answers somewhere".

pub mod kube_proxy;
pub mod kubelet;
pub mod pod_network;

pub use kube_proxy::KubeProxy;
pub use kubelet::Kubelet;
pub use pod_network::PodNetwork;

use super::{Ctx, Gate, StepError};
use crate::state::Member;

/// The refusal when a Kubernetes binary is missing (the contract's text,
/// shown once in status and on the console), and the check that gives it:
/// one copy, shared with the control-plane steps.
pub use super::kube_control_plane::{require_binary, NO_BINARIES as NO_KUBE_BINARIES};

/// The control-plane step whose record on some control-plane node tells
/// the node steps the API can be reached.
pub const CONTROL_PLANE_STEP: &str = "kube-control-plane";

/// The cluster CA certificate item (PEM).
pub const CA_ITEM: &str = "pki/ca.crt";

/// The API port behind the VIP.
pub const API_PORT: u16 = super::vip::API_PORT;

/// `https://VIP:6443`, what every node-side kubeconfig names.
pub fn api_server(ctx: &Ctx) -> String {
    format!("https://{}:{API_PORT}", ctx.plan.vip)
}

/// The gate every node step starts with: not here when Kubernetes is off
/// (`kubernetes.enabled = false`, or this node's record says `kubernetes =
/// false` from its `[[nodes]]` entry: an operator may `kubeadm join` it),
/// waiting while this node has no member record. Returns this node's record.
pub fn base_gate<'a>(ctx: &'a Ctx) -> Result<&'a Member, Gate> {
    if !ctx.cfg.kubernetes.enabled {
        return Err(Gate::NotHere);
    }
    let me = ctx
        .member(ctx.me)
        .ok_or_else(|| Gate::Wait("this node's member record".into()))?;
    if !me.kubernetes {
        return Err(Gate::NotHere);
    }
    Ok(me)
}

/// Waits until `kube-control-plane` is recorded done on at least one
/// planned control-plane node.
pub fn control_plane_gate(ctx: &Ctx) -> Result<(), Gate> {
    if ctx
        .plan
        .control_plane
        .iter()
        .any(|id| ctx.done_on(CONTROL_PLANE_STEP, &[*id]))
    {
        Ok(())
    } else {
        Err(Gate::Wait(format!(
            "{CONTROL_PLANE_STEP} done on a control-plane node"
        )))
    }
}

/// Waits until every item in `names` is in the state.
pub fn items_gate(ctx: &Ctx, names: &[String]) -> Result<(), Gate> {
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !ctx.items.contains_key(n.as_str()))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Gate::Wait(format!(
            "the leader to issue {}",
            missing.join(", ")
        )))
    }
}

/// An item's text, or a render error naming it.
pub fn item<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a str, StepError> {
    ctx.items
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| StepError::Render(format!("item {name} is not in the state")))
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::super::testutil;
    use super::*;
    use crate::state::{Command, NodeId, StepRecord, StepStatus};

    /// Node `me`'s context over [`testutil::state`] with `done` step records
    /// and, when `with_items`, the CA and every kube client item (fake PEM).
    pub fn with_kube_ctx<R>(
        me: NodeId,
        done: &[(NodeId, &str)],
        with_items: bool,
        f: impl FnOnce(&Ctx) -> R,
    ) -> R {
        let mut state = testutil::state();
        for (node, step) in done {
            state.apply(Command::RecordStep(StepRecord {
                node: *node,
                step: step.to_string(),
                status: StepStatus::Done,
                detail: String::new(),
                attempts: 1,
            }));
        }
        let cfg = testutil::cfg();
        let mut items = BTreeMap::new();
        if with_items {
            items.insert(CA_ITEM.to_string(), "CA PEM".to_string());
            let mut stems = vec![crate::kube::KUBE_PROXY_ITEM.to_string()];
            stems.extend(
                state
                    .members
                    .keys()
                    .map(|id| crate::kube::kubelet_item(*id)),
            );
            for stem in stems {
                items.insert(format!("{stem}.crt"), format!("CERT {stem}"));
                items.insert(format!("{stem}.key"), format!("KEY {stem}"));
            }
        }
        let plan = state.plan.clone().unwrap();
        let ctx = Ctx {
            me,
            cfg: &cfg,
            state: &state,
            plan: &plan,
            items: &items,
            root: Path::new("/"),
            interface: "eth0",
            agent_exe: "/usr/lib/habuild/habuild-agent",
            emulated: false,
        };
        f(&ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::with_kube_ctx;
    use super::*;
    use crate::steps::Step;

    #[test]
    fn a_node_the_site_file_keeps_out_of_kubernetes_runs_no_node_step() {
        with_kube_ctx(4, &[(1, CONTROL_PLANE_STEP)], true, |ctx| {
            let steps: [&dyn Step; 3] = [&PodNetwork, &Kubelet, &KubeProxy];
            let mut state = ctx.state.clone();
            state.members.get_mut(&4).unwrap().kubernetes = false;
            let off = Ctx {
                state: &state,
                ..*ctx
            };
            for s in steps {
                assert_ne!(s.gate(ctx), Gate::NotHere, "{} on node 4", s.name());
                assert_eq!(s.gate(&off), Gate::NotHere, "{} opted out", s.name());
            }
            assert!(!off.kubernetes_on(4) && off.kubernetes_on(2));
            // The other nodes go on as before.
            for me in [1, 2, 3] {
                let before = Ctx { me, ..*ctx };
                let after = Ctx { me, ..off };
                for s in steps {
                    assert_eq!(s.gate(&after), s.gate(&before), "{} on {me}", s.name());
                }
            }
        });
    }
}
