//! What one claim costs beside a backlog (docs/benchmarks.md, "A claim beside a backlog"):
//! `backlog` builds queued in a lane no node can run (it needs a label nobody has), ten in the
//! default lane, and the median time of `Queue::next_for` for a node without that label. Then what
//! the lane watch's look at each lane costs beside the same backlog (`unservable`, every second
//! per lane and at each scrape, under the projections' read lock), with that node live and with
//! none. Then why every queued build waits, in one pass and build by build, beside a backlog the
//! live node can run. Last, what `GET /api/v1/queue` reads for a page: the first 100 builds of the
//! default lane beside a backlog of a higher priority lane, against every build's reason.
//!
//!   cargo run --release -p meshgate-projections --example claim_backlog
//!
//! `--quick` stops at 1,000 queued builds: the test command runs it that way, so that its checks
//! of the answers run without the largest backlogs (the build-by-build reasons are quadratic).

use std::time::Instant;

use meshgate_domain::pause::Paused;
use meshgate_projections::{unservable, waiting, waiting_all, LaneRule, NodeAsk, NodeView, Queue, QueueEntry, Slice};
use uuid::Uuid;

fn entry(n: u64, lane: &str) -> QueueEntry {
    QueueEntry {
        build_id: Uuid::from_u128(u128::from(n) + 1),
        issue_id: format!("MOB-{n}"),
        lane: lane.into(),
        script: "ios-build".into(),
        position: n + 1,
        attempt: 1,
        node_id: None,
        xcode: None,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = |all: &[u64]| -> Vec<u64> { all.iter().copied().filter(|n| !quick || *n <= 1_000).collect() };
    let lanes = vec![
        LaneRule { name: "default".into(), priority: 0, required_labels: vec![], max_running: None, xcode: None },
        LaneRule {
            name: "signing".into(),
            priority: 10,
            required_labels: vec!["signing".into()],
            max_running: None,
            xcode: None,
        },
    ];
    let labels = vec!["xcode-16".to_owned()];
    let node = NodeAsk { node_id: "mac-1", labels: &labels, slots: 2, xcodes: &[] };
    println!("| builds queued in a lane the node cannot run | claim, median of 201 | claim, p99 |");
    println!("|---:|---:|---:|");
    for backlog in sizes(&[0, 1_000, 10_000, 100_000]) {
        let mut queued: Vec<QueueEntry> = (0..backlog).map(|n| entry(n, "signing")).collect();
        queued.extend((backlog..backlog + 10).map(|n| entry(n, "default")));
        let queue = Queue::restore(queued, Vec::new());
        let mut took: Vec<f64> = (0..201)
            .map(|_| {
                let started = Instant::now();
                let next = queue.next_for(&lanes, &node);
                let elapsed = started.elapsed().as_secs_f64() * 1e6;
                assert_eq!(next.map(|e| e.position), Some(backlog + 1), "the default lane's first build");
                elapsed
            })
            .collect();
        took.sort_by(f64::total_cmp);
        println!("| {backlog} | {:.1} µs | {:.1} µs |", took[100], took[198]);
    }

    let mac = NodeView {
        node_id: "mac-1".into(),
        labels: labels.clone(),
        slots: 2,
        xcodes: Vec::new(),
        last_seen: chrono::DateTime::from_timestamp(1_787_562_900, 0).unwrap_or_default(),
        running: Default::default(),
        draining: false,
        lost: false,
    };
    println!();
    println!(
        "| builds queued in a lane the node cannot run | the lanes watched, node live, median of 201 | no node live |"
    );
    println!("|---:|---:|---:|");
    for backlog in sizes(&[0, 1_000, 10_000, 100_000]) {
        let mut queued: Vec<QueueEntry> = (0..backlog).map(|n| entry(n, "signing")).collect();
        queued.extend((backlog..backlog + 10).map(|n| entry(n, "default")));
        let queue = Queue::restore(queued, Vec::new());
        let median = |live: bool| {
            let mut took: Vec<f64> = (0..201)
                .map(|_| {
                    let started = Instant::now();
                    let answers: Vec<bool> =
                        lanes.iter().map(|rule| unservable(rule, &queue, std::iter::once(&mac), |_| live)).collect();
                    let elapsed = started.elapsed().as_secs_f64() * 1e6;
                    // The default lane's builds can run on the node when it is live; the signing
                    // lane's never (when it has any).
                    assert_eq!(answers, vec![!live, backlog > 0], "live: {live}");
                    elapsed
                })
                .collect();
            took.sort_by(f64::total_cmp);
            took[100]
        };
        println!("| {backlog} | {:.1} µs | {:.1} µs |", median(true), median(false));
    }

    println!();
    println!("| builds queued in a lane the live node can run | every build's reason, one pass | build by build |");
    println!("|---:|---:|---:|");
    for backlog in sizes(&[100, 1_000, 10_000]) {
        let queue = Queue::restore((0..backlog).map(|n| entry(n, "default")).collect(), Vec::new());
        let paused = Paused::default();
        let median = |one_pass: bool| {
            let rounds = if backlog >= 10_000 && !one_pass { 3 } else { 21 };
            let mut took: Vec<f64> = (0..rounds)
                .map(|_| {
                    let started = Instant::now();
                    let reasons: Vec<_> = if one_pass {
                        waiting_all(&queue, std::iter::once(&mac), &lanes, &paused, |_| true, Slice::ALL)
                            .into_iter()
                            .map(|(_, why)| why)
                            .collect()
                    } else {
                        let priorities = lanes.iter().map(|l| (l.name.clone(), l.priority)).collect();
                        queue
                            .ordered(&priorities)
                            .into_iter()
                            .map(|e| waiting(e, &queue, std::iter::once(&mac), &lanes, &paused, |_| true))
                            .collect()
                    };
                    let elapsed = started.elapsed().as_secs_f64() * 1e3;
                    // The node is free: each build waits for those before it.
                    assert_eq!(
                        reasons.last(),
                        Some(&meshgate_projections::Waiting::Ahead { builds: backlog as usize - 1 })
                    );
                    elapsed
                })
                .collect();
            took.sort_by(f64::total_cmp);
            took[took.len() / 2]
        };
        println!("| {backlog} | {:.2} ms | {:.2} ms |", median(true), median(false));
    }

    println!();
    println!("| builds queued, half in a higher priority lane | the default lane's first 100 | every build's reason |");
    println!("|---:|---:|---:|");
    let signer = NodeView { labels: vec!["signing".into()], ..mac.clone() };
    for backlog in sizes(&[1_000, 10_000, 100_000]) {
        let half = backlog / 2;
        let mut queued: Vec<QueueEntry> = (0..half).map(|n| entry(n, "signing")).collect();
        queued.extend((half..backlog).map(|n| entry(n, "default")));
        let queue = Queue::restore(queued, Vec::new());
        let paused = Paused::default();
        let median = |slice: Slice<'_>| {
            let mut took: Vec<f64> = (0..21)
                .map(|_| {
                    let started = Instant::now();
                    let page = waiting_all(&queue, std::iter::once(&signer), &lanes, &paused, |_| true, slice);
                    let elapsed = started.elapsed().as_secs_f64() * 1e3;
                    // The signing lane goes first on the signer: the default lane's builds wait
                    // for all of it.
                    let (first, why) = page.iter().find(|(e, _)| e.lane == "default").expect("a default build");
                    assert_eq!(first.position, half + 1);
                    assert_eq!(why, &meshgate_projections::Waiting::Ahead { builds: half as usize });
                    elapsed
                })
                .collect();
            took.sort_by(f64::total_cmp);
            took[took.len() / 2]
        };
        let page = median(Slice { lane: Some("default"), limit: 100 });
        println!("| {backlog} | {page:.3} ms | {:.2} ms |", median(Slice::ALL));
    }

    println!();
    println!("| builds queued in the default lane | a lane of the same priority's page: its ten builds first | its ten builds last |");
    println!("|---:|---:|---:|");
    for backlog in sizes(&[1_000, 10_000, 100_000]) {
        let median = |web_first: bool| {
            let web = if web_first { 0..10 } else { backlog..backlog + 10 };
            let default = if web_first { 10..backlog + 10 } else { 0..backlog };
            let mut queued: Vec<QueueEntry> = web.map(|n| entry(n, "web")).collect();
            queued.extend(default.map(|n| entry(n, "default")));
            let queue = Queue::restore(queued, Vec::new());
            let paused = Paused::default();
            let mut took: Vec<f64> = (0..21)
                .map(|_| {
                    let started = Instant::now();
                    let slice = Slice { lane: Some("web"), limit: 100 };
                    let page = waiting_all(&queue, std::iter::once(&mac), &lanes, &paused, |_| true, slice);
                    let elapsed = started.elapsed().as_secs_f64() * 1e3;
                    assert_eq!(page.len(), 10);
                    let ahead = if web_first { 9 } else { backlog as usize + 9 };
                    assert_eq!(page[9].1, meshgate_projections::Waiting::Ahead { builds: ahead });
                    elapsed
                })
                .collect();
            took.sort_by(f64::total_cmp);
            took[took.len() / 2]
        };
        println!("| {backlog} | {:.3} ms | {:.3} ms |", median(true), median(false));
    }
}
