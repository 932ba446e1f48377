//! The event store contract. Written against `dyn EventStore` so every backend runs the same suite;
//! here on the embedded SQLite store, with group commit and with one commit per request.

use std::sync::Arc;

use futures_util::future::join_all;
use meshgate::store::sqlite::{SqliteStore, WriterOptions};
use meshgate::store::{EventStore, NewEvent, StoreError, StreamAppend};
use meshgate_domain::event::{BuildCancelled, Event};
use meshgate_domain::ExpectedVersion;
use uuid::Uuid;

pub(crate) fn event(n: u128) -> NewEvent {
    let e = Event::BuildCancelled(BuildCancelled {
        build_id: Uuid::from_u128(n),
        reason: format!("r{n}"),
        cancelled_at: chrono::Utc::now(),
        report: None,
    });
    NewEvent::from_domain(&e, Uuid::from_u128(n), None, chrono::Utc::now())
}

pub(crate) fn append(stream: &str, expected: ExpectedVersion, n: usize) -> StreamAppend {
    StreamAppend { stream: stream.into(), expected, events: (0..n as u128).map(event).collect() }
}

fn open(dir: &std::path::Path, max_batch: usize) -> Arc<dyn EventStore> {
    let options = WriterOptions { max_batch, ..WriterOptions::default() };
    Arc::new(SqliteStore::open(&dir.join("events.sqlite"), options).unwrap())
}

pub(crate) async fn contract(store: Arc<dyn EventStore>) {
    // Versions and expectations.
    let a = store.append(vec![append("a", ExpectedVersion::NoStream, 2)]).await.unwrap();
    assert_eq!(a.last_position, 2);
    let conflict = store.append(vec![append("a", ExpectedVersion::NoStream, 1)]).await.unwrap_err();
    assert!(
        matches!(
            &conflict,
            StoreError::Conflict { stream, expected: ExpectedVersion::NoStream, actual: Some(1) } if stream == "a"
        ),
        "{conflict:?}"
    );
    assert!(store.append(vec![append("a", ExpectedVersion::Exact(0), 1)]).await.is_err());
    store.append(vec![append("a", ExpectedVersion::Exact(1), 1)]).await.unwrap();
    store.append(vec![append("a", ExpectedVersion::Any, 1)]).await.unwrap();
    let versions: Vec<u64> = store.read_stream("a").await.unwrap().iter().map(|e| e.version).collect();
    assert_eq!(versions, [0, 1, 2, 3]);
    let last = store.read_last("a").await.unwrap().expect("the stream's last event");
    assert_eq!((last.stream.as_str(), last.version), ("a", 3));
    assert!(store.read_last("nope").await.unwrap().is_none());
    assert!(store.read_stream("nope").await.unwrap().is_empty());

    // Several streams are appended all or nothing.
    let before = *store.head().borrow();
    let mixed = vec![append("b", ExpectedVersion::NoStream, 1), append("a", ExpectedVersion::NoStream, 1)];
    assert!(matches!(store.append(mixed).await, Err(StoreError::Conflict { .. })));
    assert!(store.read_stream("b").await.unwrap().is_empty());
    assert_eq!(*store.head().borrow(), before);

    // Concurrent appends, half of them conflicting: the rest land, positions stay gap-free.
    let attempts = (0..40).map(|i| {
        let store = Arc::clone(&store);
        async move {
            let stream = format!("c{}", i / 2); // two writers per stream, both expecting no stream
            store.append(vec![append(&stream, ExpectedVersion::NoStream, 3)]).await
        }
    });
    let results = join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 20);
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, StoreError::Conflict { .. })));
    let all = store.read_all(0, 10_000).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(*store.head().borrow(), all.len() as u64);
    assert_eq!(store.read_all(3, 2).await.unwrap().iter().map(|e| e.position).collect::<Vec<_>>(), [4, 5]);

    // Stored events decode back to what was appended.
    let first = store.read_stream("a").await.unwrap().remove(0);
    assert_eq!(first.event_type, "BuildCancelled");
    assert!(first.decode().is_ok());

    // Decoded reads of some types (how followers catch up): those types only, the range covered.
    let head = *store.head().borrow();
    let positions = |read: &[meshgate_domain::Recorded]| read.iter().map(|r| r.position).collect::<Vec<_>>();
    let (cancelled, covered) = store.read_decoded(0, 10_000, &["BuildCancelled"]).await.unwrap();
    assert_eq!((positions(&cancelled), covered), ((1..=head).collect(), head));
    let (some, covered) = store.read_decoded(3, 2, &["WebhookReceived", "BuildCancelled"]).await.unwrap();
    assert_eq!((positions(&some), covered), (vec![4, 5], 5));
    assert_eq!(some[0].event, event_at(&store, 4).await);
    let (none, covered) = store.read_decoded(0, 5, &["WebhookReceived"]).await.unwrap();
    assert_eq!((none.len(), covered), (0, 5));
    let (none, covered) = store.read_decoded(head, 10, &["BuildCancelled"]).await.unwrap();
    assert_eq!((none.len(), covered), (0, head));

    store.check_writable().await.unwrap();
}

/// A request that appends to a stream, then another, then the first again, on a fresh store.
pub(crate) async fn one_request_names_a_stream_twice(store: Arc<dyn EventStore>) {
    let twice = vec![
        append("t", ExpectedVersion::NoStream, 1),
        append("u", ExpectedVersion::Any, 1),
        append("t", ExpectedVersion::Exact(0), 1),
    ];
    store.append(twice).await.unwrap();
    let t: Vec<(u64, u64)> = store.read_stream("t").await.unwrap().iter().map(|e| (e.position, e.version)).collect();
    assert_eq!(t, [(1, 0), (3, 1)]);
}

/// Two stores on one shared log (two gateways): `streams` streams, each wanted by both at once
/// expecting it not to exist. One of each pair wins; the log stays one, gap-free, and each
/// store's followers are handed all of it in order, whichever store appended it.
pub(crate) async fn two_stores_keep_one_log(a: &Arc<dyn EventStore>, b: &Arc<dyn EventStore>, streams: usize) {
    let (mut feed_a, mut feed_b) = (a.committed().unwrap(), b.committed().unwrap());
    let attempts = (0..streams * 2).map(|i| {
        let store = Arc::clone(if i % 2 == 0 { a } else { b });
        async move { store.append(vec![append(&format!("s{}", i / 2), ExpectedVersion::NoStream, 2)]).await }
    });
    let results = join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), streams);
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, StoreError::Conflict { .. })));

    let events = streams as u64 * 2;
    let log = a.read_all(0, 1000).await.unwrap();
    assert_eq!(log.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=events).collect::<Vec<_>>());
    assert_eq!(b.read_all(0, 1000).await.unwrap(), log);
    for feed in [&mut feed_a, &mut feed_b] {
        let (mut seen, mut through) = (Vec::new(), 0);
        while through < events {
            let commit = feed.recv().await.unwrap();
            assert_eq!(commit.after, through, "each commit follows the last");
            seen.extend(commit.events.iter().cloned());
            through = commit.through;
        }
        assert_eq!(seen, log);
    }
    for i in 0..streams {
        assert_eq!(b.read_stream(&format!("s{i}")).await.unwrap().len(), 2);
    }
    let mut head_b = b.head();
    assert_eq!(*head_b.wait_for(|h| *h == events).await.unwrap(), events);
}

/// The event at `position`, as `read_all` decodes it.
async fn event_at(store: &Arc<dyn EventStore>, position: u64) -> Event {
    store.read_all(position - 1, 1).await.unwrap().remove(0).decode().unwrap().event
}

#[tokio::test]
async fn the_sqlite_store_with_group_commit_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(open(dir.path(), 512)).await;
}

#[tokio::test]
async fn the_sqlite_store_with_one_commit_per_request_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(open(dir.path(), 1)).await;
}

#[tokio::test]
async fn a_reopened_store_continues_positions_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 512);
        store.append(vec![append("s", ExpectedVersion::NoStream, 3)]).await.unwrap();
    }
    let store = open(dir.path(), 512);
    assert_eq!(*store.head().borrow(), 3);
    let appended = store.append(vec![append("s", ExpectedVersion::Exact(2), 1)]).await.unwrap();
    assert_eq!(appended.last_position, 4);
}

#[tokio::test]
async fn the_head_announces_each_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 512);
    let mut head = store.head();
    let writer = Arc::clone(&store);
    let task = tokio::spawn(async move { writer.append(vec![append("h", ExpectedVersion::Any, 2)]).await });
    let seen = *head.wait_for(|h| *h >= 2).await.unwrap();
    assert_eq!(seen, 2);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_second_writer_cannot_open_a_log_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), 512);
    let options = WriterOptions { busy_timeout: std::time::Duration::from_millis(50), ..WriterOptions::default() };
    let second = SqliteStore::open(&dir.path().join("events.sqlite"), options).err().expect("the log is locked");
    assert!(second.to_string().contains("in use by another process"), "{second}");
}

#[tokio::test]
async fn a_log_of_the_first_layout_is_upgraded_and_keeps_its_streams() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sqlite");
    {
        let store = open(dir.path(), 512);
        store
            .append(vec![append("s", ExpectedVersion::NoStream, 2), append("t", ExpectedVersion::NoStream, 1)])
            .await
            .unwrap();
    }
    // Rewrite the file as the first layout wrote it: a unique (stream, version) index, version 0.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE old AS SELECT * FROM events;
             DROP TABLE events;
             CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
                 id BLOB NOT NULL, type TEXT NOT NULL, schema_version INTEGER NOT NULL, data TEXT NOT NULL,
                 correlation_id BLOB NOT NULL, causation_id BLOB, recorded_at INTEGER NOT NULL, UNIQUE (stream, version));
             INSERT INTO events SELECT * FROM old;
             DROP TABLE old;
             PRAGMA user_version = 0;",
        )
        .unwrap();
    }
    let store = open(dir.path(), 512);
    assert_eq!(store.read_stream("s").await.unwrap().iter().map(|e| e.version).collect::<Vec<_>>(), [0, 1]);
    let conflict = store.append(vec![append("t", ExpectedVersion::NoStream, 1)]).await.unwrap_err();
    assert!(matches!(conflict, StoreError::Conflict { actual: Some(0), .. }), "{conflict:?}");
    assert_eq!(store.append(vec![append("s", ExpectedVersion::Exact(1), 1)]).await.unwrap().last_position, 4);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let layout: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    let indexes: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'", [], |r| r.get(0))
        .unwrap();
    assert_eq!((layout, indexes), (2, 0));
}

#[tokio::test]
async fn followers_get_each_commit_after_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 512);
    let mut feed = store.committed().expect("the SQLite store has a commit feed");
    store.append(vec![append("f", ExpectedVersion::NoStream, 2)]).await.unwrap();
    let refused = store.append(vec![append("f", ExpectedVersion::NoStream, 1)]).await;
    assert!(refused.is_err());
    store.append(vec![append("g", ExpectedVersion::Any, 1)]).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let commit = feed.recv().await.unwrap();
        assert_eq!((commit.after, commit.through), (seen.len() as u64, (seen.len() + commit.events.len()) as u64));
        seen.extend(commit.events.iter().cloned());
    }
    // What the feed says is what a reader of the log gets back, conflicting appends excluded.
    assert_eq!(seen, store.read_all(0, 100).await.unwrap());
}

/// One build requested, as its own commit.
fn requested(n: u128) -> StreamAppend {
    let build_id = Uuid::from_u128(n);
    let event = Event::BuildRequested(meshgate_domain::event::BuildRequested {
        build_id,
        issue_id: format!("MOB-{n}"),
        project: "MOB".into(),
        summary: None,
        trigger: "ios-build".into(),
        script: "ios-build".into(),
        lane: "default".into(),
        git_ref: "main".into(),
        requested_by: None,
        intent_key: format!("MOB-{n}/ios-build"),
        correlation_id: build_id,
        requested_at: chrono::Utc::now(),
        transition_at: None,
        source: Default::default(),
        xcode: None,
        rebuild_of: None,
    });
    let new = NewEvent::from_domain(&event, build_id, None, chrono::Utc::now());
    StreamAppend {
        stream: meshgate_domain::stream::build_stream(build_id),
        expected: ExpectedVersion::NoStream,
        events: vec![new],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_projections_that_fall_behind_the_commit_feed_catch_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 512);
    let readmodel = |name: &str| Arc::new(meshgate::readmodel::ReadModel::open(&dir.path().join(name)).unwrap());
    let outbox = meshgate_projections::OutboxConfig::default();
    let (live, follow) = meshgate::projector::start(
        Arc::clone(&store),
        readmodel("live.sqlite"),
        outbox.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();
    tokio::spawn(follow);

    // Hold the projections still (a reader that does not let go) while more commits land than
    // the feed keeps: the follower misses batches and must read them from the log.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (holding, held) = std::sync::mpsc::channel::<()>();
    let holder = {
        let live = live.clone();
        std::thread::spawn(move || {
            live.read(|_| {
                holding.send(()).unwrap();
                released.recv().unwrap();
            })
        })
    };
    held.recv().unwrap();
    for n in 0..1500 {
        store.append(vec![requested(n)]).await.unwrap();
    }
    release.send(()).unwrap();
    holder.join().unwrap();

    let head = *store.head().borrow();
    assert!(live.caught_up_to(head, std::time::Duration::from_secs(30)).await, "the follower never caught up");
    // A follower started now reads everything from the log: both must agree.
    let (fresh, follow) =
        meshgate::projector::start(Arc::clone(&store), readmodel("fresh.sqlite"), outbox, std::future::pending())
            .await
            .unwrap();
    tokio::spawn(follow);
    assert!(fresh.caught_up_to(head, std::time::Duration::from_secs(30)).await);
    let all = |p: &meshgate::projector::Projections| {
        let p = p.clone();
        async move { p.page_builds(None, None, u64::MAX, usize::MAX).await.unwrap() }
    };
    let (a, b) = (all(&live).await, all(&fresh).await);
    assert_eq!(a.len(), 1500);
    assert!(a == b, "the live projections differ from a fresh read of the log");
    assert_eq!(live.read(|p| p.queue.clone()), fresh.read(|p| p.queue.clone()));
}

#[tokio::test]
async fn a_request_may_name_one_stream_twice() {
    let dir = tempfile::tempdir().unwrap();
    one_request_names_a_stream_twice(open(dir.path(), 512)).await;
}

/// `projections rebuild --verify` compares every saved projection: a read model whose nodes
/// differ from the log's is reported, as one whose builds, queue or outbox differ.
#[test]
fn a_read_model_whose_nodes_differ_is_told_apart() {
    use meshgate::readmodel::{differences, ReadModel};
    use meshgate_domain::event::NodeSeen;
    use meshgate_domain::Recorded;
    let dir = tempfile::tempdir().unwrap();
    let seen = Recorded {
        position: 1,
        stream: "node-mac-1".into(),
        version: 0,
        event: Event::NodeSeen(NodeSeen {
            node_id: "mac-1".into(),
            labels: vec!["xcode-16".into()],
            slots: 2,
            xcodes: vec![],
        }),
        correlation_id: Uuid::now_v7(),
        recorded_at: chrono::Utc::now(),
    };
    let mut folded = meshgate_projections::ProjectionSet::default();
    folded.apply(&seen);
    let save = |name: &str, set: &meshgate_projections::ProjectionSet| {
        let model = ReadModel::open(&dir.path().join(name)).unwrap();
        model
            .save(&meshgate::readmodel::Snapshot {
                position: 1,
                ..meshgate::readmodel::Snapshot::of(set, &[], &Default::default(), &Default::default())
            })
            .unwrap();
        model
    };
    let (a, b) = (save("a.sqlite", &folded), save("b.sqlite", &folded));
    assert_eq!(differences(&a, &b).unwrap(), Vec::<String>::new());
    let unseen = meshgate_projections::ProjectionSet::default();
    let c = save("c.sqlite", &unseen);
    assert_eq!(differences(&a, &c).unwrap(), vec!["the nodes".to_owned()]);
}

/// The read model indexes finished builds only (by id, issue and number): a queued or running
/// build is answered from memory, yet the tools reading the file beside a running gateway find
/// it, and a load restores it.
#[tokio::test]
async fn the_read_model_finds_finished_builds_by_index_and_builds_in_flight_by_their_state() {
    use meshgate::readmodel::{saved_build_id, saved_names, ReadModel, Snapshot};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 512);
    let (finished, queued) = (Uuid::from_u128(1), Uuid::from_u128(2));
    store.append(vec![requested(1)]).await.unwrap();
    store.append(vec![requested(2)]).await.unwrap();
    let cancelled = Event::BuildCancelled(BuildCancelled {
        build_id: finished,
        reason: "superseded".into(),
        cancelled_at: chrono::Utc::now(),
        report: None,
    });
    store
        .append(vec![StreamAppend {
            stream: meshgate_domain::stream::build_stream(finished),
            expected: ExpectedVersion::Exact(0),
            events: vec![NewEvent::from_domain(&cancelled, finished, None, chrono::Utc::now())],
        }])
        .await
        .unwrap();
    let mut set = meshgate_projections::ProjectionSet::default();
    meshgate::projector::apply_batch(&mut set, &store.read_all(0, 100).await.unwrap()).unwrap();
    let (views, _) = set.builds.changed();
    let path = dir.path().join("readmodel.sqlite");
    let model = ReadModel::open(&path).unwrap();
    model.save(&Snapshot::of(&set, &views, &Default::default(), &Default::default())).unwrap();

    // The gateway's own reads: finished builds (memory holds the others).
    assert_eq!(model.build(finished).unwrap().unwrap().state.name(), "cancelled");
    assert_eq!(model.build_by_number("ios-build", 1).unwrap().unwrap().build_id, finished);
    let ids = |page: Vec<meshgate_projections::BuildView>| page.iter().map(|b| b.build_id).collect::<Vec<_>>();
    assert_eq!(ids(model.page((None, None), (0, u64::MAX), 10).unwrap()), [finished]);
    assert_eq!(ids(model.page((Some("MOB-1"), None), (0, u64::MAX), 10).unwrap()), [finished]);
    assert_eq!(ids(model.page((Some("MOB-1"), Some("cancelled")), (0, u64::MAX), 10).unwrap()), [finished]);
    assert_eq!(ids(model.page((Some("MOB-2"), None), (0, u64::MAX), 10).unwrap()), Vec::<Uuid>::new());

    // The tools beside a running gateway: both.
    let names = saved_names(&path, &[finished, queued, Uuid::from_u128(3)]).unwrap();
    assert_eq!((names[&finished].as_str(), names[&queued].as_str(), names.len()), ("ios-build #1", "ios-build #2", 2));
    assert_eq!(saved_build_id(&path, "ios-build", 1).unwrap(), Some(finished));
    assert_eq!(saved_build_id(&path, "ios-build", 2).unwrap(), Some(queued));
    assert_eq!(saved_build_id(&path, "ios-build", 3).unwrap(), None);

    // A load restores the build in flight, and its queue.
    let head = *store.head().borrow();
    let loaded = model.load(Default::default(), head).unwrap();
    assert_eq!(loaded.builds.get(queued).map(|b| b.state.name()), Some("queued"));
    assert_eq!(loaded.queue.queued().keys().copied().collect::<Vec<_>>(), [queued]);
    assert_eq!(loaded.position, head);
}
