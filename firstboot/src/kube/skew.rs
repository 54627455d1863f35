//! Kubernetes' version-skew policy
//! (<https://kubernetes.io/releases/version-skew-policy/>), as pure
//! functions over versions read from `kubelet --version` /
//! `kube-apiserver --version` ("Kubernetes v1.20.2") and from the
//! apiserver's `/version` document (its `gitVersion`). The steps run the
//! commands and turn a [`Skew`] into a refusal.
//!
//! The rules (minor versions; patch versions never matter):
//!
//! - kubelet and kube-proxy: never newer than kube-apiserver; up to 3 minor
//!   versions older, but a kubelet (kube-proxy) older than 1.25 only up to
//!   2. (The policy keys the exception on the node component's version;
//!   for the largest allowed gap, 3, "component ≥ 1.25" is the same as
//!   "kube-apiserver ≥ 1.28".)
//! - kube-proxy and the kubelet beside it: up to 3 minor versions apart
//!   either way (2 when kube-proxy is older than 1.25).
//! - kube-controller-manager and kube-scheduler: never newer than the
//!   kube-apiserver they talk to; at most 1 minor version older.
//! - kube-apiservers of an HA control plane: at most 1 minor version apart.
//! - Different major versions are never supported together.
//!
//! A refusal's text starts with "version skew:" (what `habuild cluster
//! status` recognises as a refusal), names both versions and says the rule.

use std::fmt;

/// A Kubernetes version, `major.minor.patch`, with the text it was read
/// from (`v1.31.0-rc.1` shows as such).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    text: String,
}

/// A text that holds no Kubernetes version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read a Kubernetes version (vMAJOR.MINOR.PATCH) from {text:?}: {why}")]
pub struct VersionError {
    pub text: String,
    pub why: String,
}

fn unreadable(text: &str, why: impl Into<String>) -> VersionError {
    VersionError {
        text: text.trim().chars().take(200).collect(),
        why: why.into(),
    }
}

impl Version {
    /// `v1.20.2`, `1.20.2`, `v1.31.0-rc.1`, `v1.28.3+k3s1` (a pre-release
    /// or build suffix after the patch number is kept in the text only).
    pub fn parse(s: &str) -> Result<Version, VersionError> {
        let text = s.trim();
        let digits = text.strip_prefix('v').unwrap_or(text);
        let mut parts = digits.splitn(3, '.');
        let number = |part: Option<&str>, name: &str| -> Result<u32, VersionError> {
            let p = part.ok_or_else(|| unreadable(text, format!("no {name} number")))?;
            let n: String = p.chars().take_while(char::is_ascii_digit).collect();
            if n.is_empty() || (name != "patch" && n.len() != p.len()) {
                return Err(unreadable(text, format!("{name} {p:?} is not a number")));
            }
            n.parse()
                .map_err(|_| unreadable(text, format!("{name} {p:?} is out of range")))
        };
        let major = number(parts.next(), "major")?;
        let minor = number(parts.next(), "minor")?;
        let patch = number(parts.next(), "patch")?;
        Ok(Version {
            major,
            minor,
            patch,
            text: text.to_string(),
        })
    }

    /// The version in a binary's `--version` output ("Kubernetes v1.20.2"):
    /// the first word that starts with `v` and a digit.
    pub fn from_version_output(output: &str) -> Result<Version, VersionError> {
        let word = output
            .split_whitespace()
            .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
            .ok_or_else(|| unreadable(output, "no word like v1.20.2"))?;
        Version::parse(word).map_err(|e| unreadable(output, e.why))
    }

    /// The version in kube-apiserver's `/version` document: its
    /// `gitVersion` (`{"major":"1","minor":"20","gitVersion":"v1.20.2",…}`).
    pub fn from_version_json(json: &str) -> Result<Version, VersionError> {
        let doc: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| unreadable(json, format!("not a /version document ({e})")))?;
        let git = doc
            .get("gitVersion")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| unreadable(json, "no gitVersion"))?;
        Version::parse(git).map_err(|e| unreadable(json, format!("gitVersion: {}", e.why)))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.starts_with('v') {
            f.write_str(&self.text)
        } else {
            write!(f, "v{}", self.text)
        }
    }
}

/// A component that talks to kube-apiserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Kubelet,
    KubeProxy,
    ControllerManager,
    Scheduler,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Kubelet => "kubelet",
            Component::KubeProxy => "kube-proxy",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
        }
    }

    /// How many minor versions older than kube-apiserver this component at
    /// `v` may be.
    pub fn max_older(self, v: &Version) -> u32 {
        match self {
            Component::Kubelet | Component::KubeProxy => node_component_gap(v),
            Component::ControllerManager | Component::Scheduler => 1,
        }
    }

    /// The rule, as a refusal states it.
    fn rule(self, v: &Version) -> String {
        let name = self.name();
        match self {
            Component::Kubelet | Component::KubeProxy if node_component_gap(v) < 3 => format!(
                "a {name} older than 1.25 may be up to {} older than kube-apiserver, never newer",
                minors(node_component_gap(v))
            ),
            _ => format!(
                "a {name} may be up to {} older than kube-apiserver, never newer",
                minors(self.max_older(v))
            ),
        }
    }
}

/// The largest gap the policy allows a kubelet or kube-proxy at `v`: 3
/// minor versions from 1.25 on, 2 before.
fn node_component_gap(v: &Version) -> u32 {
    if v.major > 1 || v.minor >= 25 {
        3
    } else {
        2
    }
}

/// "1 minor version", "3 minor versions".
fn minors(n: u32) -> String {
    if n == 1 {
        "1 minor version".into()
    } else {
        format!("{n} minor versions")
    }
}

/// Why two versions must not work together: the refusal's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Skew(pub String);

/// Whether `component` at `v` may talk to kube-apiserver at `api`.
pub fn against_apiserver(component: Component, v: &Version, api: &Version) -> Result<(), Skew> {
    let name = component.name();
    let rule = component.rule(v);
    if v.major != api.major {
        return Err(Skew(format!(
            "version skew: {name} {v} and the control plane's kube-apiserver {api} differ in \
             major version ({rule})"
        )));
    }
    if v.minor > api.minor {
        return Err(Skew(format!(
            "version skew: {name} {v} is newer than the control plane's kube-apiserver {api} \
             ({rule})"
        )));
    }
    let older = api.minor - v.minor;
    if older > component.max_older(v) {
        return Err(Skew(format!(
            "version skew: {name} {v} is {} older than the control plane's kube-apiserver {api} \
             ({rule})",
            minors(older)
        )));
    }
    Ok(())
}

/// Whether this node's kube-apiserver at `mine` may serve beside the
/// kube-apiserver at `serving` that already serves the cluster.
pub fn between_apiservers(mine: &Version, serving: &Version) -> Result<(), Skew> {
    const RULE: &str = "in an HA control plane the kube-apiservers may differ by at most \
                        1 minor version";
    if mine.major != serving.major {
        return Err(Skew(format!(
            "version skew: this node's kube-apiserver {mine} and the kube-apiserver {serving} \
             serving the cluster differ in major version ({RULE})"
        )));
    }
    let (gap, word) = if mine.minor >= serving.minor {
        (mine.minor - serving.minor, "newer")
    } else {
        (serving.minor - mine.minor, "older")
    };
    if gap > 1 {
        return Err(Skew(format!(
            "version skew: this node's kube-apiserver {mine} is {} {word} than the \
             kube-apiserver {serving} serving the cluster ({RULE})",
            minors(gap)
        )));
    }
    Ok(())
}

/// Whether kube-proxy at `proxy` may run beside the kubelet at `kubelet`.
pub fn kube_proxy_beside_kubelet(proxy: &Version, kubelet: &Version) -> Result<(), Skew> {
    let max = node_component_gap(proxy);
    let rule = if max < 3 {
        format!(
            "a kube-proxy older than 1.25 may be up to {} older or newer than the kubelet beside it",
            minors(max)
        )
    } else {
        format!(
            "a kube-proxy may be up to {} older or newer than the kubelet beside it",
            minors(max)
        )
    };
    if proxy.major != kubelet.major {
        return Err(Skew(format!(
            "version skew: kube-proxy {proxy} and kubelet {kubelet} differ in major version ({rule})"
        )));
    }
    let gap = proxy.minor.abs_diff(kubelet.minor);
    if gap > max {
        return Err(Skew(format!(
            "version skew: kube-proxy {proxy} and kubelet {kubelet} are {} apart ({rule})",
            minors(gap)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_from_binaries_and_from_the_apiserver() {
        let k = Version::from_version_output("Kubernetes v1.20.2\n").unwrap();
        assert_eq!((k.major, k.minor, k.patch), (1, 20, 2));
        assert_eq!(k.to_string(), "v1.20.2");
        let rc = Version::from_version_output("Kubernetes v1.31.0-rc.1").unwrap();
        assert_eq!((rc.major, rc.minor, rc.patch), (1, 31, 0));
        assert_eq!(rc.to_string(), "v1.31.0-rc.1");
        let j = Version::from_version_json(
            r#"{"major":"1","minor":"28","gitVersion":"v1.28.3+k3s1","gitCommit":"abc",
                "gitTreeState":"clean","buildDate":"2023-10-18T00:00:00Z",
                "goVersion":"go1.20.10","compiler":"gc","platform":"linux/amd64"}"#,
        )
        .unwrap();
        assert_eq!((j.major, j.minor, j.patch), (1, 28, 3));
        assert_eq!(j.to_string(), "v1.28.3+k3s1");
        assert_eq!(v("1.29.1").to_string(), "v1.29.1");
    }

    #[test]
    fn unreadable_versions_say_what_they_read() {
        for (text, why) in [
            ("garbage", "no word like v1.20.2"),
            ("Kubernetes v1.x.2", "minor \"x\" is not a number"),
            ("Kubernetes v1.20", "no patch number"),
            ("Kubernetes v0.0.0-master+$Format:%h$", ""),
        ] {
            let r = Version::from_version_output(text);
            if why.is_empty() {
                // Built without version stamping: readable, and 0.0 says so.
                assert_eq!(r.unwrap().to_string(), "v0.0.0-master+$Format:%h$");
                continue;
            }
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with("cannot read a Kubernetes version"), "{e}");
            assert!(e.contains(why), "{e}");
            assert!(e.contains(&format!("{:?}", text.trim())), "{e}");
        }
        for (json, why) in [
            ("ok", "not a /version document"),
            (r#"{"major":"1","minor":"20"}"#, "no gitVersion"),
            (r#"{"gitVersion":"v1"}"#, "gitVersion: no minor number"),
            ("", "not a /version document"),
        ] {
            let e = Version::from_version_json(json).unwrap_err().to_string();
            assert!(e.contains(why), "{json}: {e}");
        }
    }

    /// The kubelet (and kube-proxy) against kube-apiserver: both ends of
    /// each rule, in both eras of it.
    #[test]
    fn kubelet_against_the_apiserver() {
        use Component::{KubeProxy, Kubelet};
        // (kubelet, apiserver, allowed)
        let table = [
            ("v1.20.2", "v1.20.2", true),
            ("v1.20.5", "v1.20.2", true), // patch versions never matter
            ("v1.20.2", "v1.21.0", true),
            ("v1.20.2", "v1.22.17", true), // 1.20 era: 2 older is the limit
            ("v1.20.2", "v1.23.0", false),
            ("v1.21.0", "v1.20.2", false), // never newer
            ("v1.24.9", "v1.27.0", false), // < 1.25: still 2
            ("v1.24.9", "v1.26.0", true),
            ("v1.25.0", "v1.28.3", true), // from 1.25 on: 3 older
            ("v1.25.0", "v1.29.0", false),
            ("v1.28.3", "v1.31.0", true),
            ("v1.27.0", "v1.31.0", false),
            ("v1.31.0", "v1.31.4", true),
            ("v1.31.0", "v1.28.3", false),
            ("v1.29.0", "v1.28.3", false),
            ("v2.0.0", "v1.31.0", false),
            ("v1.31.0", "v2.0.0", false),
        ];
        for (kubelet, api, ok) in table {
            for c in [Kubelet, KubeProxy] {
                let r = against_apiserver(c, &v(kubelet), &v(api));
                assert_eq!(r.is_ok(), ok, "{c:?} {kubelet} vs {api}: {r:?}");
                if let Err(Skew(t)) = r {
                    assert!(t.starts_with("version skew: "), "{t}");
                    assert!(t.contains(kubelet) && t.contains(api), "{t}");
                    assert!(t.contains(c.name()), "{t}");
                }
            }
        }
        assert_eq!(
            against_apiserver(Kubelet, &v("v1.31.0"), &v("v1.28.3"))
                .unwrap_err()
                .to_string(),
            "version skew: kubelet v1.31.0 is newer than the control plane's kube-apiserver \
             v1.28.3 (a kubelet may be up to 3 minor versions older than kube-apiserver, never \
             newer)"
        );
        assert_eq!(
            against_apiserver(Kubelet, &v("v1.20.2"), &v("v1.23.0"))
                .unwrap_err()
                .to_string(),
            "version skew: kubelet v1.20.2 is 3 minor versions older than the control plane's \
             kube-apiserver v1.23.0 (a kubelet older than 1.25 may be up to 2 minor versions \
             older than kube-apiserver, never newer)"
        );
        assert_eq!(
            against_apiserver(KubeProxy, &v("v1.27.0"), &v("v1.31.0"))
                .unwrap_err()
                .to_string(),
            "version skew: kube-proxy v1.27.0 is 4 minor versions older than the control \
             plane's kube-apiserver v1.31.0 (a kube-proxy may be up to 3 minor versions older \
             than kube-apiserver, never newer)"
        );
        assert_eq!(
            against_apiserver(Kubelet, &v("v2.0.0"), &v("v1.31.0"))
                .unwrap_err()
                .to_string(),
            "version skew: kubelet v2.0.0 and the control plane's kube-apiserver v1.31.0 differ \
             in major version (a kubelet may be up to 3 minor versions older than \
             kube-apiserver, never newer)"
        );
    }

    #[test]
    fn controller_manager_and_scheduler_against_the_apiserver() {
        use Component::{ControllerManager, Scheduler};
        let table = [
            ("v1.20.2", "v1.20.2", true),
            ("v1.20.2", "v1.21.1", true),
            ("v1.20.2", "v1.22.0", false),
            ("v1.21.0", "v1.20.2", false),
            ("v1.30.2", "v1.31.0", true),
            ("v1.29.0", "v1.31.0", false),
            ("v1.31.0", "v1.30.9", false),
        ];
        for (c_v, api, ok) in table {
            for c in [ControllerManager, Scheduler] {
                let r = against_apiserver(c, &v(c_v), &v(api));
                assert_eq!(r.is_ok(), ok, "{c:?} {c_v} vs {api}: {r:?}");
            }
        }
        assert_eq!(
            against_apiserver(ControllerManager, &v("v1.29.0"), &v("v1.31.0"))
                .unwrap_err()
                .to_string(),
            "version skew: kube-controller-manager v1.29.0 is 2 minor versions older than the \
             control plane's kube-apiserver v1.31.0 (a kube-controller-manager may be up to 1 \
             minor version older than kube-apiserver, never newer)"
        );
    }

    #[test]
    fn apiservers_of_an_ha_control_plane() {
        let table = [
            ("v1.20.2", "v1.20.2", true),
            ("v1.21.0", "v1.20.2", true),
            ("v1.20.2", "v1.21.0", true),
            ("v1.22.0", "v1.20.2", false),
            ("v1.20.2", "v1.22.0", false),
            ("v1.31.0", "v1.28.3", false),
            ("v1.31.0", "v1.30.5", true),
            ("v2.0.0", "v1.31.0", false),
        ];
        for (mine, serving, ok) in table {
            let r = between_apiservers(&v(mine), &v(serving));
            assert_eq!(r.is_ok(), ok, "{mine} vs {serving}: {r:?}");
        }
        assert_eq!(
            between_apiservers(&v("v1.22.0"), &v("v1.20.2"))
                .unwrap_err()
                .to_string(),
            "version skew: this node's kube-apiserver v1.22.0 is 2 minor versions newer than \
             the kube-apiserver v1.20.2 serving the cluster (in an HA control plane the \
             kube-apiservers may differ by at most 1 minor version)"
        );
        assert_eq!(
            between_apiservers(&v("v1.20.2"), &v("v1.22.0"))
                .unwrap_err()
                .to_string(),
            "version skew: this node's kube-apiserver v1.20.2 is 2 minor versions older than \
             the kube-apiserver v1.22.0 serving the cluster (in an HA control plane the \
             kube-apiservers may differ by at most 1 minor version)"
        );
    }

    #[test]
    fn kube_proxy_beside_the_kubelet() {
        let table = [
            ("v1.20.2", "v1.20.2", true),
            ("v1.20.2", "v1.22.0", true),
            ("v1.22.0", "v1.20.2", true),
            ("v1.20.2", "v1.23.0", false),
            ("v1.28.0", "v1.31.0", true),
            ("v1.31.0", "v1.28.0", true),
            ("v1.31.0", "v1.27.0", false),
            ("v2.0.0", "v1.31.0", false),
        ];
        for (proxy, kubelet, ok) in table {
            let r = kube_proxy_beside_kubelet(&v(proxy), &v(kubelet));
            assert_eq!(r.is_ok(), ok, "{proxy} beside {kubelet}: {r:?}");
        }
        assert_eq!(
            kube_proxy_beside_kubelet(&v("v1.20.2"), &v("v1.23.0"))
                .unwrap_err()
                .to_string(),
            "version skew: kube-proxy v1.20.2 and kubelet v1.23.0 are 3 minor versions apart \
             (a kube-proxy older than 1.25 may be up to 2 minor versions older or newer than \
             the kubelet beside it)"
        );
    }
}
