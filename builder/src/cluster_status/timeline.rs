//! `habuild cluster status --timeline`: where each node's boot went, from
//! the timeline in its status document (`firstboot::protocol::Timeline`).
//!
//! One block per node: a header (hostname, node id, power-on as UTC date
//! and time), then one line per milestone — power-on (kernel start),
//! agent start, discovery (first verified peer), Raft group (member with a
//! leader), plan — and per converge step that waited or ran: the time of
//! day (UTC), seconds since that node's power-on when it started and when
//! it became done, how long it took, and how long it waited on others
//! before it could start. The times are each node's own clock; the offsets
//! from its own power-on compare across nodes even when their clocks do
//! not agree. An agent that cannot say when its kernel started counts from
//! its agent start instead (and says so); an agent older than the timeline
//! says that it has none.

use firstboot::protocol::{StatusDoc, Timeline};

use super::table::cell;
use super::Report;

impl Report {
    /// The `--timeline` output: a block per answering agent, then the
    /// agents that did not answer.
    pub fn render_timeline(&self) -> String {
        let mut out = render_timeline(&self.agents);
        for u in &self.unreachable {
            out += &format!("unreachable: {}: {}\n", u.node_id, u.error);
        }
        if self.agents.is_empty() && self.unreachable.is_empty() {
            out += "no agent answered\n";
        }
        out
    }
}

/// One block per status document, in the given order, separated by a blank line.
pub fn render_timeline(agents: &[StatusDoc]) -> String {
    agents.iter().map(block).collect::<Vec<_>>().join("\n")
}

/// One node's block.
fn block(doc: &StatusDoc) -> String {
    let name = format!("{} ({})", cell(&doc.hostname), cell(&doc.node_id));
    let Some(t) = &doc.timeline else {
        return format!("{name}: no timeline (the agent is older than this habuild)\n");
    };
    let (origin, from, since) = match (t.power_on, t.agent_start) {
        (Some(p), _) => (p, "power-on", "power-on"),
        (None, Some(a)) => (a, "agent start (power-on unknown)", "agent start"),
        (None, None) => return format!("{name}: no timeline yet\n"),
    };
    let mut out = format!(
        "{name}: {from} at {} UTC; seconds since {since}\n",
        date_time(origin)
    );
    let mut rows: Vec<[String; 6]> = vec![[
        "WHAT".into(),
        "AT (UTC)".into(),
        "START".into(),
        "DONE".into(),
        "TOOK".into(),
        "WAITED".into(),
    ]];
    for m in rows_of(t) {
        let since = |at: Option<f64>| at.map_or("-".to_string(), |a| offset(a - origin));
        let (done, took, waited) = if m.step {
            let took = match (m.start, m.end) {
                (Some(s), Some(e)) => offset(e - s),
                _ => "-".into(),
            };
            let waited = match (m.waited_from, m.start) {
                (Some(w), Some(s)) => offset(s - w),
                (Some(w), None) => format!("since {}", offset(w - origin)),
                _ => "-".into(),
            };
            // the first done; a step that went back to pending says so
            let done = match (m.end, m.done_now) {
                (Some(first), Some(now)) if (now - first).abs() > 0.05 => {
                    format!("{}, again {}", since(Some(first)), since(Some(now)))
                }
                (Some(first), None) => format!("{}, not now", since(Some(first))),
                (end, _) => since(end),
            };
            (done, took, waited)
        } else {
            Default::default()
        };
        rows.push([
            cell(&m.what),
            m.start.map_or("-".into(), time_of_day),
            since(m.start),
            done,
            took,
            waited,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::from(" ");
        for (c, v) in row.iter().enumerate() {
            line += "  ";
            // offsets right-aligned, words left-aligned
            if (2..=4).contains(&c) {
                line += &format!("{v:>w$}", w = widths[c]);
            } else {
                line += &format!("{v:<w$}", w = widths[c]);
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// A line of the block: the milestones, then the steps that waited or ran.
struct Row {
    what: String,
    start: Option<f64>,
    end: Option<f64>,
    done_now: Option<f64>,
    waited_from: Option<f64>,
    step: bool,
}

fn rows_of(t: &Timeline) -> Vec<Row> {
    t.milestones()
        .into_iter()
        .map(|m| Row {
            step: m.what.starts_with("step "),
            what: m.what,
            start: m.start,
            end: m.end,
            done_now: m.done_now,
            waited_from: m.waited_from,
        })
        .collect()
}

/// Seconds with one decimal and a unit: `24.4 s` (negative when a clock
/// was stepped between two readings).
fn offset(s: f64) -> String {
    format!("{:.1} s", s)
}

/// `HH:MM:SS.s` (UTC) of unix seconds.
fn time_of_day(t: f64) -> String {
    let tenths = (t * 10.0).round() as i64;
    let day_tenths = tenths.rem_euclid(86_400 * 10);
    let secs = day_tenths / 10;
    format!(
        "{:02}:{:02}:{:02}.{}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        day_tenths % 10
    )
}

/// `YYYY-MM-DD HH:MM:SS.s` (UTC) of unix seconds.
fn date_time(t: f64) -> String {
    let days = ((t * 10.0).round() as i64).div_euclid(86_400 * 10);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {}", time_of_day(t))
}

/// The proleptic Gregorian date of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use firstboot::protocol::StepTimes;

    /// 2026-11-30 10:00:00 UTC.
    const T0: f64 = 1_796_032_800.0;

    fn timeline() -> Timeline {
        Timeline {
            power_on: Some(T0),
            agent_start: Some(T0 + 21.34),
            discovered: Some(T0 + 22.0),
            raft_group: Some(T0 + 24.5),
            plan: Some(T0 + 25.0),
            steps: vec![
                StepTimes {
                    step: "pki".into(),
                    first_wait: Some(T0 + 25.1),
                    first_start: Some(T0 + 26.0),
                    done: Some(T0 + 26.2),
                    first_done: Some(T0 + 26.2),
                    last_end: Some(T0 + 60.0),
                    rounds: 9,
                },
                StepTimes {
                    step: "etcd".into(),
                    first_wait: Some(T0 + 25.1),
                    first_start: Some(T0 + 26.2),
                    done: Some(T0 + 41.25),
                    first_done: Some(T0 + 41.25),
                    last_end: Some(T0 + 61.0),
                    rounds: 12,
                },
                StepTimes {
                    step: "vip".into(),
                    first_wait: Some(T0 + 25.1),
                    first_start: None,
                    done: None,
                    first_done: None,
                    last_end: None,
                    rounds: 0,
                },
            ],
        }
    }

    fn doc(timeline: Option<Timeline>) -> StatusDoc {
        StatusDoc {
            version: 1,
            node_id: "0000000000001000".into(),
            hostname: "node0".into(),
            timeline,
            ..StatusDoc::default()
        }
    }

    #[test]
    fn a_node_block_counts_from_its_power_on() {
        let t = render_timeline(&[doc(Some(timeline()))]);
        let want = [
            "node0 (0000000000001000): power-on at 2026-11-30 10:00:00.0 UTC; seconds since power-on",
            "   WHAT         AT (UTC)     START    DONE    TOOK  WAITED",
            "   power-on     10:00:00.0   0.0 s",
            "   agent start  10:00:21.3  21.3 s",
            "   discovery    10:00:22.0  22.0 s",
            "   raft group   10:00:24.5  24.5 s",
            "   plan         10:00:25.0  25.0 s",
            "   step pki     10:00:26.0  26.0 s  26.2 s   0.2 s  0.9 s",
            "   step etcd    10:00:26.2  26.2 s  41.2 s  15.0 s  1.1 s",
            "   step vip     -                -       -       -  since 25.1 s",
            "",
        ]
        .join("\n");
        assert_eq!(t, want, "\n{t}");
    }

    #[test]
    fn a_step_that_went_back_to_pending_shows_its_first_done() {
        let mut t = timeline();
        // etcd: first done at 41.2 s, pending again, done again at 90 s
        t.steps[1].done = Some(T0 + 90.0);
        // pki: first done at 26.2 s, pending now
        t.steps[0].done = None;
        let text = render_timeline(&[doc(Some(t.clone()))]);
        assert!(
            text.contains("step pki     10:00:26.0  26.0 s       26.2 s, not now   0.2 s  0.9 s"),
            "\n{text}"
        );
        assert!(
            text.contains("step etcd    10:00:26.2  26.2 s  41.2 s, again 90.0 s  15.0 s  1.1 s"),
            "\n{text}"
        );
        // what tests and benchmarks read: the first done
        let offsets = t.offsets(T0);
        let at = |what: &str| {
            offsets
                .iter()
                .find(|(w, _)| w == what)
                .map(|(_, s)| (s * 10.0).round() / 10.0)
        };
        assert_eq!(
            (at("step etcd done"), at("step pki done")),
            (Some(41.3), Some(26.2)),
            "{offsets:?}"
        );
    }

    #[test]
    fn older_agents_missing_milestones_and_unknown_power_on() {
        let mut partial = timeline();
        partial.power_on = None;
        partial.raft_group = None;
        partial.plan = None;
        partial.steps.clear();
        let mut other = doc(Some(partial));
        other.hostname = "bad\nname".into();
        let t = render_timeline(&[doc(None), other, doc(Some(Timeline::default()))]);
        let blocks: Vec<&str> = t.split("\n\n").collect();
        assert_eq!(blocks.len(), 3, "{t}");
        assert_eq!(
            blocks[0],
            "node0 (0000000000001000): no timeline (the agent is older than this habuild)"
        );
        let lines: Vec<&str> = blocks[1].lines().collect();
        assert_eq!(
            lines[0],
            "bad?name (0000000000001000): agent start (power-on unknown) at 2026-11-30 10:00:21.3 UTC; seconds since agent start"
        );
        let cells = |l: &str| -> Vec<String> {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(cells(lines[2]), ["power-on", "-", "-"]);
        assert_eq!(cells(lines[3]), ["agent start", "10:00:21.3", "0.0 s"]);
        assert_eq!(cells(lines[4]), ["discovery", "10:00:22.0", "0.7 s"]);
        assert_eq!(cells(lines[5]), ["raft group", "-", "-"]);
        assert_eq!(lines.len(), 7, "no step lines: {t}");
        assert_eq!(
            blocks[2], "node0 (0000000000001000): no timeline yet\n",
            "{t}"
        );
        // the JSON output carries the timeline as the agent sent it
        let r = Report {
            agents: vec![doc(Some(timeline()))],
            ..Report::default()
        };
        let json = serde_json::to_value(r.to_json()).unwrap();
        assert_eq!(
            json["agents"][0]["timeline"]["steps"][1]["done"],
            T0 + 41.25
        );
        assert_eq!(json["agents"][0]["timeline"]["power_on"], T0);
        // a document from before the timeline parses without one
        assert_eq!(StatusDoc::parse("{}").unwrap().timeline, None);
    }

    #[test]
    fn report_lists_the_unreachable_after_the_blocks() {
        let r = Report {
            agents: vec![doc(Some(timeline()))],
            unreachable: vec![super::super::Unreachable {
                node_id: "0000000000001001".into(),
                addresses: vec!["10.0.0.2:7946".into()],
                error: "no answer within 3 s".into(),
            }],
            ..Report::default()
        };
        let t = r.render_timeline();
        assert!(
            t.ends_with("unreachable: 0000000000001001: no answer within 3 s\n"),
            "{t}"
        );
        assert_eq!(Report::default().render_timeline(), "no agent answered\n");
    }

    #[test]
    fn dates_and_times_of_day() {
        assert_eq!(date_time(0.0), "1970-01-01 00:00:00.0");
        assert_eq!(date_time(951_782_400.0), "2000-02-29 00:00:00.0");
        assert_eq!(date_time(T0 + 3599.96), "2026-11-30 11:00:00.0");
        assert_eq!(date_time(-1.0), "1969-12-31 23:59:59.0");
        assert_eq!(time_of_day(T0 + 86_399.9), "09:59:59.9");
        assert_eq!(civil_from_days(19_722), (2023, 12, 31));
        assert_eq!(offset(-0.04), "-0.0 s");
    }
}
