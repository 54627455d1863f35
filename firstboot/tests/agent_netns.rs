//! Five real `habuild-agent` processes, each in its own network namespace on
//! a bridge this test creates, name themselves by cluster.toml's default
//! `network.hostname` pattern (distinct names, kept across a restart; each
//! agent in its own UTS namespace), form one Raft group and commit a plan; the
//! leader is killed (failover measured), restarted (rejoins, no second
//! group), and a sixth agent with the wrong secret is never admitted.
//!
//! Network rule: every packet stays inside the namespaces created here (mDNS
//! runs only on the namespaces' `eth0`, a veth into the test's bridge).
//! Without the means to create namespaces the test fails and says why.
//! The lab (namespaces, agents, status) is `testlab`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use firstboot::protocol::{hex, StatusDoc};
use testlab::status::{converged, pretty, Converged};
use testlab::{AgentArgs, Lab};

const NODES: usize = 5;
const GOOD_SECRET: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const BAD_SECRET: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn node_id(i: usize) -> u64 {
    0x1000 + i as u64
}

fn cluster_toml(secret: &str) -> String {
    testlab::ClusterToml::lab("nslab", secret, 3, [10, 89, 0])
}

/// The name the default pattern `node-{id:6}` gives node `id`.
fn pattern_name(id: u64) -> String {
    format!("node-{:06x}", id & 0xff_ffff)
}

/// Consensus only: these agents start no etcd, keepalived or haproxy. No
/// `--hostname`: each names itself by the pattern.
fn start(lab: &mut Lab, i: usize, file: &Path, id: u64) {
    let agent = Path::new(env!("CARGO_BIN_EXE_habuild-agent"));
    let args = AgentArgs::new(agent, file, id, &format!("node{i}"))
        .without_hostname()
        .args(["--services", "none"]);
    lab.start(i, &args)
        .unwrap_or_else(|e| panic!("starting node{i}: {e}"));
}

#[test]
fn five_agents_form_one_group_fail_over_and_refuse_a_wrong_secret() {
    // Never skipped: without namespaces the lab fails and says what is missing.
    let mut lab = Lab::new("hbagent", [10, 89, 0], NODES + 2).unwrap_or_else(|e| panic!("{e}"));
    let good = lab.dir().join("cluster.toml");
    std::fs::write(&good, cluster_toml(GOOD_SECRET)).unwrap();
    let bad = lab.dir().join("cluster-wrong-secret.toml");
    std::fs::write(&bad, cluster_toml(BAD_SECRET)).unwrap();

    let all: Vec<usize> = (0..NODES).collect();
    let ids: BTreeSet<String> = all.iter().map(|i| hex(node_id(*i))).collect();
    let t0 = Instant::now();
    for &i in &all {
        start(&mut lab, i, &good, node_id(i));
    }

    // 1. one group, one plan
    let Converged {
        leader,
        voters,
        plan,
    } = loop {
        if let Some(c) = converged(&lab.statuses(&all), &ids) {
            break c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no common plan after 60 s\n{}",
            lab.dump(&all)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let formed = t0.elapsed();
    println!(
        "agent_netns: {NODES} agents committed plan v{} in {:.1} s (leader {leader}, voters {voters:?})",
        plan.version,
        formed.as_secs_f64()
    );
    assert_eq!(voters, ids, "one group with every node a voter");
    assert_eq!(
        plan.control_plane.iter().collect::<BTreeSet<_>>().len(),
        3,
        "{plan:?}"
    );
    for text in all.iter().filter_map(|i| lab.status_text(*i)) {
        assert!(!text.contains(GOOD_SECRET), "status leaks the secret");
    }
    for s in lab.statuses(&all).into_iter().flatten() {
        assert!(s.role.is_some(), "{}", pretty(&s));
    }
    let inits: usize = all
        .iter()
        .map(|i| lab.log(*i).matches("initializing the group").count())
        .sum();
    assert_eq!(inits, 1, "exactly one initialize\n{}", lab.dump(&all));

    // 1b. every node named itself: distinct names, reported by the node and
    //     in every node's view of the members (what `cluster status` shows)
    let names: BTreeMap<String, String> = all
        .iter()
        .map(|i| (hex(node_id(*i)), pattern_name(node_id(*i))))
        .collect();
    assert_eq!(
        names.values().collect::<BTreeSet<_>>().len(),
        NODES,
        "{names:?}"
    );
    for (i, s) in all.iter().zip(lab.statuses(&all)) {
        let s = s.unwrap_or_else(|| panic!("node{i} has no status"));
        assert_eq!(s.hostname, names[&s.node_id], "{}", pretty(&s));
        let seen: BTreeMap<String, String> = s
            .member_health
            .iter()
            .map(|m| (m.id.clone(), m.hostname.clone()))
            .collect();
        assert_eq!(seen, names, "{}", pretty(&s));
    }
    println!(
        "agent_netns: hostnames {:?}",
        names.values().collect::<Vec<_>>()
    );

    // 2. leader failover
    let old = all
        .iter()
        .copied()
        .find(|i| hex(node_id(*i)) == leader)
        .expect("leader is one of ours");
    lab.kill(old);
    let killed = Instant::now();
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != old).collect();
    let new_leader = loop {
        let st = lab.statuses(&rest);
        let leaders: BTreeSet<Option<String>> = st
            .iter()
            .map(|s| s.as_ref().and_then(|s| s.raft.leader.clone()))
            .collect();
        if let [Some(l)] = &leaders.iter().cloned().collect::<Vec<_>>()[..] {
            if *l != leader {
                break l.clone();
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no new leader 15 s after killing {leader}\n{}",
            lab.dump(&rest)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "agent_netns: leader {leader} killed; new leader {new_leader} after {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    for s in lab.statuses(&rest).into_iter().flatten() {
        assert_eq!(s.plan.as_ref(), Some(&plan), "plan changed on failover");
    }

    // 3. the killed agent restarts with its state and rejoins the same group
    start(&mut lab, old, &good, node_id(old));
    let restarted = Instant::now();
    loop {
        if let Some(Converged {
            leader: l,
            voters: v,
            plan: p,
        }) = converged(&lab.statuses(&all), &ids)
        {
            assert_eq!(v, voters, "same group");
            assert_eq!(p, plan, "plan unchanged");
            let s = lab.status(old).expect("restarted status");
            assert_eq!(s.hostname, pattern_name(node_id(old)), "name kept");
            assert_eq!(
                lab.log(old).matches("(kept from an earlier boot)").count(),
                1,
                "the restart read the persisted name\n{}",
                lab.log(old)
            );
            println!(
                "agent_netns: restarted {} rejoined in {:.1} s (leader {l})",
                hex(node_id(old)),
                restarted.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "restarted agent did not rejoin\n{}",
            lab.dump(&all)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let inits: usize = all
        .iter()
        .map(|i| lab.log(*i).matches("initializing the group").count())
        .sum();
    assert_eq!(inits, 1, "no second initialize\n{}", lab.dump(&all));

    // 4. a wrong secret is never admitted
    let intruder = NODES;
    start(&mut lab, intruder, &bad, node_id(intruder));
    std::thread::sleep(Duration::from_secs(10));
    let iid = hex(node_id(intruder));
    for (i, s) in all.iter().zip(lab.statuses(&all)) {
        let s = s.unwrap_or_else(|| panic!("node{i} has no status"));
        for ids in [&s.raft.voters, &s.raft.learners] {
            assert!(!ids.contains(&iid), "{}", pretty(&s));
        }
        assert!(!s.members.contains(&iid), "{}", pretty(&s));
        assert!(
            s.rejected.bad_mac >= 1,
            "node{i} did not count the intruder's announcements\n{}",
            pretty(&s)
        );
    }
    let is = lab.status(intruder).expect("intruder status");
    assert!(!is.raft.member, "{}", pretty(&is));
    assert!(is.rejected.bad_mac >= 1, "{}", pretty(&is));
    println!(
        "agent_netns: intruder {iid} not admitted after 10 s (phase {}, bad_mac seen by others: {:?})",
        is.phase,
        lab.statuses(&all)
            .iter()
            .map(|s| s.as_ref().map(|s| s.rejected.bad_mac))
            .collect::<Vec<_>>()
    );

    // 5. a clone of the leader's disk (same node id, another address) is
    //    refused and reported on both sides; the group and the plan are
    //    untouched. The leader's: the clone cannot reach "the leader" a
    //    follower redirects it to (its own id), so the followers must tell it.
    let orig_i = all
        .iter()
        .copied()
        .find(|i| hex(node_id(*i)) == new_leader)
        .expect("the new leader is one of ours");
    let clone = NODES + 1;
    start(&mut lab, clone, &good, node_id(orig_i));
    let t = Instant::now();
    loop {
        let orig = lab.status(orig_i);
        let cl = lab.status(clone);
        let seen = |s: &Option<StatusDoc>| {
            s.as_ref()
                .is_some_and(|s| s.rejected.duplicate_node_id >= 1)
        };
        let clone_told = cl.as_ref().is_some_and(|c| {
            let w = c.waiting_for.as_deref().unwrap_or("");
            w.contains("fresh machine-id") || w.contains("duplicate node id")
        });
        if seen(&orig) && clone_told {
            let (orig, cl) = (orig.unwrap(), cl.unwrap());
            assert!(
                orig.error
                    .as_deref()
                    .unwrap_or("")
                    .contains("fresh machine-id"),
                "{}",
                pretty(&orig)
            );
            assert!(!cl.raft.member, "{}", pretty(&cl));
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "duplicate node id not reported\n{}",
            lab.dump(&[orig_i, clone])
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Every agent publishes its status every 300 ms, so one snapshot of
    // five can catch a commit half-seen; the group must be (still or
    // again) converged within a few seconds, with the same voters and plan.
    let t_conv = Instant::now();
    let Converged {
        voters: v, plan: p, ..
    } = loop {
        if let Some(c) = converged(&lab.statuses(&all), &ids) {
            break c;
        }
        assert!(
            t_conv.elapsed() < Duration::from_secs(20),
            "group not converged with the clone on the L2\n{}",
            lab.dump(&all)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(v, voters, "same voters");
    assert_eq!(p, plan, "plan unchanged by the clone");
    println!(
        "agent_netns: clone of the leader {} reported as a duplicate node id after {:.1} s and kept out",
        hex(node_id(orig_i)),
        t.elapsed().as_secs_f64()
    );
}
