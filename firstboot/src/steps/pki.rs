//! The `pki` step: writes this node's certificates and keys in kubeadm's
//! layout (`/etc/kubernetes/pki`, `/etc/kubernetes/pki/etcd`) from the items
//! the leader issued into the replicated state ([`crate::pki::issue()`]).
//! Control-plane nodes get the CA private keys; other nodes only the CA
//! certificates.

use super::{Chain, Check, Ctx, Gate, Rendered, Step, StepError};
use crate::host::{FileSpec, Host};

pub struct Pki;

impl Step for Pki {
    fn name(&self) -> &'static str {
        "pki"
    }

    fn chain(&self) -> Chain {
        Chain::ControlPlane
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        match crate::pki::files_for_node(ctx.items, ctx.me, ctx.is_control_plane()) {
            Ok(_) => Gate::Run,
            Err(e) => Gate::Wait(format!("the leader to issue certificates ({e})")),
        }
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        let files = crate::pki::files_for_node(ctx.items, ctx.me, ctx.is_control_plane())
            .map_err(|e| StepError::Render(e.to_string()))?;
        Ok(Rendered {
            files: files
                .into_iter()
                .map(|f| FileSpec::new(f.path, f.mode, f.contents))
                .collect(),
            ..Default::default()
        })
    }

    fn check(&self, _ctx: &Ctx, _host: &Host) -> Result<Check, StepError> {
        Ok(Check::Done(String::new()))
    }
}
