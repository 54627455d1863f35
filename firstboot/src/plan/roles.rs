//! Who runs the control plane and who carries Gluster bricks.
//!
//! Both choices use the same placement rule for *new* picks: spread first
//! (fewest already-chosen members in the same `zone` label, then in the same
//! `zone`+`rack`), then a role-specific preference, then the lower node id.
//! A member without a `zone` label counts as being in one more zone of its
//! own (the "unlabelled" zone), and likewise for `rack`; when no member is
//! labelled, spreading has no effect and the preference decides.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;

use super::PlanError;
use crate::cluster::StorageSection;
use crate::state::{Member, NodeId, Plan};

/// The largest odd number ≤ `n` (0 for 0).
pub fn largest_odd_at_most(n: usize) -> usize {
    if n == 0 {
        0
    } else if n % 2 == 1 {
        n
    } else {
        n - 1
    }
}

fn zone(m: &Member) -> Option<&str> {
    m.labels.get("zone").map(String::as_str)
}

fn rack(m: &Member) -> (Option<&str>, Option<&str>) {
    (zone(m), m.labels.get("rack").map(String::as_str))
}

/// Pick `n` of `pool` one at a time: each time the candidate sharing a zone
/// (then a zone+rack) with the fewest of `chosen` and earlier picks, then the
/// best by `prefer` (`Less` = better), then the lowest id.
fn spread_pick<'a>(
    chosen: &[&'a Member],
    mut pool: Vec<&'a Member>,
    n: usize,
    prefer: impl Fn(&Member, &Member) -> Ordering,
) -> Vec<&'a Member> {
    let mut placed: Vec<&Member> = chosen.to_vec();
    let mut picked = Vec::new();
    for _ in 0..n.min(pool.len()) {
        let load = |m: &Member| {
            let z = placed.iter().filter(|p| zone(p) == zone(m)).count();
            let r = placed.iter().filter(|p| rack(p) == rack(m)).count();
            (z, r)
        };
        let best = (0..pool.len())
            .min_by(|&a, &b| {
                let (ma, mb) = (pool[a], pool[b]);
                load(ma)
                    .cmp(&load(mb))
                    .then_with(|| prefer(ma, mb))
                    .then_with(|| ma.id.cmp(&mb.id))
            })
            .expect("pool is not empty");
        let m = pool.swap_remove(best);
        placed.push(m);
        picked.push(m);
    }
    picked
}

/// Whether a new control-plane member may be picked from `m`: healthy,
/// Kubernetes not switched off for it in the site file, and /var on a disk
/// (etcd's data must survive a reboot).
pub fn control_plane_candidate(m: &Member) -> bool {
    m.healthy && m.kubernetes && !m.var_in_ram
}

/// Control-plane preference among equally spread candidates: more RAM, then more CPUs.
fn prefer_for_control_plane(a: &Member, b: &Member) -> Ordering {
    (Reverse(a.mem_bytes), Reverse(a.cpus)).cmp(&(Reverse(b.mem_bytes), Reverse(b.cpus)))
}

/// The etcd / control-plane members, in bootstrap order (the first one runs
/// `kubeadm init`).
///
/// Policy:
/// - **Candidates**: healthy members whose record allows Kubernetes
///   ([`Member::kubernetes`]; `kubernetes = false` in the machine's
///   `[[nodes]]` entry of the site file) and keeps /var on a disk
///   ([`Member::var_in_ram`]: a netbooted machine with no usable disk
///   forgets etcd's data on a reboot). An opted-out member is never
///   picked: an operator's `kubeadm join` there would fight the etcd, VIP
///   and apiserver the control plane runs. It counts like an unhealthy one
///   below (fewer candidates than the size: the size is capped).
/// - **Size**: `cluster.control_plane_size` (1, 3 or 5), capped to the largest
///   odd number ≤ the number of candidates (2 → 1, 4 → 3).
/// - **First plan**: the best candidates by the spread rule, then more
///   RAM, then more CPUs, then lower id.
/// - **Never reshuffled**: every previous control-plane member that is still a
///   member stays, in the same order, *whether healthy or not*, and even when
///   the size computed above is now smaller (a healthy member is never demoted;
///   an unhealthy one is not replaced automatically, because swapping an etcd
///   member out is a deliberate `member remove`/`add`, not something to do on
///   a missed heartbeat). An unhealthy control-plane member is replaced only
///   once it is removed from the members. The same holds for a member whose
///   record turns `kubernetes = false` after it was planned (its site file
///   was edited): it stays, and its `kube-control-plane` step says why it
///   does not run, until it is removed.
/// - **Replacement**: if previous control-plane members were removed from the
///   membership, the gap is filled from any candidate (new or previous
///   worker), up to the size above (at least back to an odd size when there
///   are candidates).
/// - **Growth** (the previous control plane is intact but smaller than the
///   size above, e.g. it was planned with 2 healthy members): only members
///   that had no role in the previous plan are added, and only in pairs so the
///   size stays odd. Previous workers are never promoted on a join, so a
///   healthy member's role never changes when nodes join. Config validation
///   (`bootstrap_expect >= control_plane_size`) makes this rare.
///
/// The size is odd whenever the membership only grows; after removals without
/// enough healthy candidates it can be even until members join.
pub fn control_plane(
    members: &BTreeMap<NodeId, Member>,
    size: u32,
    previous: Option<&Plan>,
) -> Result<Vec<NodeId>, PlanError> {
    if !matches!(size, 1 | 3 | 5) {
        return Err(PlanError::BadControlPlaneSize(size));
    }
    let candidates = members
        .values()
        .filter(|m| control_plane_candidate(m))
        .count();
    let target = (size as usize).min(largest_odd_at_most(candidates));

    let (kept, replacing): (Vec<NodeId>, bool) = match previous {
        None => (Vec::new(), false),
        Some(p) => {
            let kept: Vec<NodeId> = p
                .control_plane
                .iter()
                .copied()
                .filter(|id| members.contains_key(id))
                .collect();
            let replacing = kept.len() < p.control_plane.len();
            (kept, replacing)
        }
    };
    if kept.is_empty() && candidates == 0 {
        let opted_out = members.values().filter(|m| !m.kubernetes).count();
        let in_ram = members
            .values()
            .filter(|m| m.kubernetes && m.var_in_ram)
            .count();
        return Err(if members.values().any(|m| m.healthy) {
            PlanError::NoControlPlaneCandidates {
                members: members.len(),
                opted_out,
                in_ram,
            }
        } else {
            PlanError::NoHealthyMembers {
                members: members.len(),
            }
        });
    }

    let pool: Vec<&Member> = members
        .values()
        .filter(|m| control_plane_candidate(m) && !kept.contains(&m.id))
        .filter(|m| match previous {
            None => true,
            Some(p) => replacing || p.role_of(m.id).is_none(),
        })
        .collect();
    let goal = target.max(kept.len() | 1);
    let mut add = goal.saturating_sub(kept.len()).min(pool.len());
    if add > 0 && (kept.len() + add) % 2 == 0 {
        add -= 1;
    }
    let chosen: Vec<&Member> = kept.iter().map(|id| &members[id]).collect();
    let picked = spread_pick(&chosen, pool, add, prefer_for_control_plane);
    Ok(kept
        .into_iter()
        .chain(picked.into_iter().map(|m| m.id))
        .collect())
}

/// Whether `m` can carry a brick: never with /var in RAM (its data and
/// Gluster's state are gone after a reboot); with `storage.devices` given,
/// it must have one of them among its spare disks; otherwise any spare
/// disk, or `storage.brick_file_size_gib` GiB free on its data partition
/// for the loop-device backing file.
pub fn storage_eligible(m: &Member, cfg: &StorageSection) -> bool {
    if m.var_in_ram {
        false
    } else if cfg.devices.is_empty() {
        !m.spare_disks.is_empty() || m.data_free_bytes >= u64::from(cfg.brick_file_size_gib) << 30
    } else {
        m.spare_disks.iter().any(|d| cfg.devices.contains(d))
    }
}

/// Storage preference among equally spread candidates: spare disks first
/// (a real disk beats a file on the data partition), then more free space.
fn prefer_for_storage(a: &Member, b: &Member) -> Ordering {
    (a.spare_disks.is_empty(), Reverse(a.data_free_bytes))
        .cmp(&(b.spare_disks.is_empty(), Reverse(b.data_free_bytes)))
}

/// The Gluster storage nodes and the one that forms the pool (`peer probe`,
/// `volume create`).
///
/// Policy:
/// - Disabled storage: no nodes, no leader.
/// - Previous storage nodes that are still members stay, in order, healthy or
///   not (their bricks hold data).
/// - Then healthy [`storage_eligible`] members are added until there are
///   `storage.nodes` (default `storage.replica`) nodes: by the spread rule, then spare disks first, then
///   more free space, then lower id. With fewer eligible members all of them
///   are used (the volume's replica count follows the storage nodes), and the
///   set grows up to that count as eligible nodes join. It never grows beyond.
/// - The leader is the first storage node, so it stays the same as long as it
///   is a member.
/// - Enabled storage with no storage node at all is an error.
pub fn storage(
    members: &BTreeMap<NodeId, Member>,
    cfg: &StorageSection,
    previous: Option<&Plan>,
) -> Result<(Vec<NodeId>, Option<NodeId>), PlanError> {
    if !cfg.enabled {
        return Ok((Vec::new(), None));
    }
    let kept: Vec<NodeId> = previous
        .map(|p| {
            p.storage
                .iter()
                .copied()
                .filter(|id| members.contains_key(id))
                .collect()
        })
        .unwrap_or_default();
    let pool: Vec<&Member> = members
        .values()
        .filter(|m| m.healthy && !kept.contains(&m.id) && storage_eligible(m, cfg))
        .collect();
    let target = cfg.nodes.unwrap_or(cfg.replica) as usize;
    let add = target.saturating_sub(kept.len());
    let chosen: Vec<&Member> = kept.iter().map(|id| &members[id]).collect();
    let picked = spread_pick(&chosen, pool, add, prefer_for_storage);
    let nodes: Vec<NodeId> = kept
        .into_iter()
        .chain(picked.into_iter().map(|m| m.id))
        .collect();
    if nodes.is_empty() {
        let what = if cfg.devices.is_empty() {
            format!(
                "a spare disk or {} GiB free on its data partition",
                cfg.brick_file_size_gib
            )
        } else {
            format!(
                "any of storage.devices ({}) as a spare disk",
                cfg.devices.join(", ")
            )
        };
        return Err(PlanError::NoStorageNodes { what });
    }
    let leader = nodes.first().copied();
    Ok((nodes, leader))
}

/// The brick device of each storage node: the previous plan's choice if
/// there was one; else the first of `storage.devices` the node reports as a
/// spare disk; else (no devices configured) its first spare disk; else the
/// loop device over the backing file ([`crate::gluster::LOOP_DEVICE`]).
pub fn storage_devices(
    members: &BTreeMap<NodeId, Member>,
    storage: &[NodeId],
    cfg: &StorageSection,
    previous: Option<&Plan>,
) -> BTreeMap<NodeId, String> {
    storage
        .iter()
        .filter_map(|id| {
            let old = previous.and_then(|p| p.storage_devices.get(id)).cloned();
            let m = members.get(id)?;
            let pick = || {
                if cfg.devices.is_empty() {
                    m.spare_disks.first().cloned()
                } else {
                    cfg.devices
                        .iter()
                        .find(|d| m.spare_disks.contains(d))
                        .cloned()
                }
            };
            let dev = old
                .or_else(pick)
                .unwrap_or_else(|| crate::gluster::LOOP_DEVICE.to_string());
            Some((*id, dev))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{plan, PlanError};
    use super::*;

    fn with_labels(mut m: Member, zone: &str, rack: Option<&str>) -> Member {
        m.labels.insert("zone".into(), zone.into());
        if let Some(r) = rack {
            m.labels.insert("rack".into(), r.into());
        }
        m
    }

    #[test]
    fn size_is_capped_to_the_largest_odd_healthy_count() {
        for (n, cp, want) in [
            (1, 3, 1),
            (2, 3, 1),
            (3, 3, 3),
            (4, 5, 3),
            (5, 5, 5),
            (9, 3, 3),
            (9, 1, 1),
        ] {
            let got = control_plane(&n_members(n), cp, None).unwrap();
            assert_eq!(got.len(), want, "{n} members, size {cp}");
        }
        let mut ms = n_members(4);
        ms.get_mut(&4).unwrap().healthy = false;
        ms.get_mut(&3).unwrap().healthy = false;
        let got = control_plane(&ms, 3, None).unwrap();
        assert_eq!(got.len(), 1);
        assert!(ms[&got[0]].healthy);
    }

    #[test]
    fn prefers_ram_then_cpus_then_lower_id() {
        let mut ms = n_members(6);
        ms.get_mut(&5).unwrap().mem_bytes = 64 * GIB;
        ms.get_mut(&2).unwrap().cpus = 16;
        assert_eq!(control_plane(&ms, 3, None).unwrap(), vec![5, 2, 1]);
    }

    #[test]
    fn spreads_over_zones_then_racks_before_ram() {
        let mut big = member(1, 1);
        big.mem_bytes = 128 * GIB;
        let ms = members([
            with_labels(big, "a", Some("r1")),
            with_labels(member(2, 2), "a", Some("r1")),
            with_labels(member(3, 3), "a", Some("r2")),
            with_labels(member(4, 4), "b", Some("r1")),
            with_labels(member(5, 5), "b", Some("r1")),
        ]);
        // zone a (biggest), zone b, then zone a again but a different rack.
        assert_eq!(control_plane(&ms, 3, None).unwrap(), vec![1, 4, 3]);
    }

    #[test]
    fn unlabelled_members_count_as_their_own_zone() {
        let ms = members([
            with_labels(member(1, 1), "a", None),
            with_labels(member(2, 2), "a", None),
            member(3, 3),
            with_labels(member(4, 4), "b", None),
        ]);
        assert_eq!(control_plane(&ms, 3, None).unwrap(), vec![1, 3, 4]);
    }

    #[test]
    fn unhealthy_control_plane_members_are_kept_until_removed() {
        let ms = n_members(5);
        let p1 = plan(&ms, &cfg(3), None, &SEED).unwrap();
        let mut ms2 = ms.clone();
        let sick = p1.control_plane[1];
        ms2.get_mut(&sick).unwrap().healthy = false;
        let p2 = plan(&ms2, &cfg(3), Some(&p1), &SEED).unwrap();
        assert_eq!(p2, p1, "a health flap changes nothing");
        // Removed: replaced by the best healthy member, a previous worker if needed.
        ms2.remove(&sick);
        let p3 = plan(&ms2, &cfg(3), Some(&p1), &SEED).unwrap();
        assert_eq!(p3.version, 2);
        assert_eq!(p3.control_plane.len(), 3);
        assert_eq!(
            &p3.control_plane[..2],
            &[p1.control_plane[0], p1.control_plane[2]]
        );
        assert!(p1.workers.contains(&p3.control_plane[2]));
    }

    #[test]
    fn healthy_members_are_never_demoted() {
        let ms = n_members(5);
        let p1 = plan(&ms, &cfg(5), None, &SEED).unwrap();
        assert_eq!(p1.control_plane.len(), 5);
        // Config shrunk to 1: nobody is demoted.
        let p2 = plan(&ms, &cfg(1), Some(&p1), &SEED).unwrap();
        assert_eq!(p2.control_plane, p1.control_plane);
    }

    #[test]
    fn growth_takes_only_new_members_in_pairs() {
        let ms = n_members(2);
        let p1 = plan(&ms, &cfg(3), None, &SEED).unwrap();
        assert_eq!(p1.control_plane, vec![1]);
        assert_eq!(p1.workers, vec![2]);
        // One join: adding it alone would make 2, so it becomes a worker.
        let ms3 = n_members(3);
        let p2 = plan(&ms3, &cfg(3), Some(&p1), &SEED).unwrap();
        assert_eq!(p2.control_plane, vec![1]);
        assert_eq!(p2.workers, vec![2, 3]);
        // Two more join at once: both become control plane, 2 and 3 stay workers.
        let ms5 = n_members(5);
        let p3 = plan(&ms5, &cfg(3), Some(&p2), &SEED).unwrap();
        assert_eq!(p3.control_plane, vec![1, 4, 5]);
        assert_eq!(p3.workers, vec![2, 3]);
    }

    #[test]
    fn removal_to_an_even_size_refills_to_odd() {
        let ms = n_members(3);
        let p1 = plan(&ms, &cfg(3), None, &SEED).unwrap();
        let mut ms2 = ms.clone();
        ms2.remove(&p1.control_plane[2]);
        // 2 healthy left, both control plane: nobody to add, nobody demoted.
        let p2 = plan(&ms2, &cfg(3), Some(&p1), &SEED).unwrap();
        assert_eq!(p2.control_plane, p1.control_plane[..2].to_vec());
        // A newcomer restores an odd count.
        ms2.insert(9, member(9, 9));
        let p3 = plan(&ms2, &cfg(3), Some(&p2), &SEED).unwrap();
        assert_eq!(p3.control_plane.len(), 3);
        assert_eq!(p3.control_plane[2], 9);
    }

    #[test]
    fn no_healthy_member_is_an_error_for_the_first_plan() {
        let mut ms = n_members(2);
        for m in ms.values_mut() {
            m.healthy = false;
        }
        let e = control_plane(&ms, 3, None).unwrap_err();
        assert_eq!(e, PlanError::NoHealthyMembers { members: 2 });
    }

    fn opted_out(mut ms: BTreeMap<NodeId, Member>, ids: &[NodeId]) -> BTreeMap<NodeId, Member> {
        for id in ids {
            ms.get_mut(id).unwrap().kubernetes = false;
        }
        ms
    }

    #[test]
    fn opted_out_members_are_never_picked_and_cap_the_size() {
        // The biggest machines opted out: the control plane comes from the rest.
        let mut ms = opted_out(n_members(6), &[1, 2]);
        ms.get_mut(&1).unwrap().mem_bytes = 64 * GIB;
        ms.get_mut(&2).unwrap().cpus = 32;
        assert_eq!(control_plane(&ms, 3, None).unwrap(), vec![3, 4, 5]);
        // 2 candidates left: capped to 1, as with 2 healthy members.
        let ms = opted_out(n_members(4), &[1, 2]);
        assert_eq!(control_plane(&ms, 3, None).unwrap(), vec![3]);
        let p = plan(&ms, &cfg(3), None, &SEED).unwrap();
        assert_eq!(p.workers, vec![1, 2, 4]);
        assert!(
            p.pod_cidrs.contains_key(&1),
            "an opted-out member keeps its pod CIDR"
        );
        // An unhealthy candidate and opted-out healthy members: nobody to pick.
        let mut ms = opted_out(n_members(3), &[1, 2]);
        ms.get_mut(&3).unwrap().healthy = false;
        let e = control_plane(&ms, 3, None).unwrap_err();
        assert_eq!(
            e,
            PlanError::NoControlPlaneCandidates {
                members: 3,
                opted_out: 2,
                in_ram: 0,
            }
        );
        assert!(e.to_string().contains("kubernetes = false"), "{e}");
    }

    #[test]
    fn members_with_var_in_ram_are_workers_only() {
        // The biggest machine netbooted with no usable disk: never etcd or a
        // brick, though it has the most RAM and room on its (tmpfs) /var.
        let mut ms = n_members(4);
        let big = ms.get_mut(&1).unwrap();
        big.var_in_ram = true;
        big.mem_bytes = 64 * GIB;
        big.data_free_bytes = 500 * GIB;
        assert!(!control_plane_candidate(&ms[&1]));
        assert_eq!(control_plane(&ms, 3, None).unwrap(), vec![2, 3, 4]);
        let p = plan(&ms, &cfg(3), None, &SEED).unwrap();
        assert_eq!(p.workers, vec![1]);
        assert!(!p.storage.contains(&1), "{:?}", p.storage);
        assert!(!storage_eligible(&ms[&1], &StorageSection::default()));
        // Only RAM machines: nobody may run etcd, and the error says why.
        let mut ms = n_members(2);
        for m in ms.values_mut() {
            m.var_in_ram = true;
        }
        let e = control_plane(&ms, 3, None).unwrap_err();
        assert_eq!(
            e,
            PlanError::NoControlPlaneCandidates {
                members: 2,
                opted_out: 0,
                in_ram: 2,
            }
        );
        assert!(e.to_string().contains("/var in RAM"), "{e}");
    }

    #[test]
    fn replacement_and_growth_skip_opted_out_members() {
        // Replacement: the removed member's gap is filled by a candidate.
        let ms = opted_out(n_members(5), &[4]);
        let p1 = plan(&ms, &cfg(3), None, &SEED).unwrap();
        assert_eq!(p1.control_plane, vec![1, 2, 3]);
        let mut ms2 = ms.clone();
        ms2.remove(&2);
        let p2 = plan(&ms2, &cfg(3), Some(&p1), &SEED).unwrap();
        assert_eq!(p2.control_plane, vec![1, 3, 5]);
        // Growth: of two joiners, one opted out: adding one would make it
        // even, so neither is added.
        let ms = n_members(1);
        let p1 = plan(&ms, &cfg(3), None, &SEED).unwrap();
        let ms3 = opted_out(n_members(3), &[3]);
        let p2 = plan(&ms3, &cfg(3), Some(&p1), &SEED).unwrap();
        assert_eq!(p2.control_plane, vec![1]);
        let ms5 = opted_out(n_members(5), &[3]);
        let p3 = plan(&ms5, &cfg(3), Some(&p2), &SEED).unwrap();
        assert_eq!(p3.control_plane, vec![1, 4, 5]);
    }

    #[test]
    fn a_planned_member_that_opts_out_later_is_kept_like_an_unhealthy_one() {
        let ms = n_members(4);
        let p1 = plan(&ms, &cfg(3), None, &SEED).unwrap();
        let ms2 = opted_out(ms, &[p1.control_plane[1]]);
        let p2 = plan(&ms2, &cfg(3), Some(&p1), &SEED).unwrap();
        assert_eq!(p2, p1, "etcd membership is not swapped automatically");
    }

    #[test]
    fn storage_prefers_spare_disks_then_free_space_and_spreads() {
        let mut ms = n_members(6);
        ms.get_mut(&6).unwrap().spare_disks = vec!["/dev/sdb".into()];
        ms.get_mut(&3).unwrap().data_free_bytes = 500 * GIB;
        ms.get_mut(&1).unwrap().data_free_bytes = GIB; // not eligible
        let c = cfg(3).storage;
        let (nodes, leader) = storage(&ms, &c, None).unwrap();
        assert_eq!(nodes, vec![6, 3, 2]);
        assert_eq!(leader, Some(6));

        let zoned = members([
            with_labels(member(1, 1), "a", None),
            with_labels(member(2, 2), "a", None),
            with_labels(member(3, 3), "b", None),
        ]);
        let mut c1 = c.clone();
        c1.replica = 2;
        assert_eq!(storage(&zoned, &c1, None).unwrap().0, vec![1, 3]);
    }

    #[test]
    fn storage_keeps_previous_nodes_and_grows_to_replica() {
        let c = cfg(1);
        let p1 = plan(&n_members(2), &c, None, &SEED).unwrap();
        assert_eq!(p1.storage, vec![1, 2]);
        let mut ms = n_members(4);
        ms.get_mut(&4).unwrap().spare_disks = vec!["/dev/sdb".into()];
        let p2 = plan(&ms, &c, Some(&p1), &SEED).unwrap();
        assert_eq!(p2.storage, vec![1, 2, 4]);
        assert_eq!(p2.storage_leader, Some(1));
        // Leader removed: the next storage node leads, and a new one fills in.
        ms.remove(&1);
        let p3 = plan(&ms, &c, Some(&p2), &SEED).unwrap();
        assert_eq!(p3.storage, vec![2, 4, 3]);
        assert_eq!(p3.storage_leader, Some(2));
    }

    #[test]
    fn storage_devices_and_disabled_storage() {
        let mut ms = n_members(3);
        ms.get_mut(&2).unwrap().spare_disks = vec!["/dev/vdb".into()];
        let mut c = cfg(1).storage;
        c.devices = vec!["/dev/vdb".into()];
        assert_eq!(storage(&ms, &c, None).unwrap(), (vec![2], Some(2)));
        c.devices = vec!["/dev/nvme1n1".into()];
        let e = storage(&ms, &c, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "storage.enabled is true but no healthy member has any of storage.devices (/dev/nvme1n1) as a spare disk; lower storage.brick_file_size_gib, fix storage.devices or set storage.enabled = false"
        );
        c.enabled = false;
        assert_eq!(storage(&ms, &c, None).unwrap(), (vec![], None));
    }

    #[test]
    fn brick_devices_are_chosen_once_and_kept() {
        let mut ms = n_members(4);
        ms.get_mut(&2).unwrap().spare_disks = vec!["/dev/vdb".into(), "/dev/vdc".into()];
        let mut c = cfg(3).storage;
        c.nodes = Some(4);
        let (nodes, _) = storage(&ms, &c, None).unwrap();
        assert_eq!(nodes.len(), 4, "storage.nodes above replica adds nodes");
        let devs = storage_devices(&ms, &nodes, &c, None);
        assert_eq!(devs[&2], "/dev/vdb");
        assert_eq!(devs[&1], crate::gluster::LOOP_DEVICE);
        c.devices = vec!["/dev/vdc".into()];
        assert_eq!(storage_devices(&ms, &[2], &c, None)[&2], "/dev/vdc");
        // Once used the disk is no longer spare: the plan keeps it.
        let mut p = plan(&ms, &cfg(3), None, &SEED).unwrap();
        p.storage_devices = devs;
        ms.get_mut(&2).unwrap().spare_disks.clear();
        assert_eq!(
            storage_devices(&ms, &[2], &c, Some(&p))[&2],
            "/dev/vdb",
            "a chosen device never changes"
        );
    }

    #[test]
    fn no_member_with_room_for_a_brick_is_an_error() {
        let mut ms = n_members(2);
        for m in ms.values_mut() {
            m.data_free_bytes = 9 * GIB;
        }
        let e = plan(&ms, &cfg(1), None, &SEED).unwrap_err();
        assert!(e.to_string().contains("10 GiB free"), "{e}");
    }
}
