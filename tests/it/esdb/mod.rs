//! A stand-in for EventStoreDB: its gRPC Streams service over TLS, generated from the `.proto` files
//! the `eventstore` crate ships (`scripts/esdb-codegen.sh`), implementing exactly what meshgate
//! calls: appends with an expected revision and event ids (the server's idempotent retries and its
//! `WrongExpectedVersion` answers included), reads of a stream forwards and backwards, and
//! subscriptions to a stream (catch-up, then live). Other calls (`$all`, deletes, batch appends,
//! server features) answer `UNIMPLEMENTED`, as a server without them would.
//!
//! It behaves as KurrentDB's server does where that decides what a client sees: an append larger
//! than `MaxAppendSize` (1 MiB by default; data, custom metadata and twice the type's length of
//! each event) is refused whole with the server's `maximum-append-size-exceeded`; a read of a
//! missing stream answers `stream_not_found`, then ends the call a moment later with its trailers,
//! and a client that resets the call before then is counted ([`StandIn::cancelled_reads`]). Faults
//! can be asked for: an answer lost after the append was written (with any status), every append
//! refused as out of date, and the server gone (every call unavailable).
//!
//! With `MESHGATE_ESDB_URL` set, [`server`] answers that real server instead (docs/operations.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};
use tokio_rustls::TlsAcceptor;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::pki::pki;

#[allow(clippy::all, clippy::pedantic, dead_code, unused_qualifications, rustdoc::all)]
mod proto {
    pub mod event_store {
        pub mod client {
            include!("generated/event_store.client.rs");
            pub mod streams {
                include!("generated/event_store.client.streams.rs");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            include!("generated/google.rpc.rs");
        }
    }
}

use proto::event_store::client::streams::{
    append_req, append_resp, read_req, read_resp, streams_server, AppendReq, AppendResp, BatchAppendReq,
    BatchAppendResp, DeleteReq, DeleteResp, ReadReq, ReadResp, TombstoneReq, TombstoneResp,
};
use proto::event_store::client::{StreamIdentifier, Uuid as ProtoUuid};

/// An event as the stand-in keeps it.
#[derive(Debug, Clone)]
struct Recorded {
    id: ProtoUuid,
    stream: Vec<u8>,
    revision: u64,
    metadata: HashMap<String, String>,
    custom_metadata: Vec<u8>,
    data: Vec<u8>,
    position: u64,
}

#[derive(Default)]
struct Log {
    streams: HashMap<Vec<u8>, Vec<Arc<Recorded>>>,
    /// The next event's position in `$all` (a byte offset in the real server: increasing, with gaps).
    next_position: u64,
}

/// The Streams service.
pub struct StandIn {
    log: Mutex<Log>,
    appended: broadcast::Sender<Arc<Recorded>>,
    /// Appends still to be written and then answered with `lost_with`, as if the answer were lost.
    lose_answers: AtomicUsize,
    lost_with: Mutex<tonic::Code>,
    /// Faults of appends hit only streams whose name ends with this (none: every stream).
    fault_streams: Mutex<Option<String>>,
    /// The server's `MaxAppendSize`.
    max_append_size: AtomicUsize,
    /// Appends refused for their size.
    too_large: AtomicUsize,
    /// Reads the client reset before the server ended them.
    cancelled_reads: Arc<AtomicUsize>,
    /// Every append is refused as out of date.
    refuse_appends: std::sync::atomic::AtomicBool,
    /// The server is gone: every call answers `UNAVAILABLE`.
    down: std::sync::atomic::AtomicBool,
    /// The server goes away right after writing the next append.
    down_after_write: std::sync::atomic::AtomicBool,
}

/// KurrentDB's default `MaxAppendSize`.
pub const MAX_APPEND_SIZE: usize = 1024 * 1024;
/// How long the server takes to end a read after `stream_not_found`.
const TRAILERS_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

/// A running stand-in (or the real server of `MESHGATE_ESDB_URL`).
pub struct Server {
    /// `esdb://…?tls=true&tlsCAFile=…`
    pub url: String,
    /// `None` for a real server.
    pub stand_in: Option<Arc<StandIn>>,
}

impl StandIn {
    /// The next `n` appends are written, but their answers are lost (`UNAVAILABLE`).
    pub fn lose_answers(&self, n: usize) {
        self.lose_answers_with(n, tonic::Code::Unavailable);
    }

    /// The next `n` appends are written, then answered with `code` (`RESOURCE_EXHAUSTED`, a
    /// reset seen as `CANCELLED`), as a connection dropped with the append in flight.
    pub fn lose_answers_with(&self, n: usize, code: tonic::Code) {
        *self.lost_with.lock().unwrap() = code;
        self.lose_answers.store(n, Ordering::SeqCst);
    }

    /// From now on, the faults asked for hit only appends to streams whose name ends with
    /// `suffix` (`"log"`: meshgate's log, not its lease or copies).
    pub fn faults_only_on(&self, suffix: &str) {
        *self.fault_streams.lock().unwrap() = Some(suffix.to_owned());
    }

    pub fn set_max_append_size(&self, bytes: usize) {
        self.max_append_size.store(bytes, Ordering::SeqCst);
    }

    /// Appends refused as larger than `MaxAppendSize`.
    pub fn too_large(&self) -> usize {
        self.too_large.load(Ordering::SeqCst)
    }

    /// Reads of missing streams the client reset before the server ended them.
    pub fn cancelled_reads(&self) -> usize {
        self.cancelled_reads.load(Ordering::SeqCst)
    }

    pub fn refuse_appends(&self, refuse: bool) {
        self.refuse_appends.store(refuse, Ordering::SeqCst);
    }

    /// The server is gone (`true`) or back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The server goes away right after writing the next append, before answering it.
    pub fn go_down_after_next_write(&self) {
        self.down_after_write.store(true, Ordering::SeqCst);
    }

    /// Every event of `stream` as `(id, type)`.
    pub fn events_of(&self, stream: &str) -> Vec<(uuid::Uuid, String)> {
        let log = self.log.lock().unwrap();
        log.streams
            .get(stream.as_bytes())
            .map(|events| {
                events.iter().map(|e| (uuid_of(&e.id), e.metadata.get("type").cloned().unwrap_or_default())).collect()
            })
            .unwrap_or_default()
    }

    #[allow(clippy::result_large_err)]
    fn check_up(&self) -> Result<(), Status> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the server is gone (stand-in)"));
        }
        Ok(())
    }
}

fn uuid_of(id: &ProtoUuid) -> uuid::Uuid {
    use proto::event_store::client::uuid::Value;
    match &id.value {
        Some(Value::String(s)) => s.parse().unwrap_or_default(),
        Some(Value::Structured(s)) => {
            let (most, least) = (s.most_significant_bits as u64, s.least_significant_bits as u64);
            uuid::Uuid::from_u64_pair(most, least)
        }
        None => uuid::Uuid::nil(),
    }
}

/// A fresh stand-in on a free loopback port, serving TLS with a certificate of the tests' CA; or,
/// with `MESHGATE_ESDB_URL` set, that server.
pub async fn server() -> Server {
    if let Ok(url) = std::env::var("MESHGATE_ESDB_URL") {
        return Server { url, stand_in: None };
    }
    let (chain, key) = pki().leaf(2113);
    // Read once into the server's configuration; the folder goes at the end of this function.
    let dir = tempfile::tempdir().unwrap();
    let files =
        meshgate::tls::TlsFiles { cert_file: dir.path().join("esdb.crt"), key_file: dir.path().join("esdb.key") };
    crate::pki::write_private(&files.cert_file, &chain);
    crate::pki::write_private(&files.key_file, &key);
    let mut config = (*meshgate::tls::server_config(&files).unwrap()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stand_in = Arc::new(StandIn {
        log: Mutex::new(Log { next_position: 1000, ..Log::default() }),
        appended: broadcast::channel(4096).0,
        lose_answers: AtomicUsize::new(0),
        lost_with: Mutex::new(tonic::Code::Unavailable),
        fault_streams: Mutex::new(None),
        max_append_size: AtomicUsize::new(MAX_APPEND_SIZE),
        too_large: AtomicUsize::new(0),
        cancelled_reads: Arc::new(AtomicUsize::new(0)),
        refuse_appends: Default::default(),
        down: Default::default(),
        down_after_write: Default::default(),
    });
    let service = streams_server::StreamsServer::from_arc(Arc::clone(&stand_in));
    // On a runtime of its own: a test blocking its thread (waiting for a `meshgate` command) must
    // not stop the server it talks to.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(serve(listener, acceptor, service));
    });
    let url = format!("esdb://127.0.0.1:{port}?tls=true&tlsCAFile={}", pki().ca_file.display());
    Server { url, stand_in: Some(stand_in) }
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    service: streams_server::StreamsServer<StandIn>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let incoming = futures_util::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
        loop {
            let (tcp, _) = listener.accept().await.ok()?;
            // As the real server (Kestrel) does: small frames go out at once.
            let _ = tcp.set_nodelay(true);
            if let Ok(tls) = acceptor.accept(tcp).await {
                return Some((Ok::<_, std::io::Error>(tls), (listener, acceptor)));
            }
        }
    });
    let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
}

// tonic's own handlers answer `Status` errors; boxing it here would only be unboxed again.
#[allow(clippy::result_large_err)]
fn name(stream: &Option<StreamIdentifier>) -> Result<Vec<u8>, Status> {
    stream.as_ref().map(|s| s.stream_name.clone()).ok_or_else(|| Status::invalid_argument("no stream identifier"))
}

fn read_event(e: &Recorded) -> ReadResp {
    use read_resp::read_event::{Position, RecordedEvent};
    ReadResp {
        content: Some(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(RecordedEvent {
                id: Some(e.id.clone()),
                stream_identifier: Some(StreamIdentifier { stream_name: e.stream.clone() }),
                stream_revision: e.revision,
                prepare_position: e.position,
                commit_position: e.position,
                metadata: e.metadata.clone(),
                custom_metadata: e.custom_metadata.clone(),
                data: e.data.clone(),
            }),
            link: None,
            position: Some(Position::CommitPosition(e.position)),
        })),
    }
}

/// What the server answers when the stream is not where the append expected it.
fn wrong_expected_version(current: Option<u64>, expected: &append_req::options::ExpectedStreamRevision) -> AppendResp {
    use append_req::options::ExpectedStreamRevision as X;
    use append_resp::wrong_expected_version::{
        CurrentRevisionOption, CurrentRevisionOption2060, ExpectedRevisionOption, ExpectedRevisionOption2060,
    };
    let (current_option, current_2060) = match current {
        Some(r) => (CurrentRevisionOption::CurrentRevision(r), CurrentRevisionOption2060::CurrentRevision2060(r)),
        None => (CurrentRevisionOption::CurrentNoStream(()), CurrentRevisionOption2060::NoStream2060(())),
    };
    let (expected_option, expected_2060) = match expected {
        X::Revision(r) => {
            (ExpectedRevisionOption::ExpectedRevision(*r), ExpectedRevisionOption2060::ExpectedRevision2060(*r))
        }
        X::NoStream(()) => (ExpectedRevisionOption::ExpectedNoStream(()), ExpectedRevisionOption2060::Any2060(())),
        X::Any(()) => (ExpectedRevisionOption::ExpectedAny(()), ExpectedRevisionOption2060::Any2060(())),
        X::StreamExists(()) => {
            (ExpectedRevisionOption::ExpectedStreamExists(()), ExpectedRevisionOption2060::StreamExists2060(()))
        }
    };
    AppendResp {
        result: Some(append_resp::Result::WrongExpectedVersion(append_resp::WrongExpectedVersion {
            current_revision_option_20_6_0: Some(current_2060),
            expected_revision_option_20_6_0: Some(expected_2060),
            current_revision_option: Some(current_option),
            expected_revision_option: Some(expected_option),
        })),
    }
}

fn success(last: &Recorded) -> AppendResp {
    use append_resp::success::{CurrentRevisionOption, PositionOption};
    AppendResp {
        result: Some(append_resp::Result::Success(append_resp::Success {
            current_revision_option: Some(CurrentRevisionOption::CurrentRevision(last.revision)),
            position_option: Some(PositionOption::Position(append_resp::Position {
                commit_position: last.position,
                prepare_position: last.position,
            })),
        })),
    }
}

#[tonic::async_trait]
impl streams_server::Streams for StandIn {
    type ReadStream = ReceiverStream<Result<ReadResp, Status>>;
    type BatchAppendStream = ReceiverStream<Result<BatchAppendResp, Status>>;

    async fn append(&self, request: Request<Streaming<AppendReq>>) -> Result<Response<AppendResp>, Status> {
        use append_req::options::ExpectedStreamRevision as X;
        self.check_up()?;
        let mut messages = request.into_inner();
        let Some(AppendReq { content: Some(append_req::Content::Options(options)) }) = messages.message().await? else {
            return Err(Status::invalid_argument("an append starts with its options"));
        };
        let stream = name(&options.stream_identifier)?;
        let expected =
            options.expected_stream_revision.ok_or_else(|| Status::invalid_argument("no expected revision"))?;
        let mut proposed = Vec::new();
        // As the server counts an append's size: data, custom metadata, twice the type's length.
        let mut size = 0usize;
        let max = self.max_append_size.load(Ordering::SeqCst);
        while let Some(message) = messages.message().await? {
            match message.content {
                Some(append_req::Content::ProposedMessage(p)) => {
                    let kind = p.metadata.get("type").map_or(0, String::len);
                    size += p.data.len() + p.custom_metadata.len() + 2 * kind;
                    if size > max {
                        self.too_large.fetch_add(1, Ordering::SeqCst);
                        let mut status = Status::invalid_argument(format!("Maximum Append Size of {max} Exceeded."));
                        let meta = status.metadata_mut();
                        meta.insert("exception", "maximum-append-size-exceeded".parse().unwrap());
                        meta.insert("maximum-append-size", max.to_string().parse().unwrap());
                        return Err(status);
                    }
                    proposed.push(p);
                }
                _ => return Err(Status::invalid_argument("only proposed messages follow the options")),
            }
        }
        if proposed.iter().any(|p| p.id.is_none() || !p.metadata.contains_key("type")) {
            return Err(Status::invalid_argument("every event needs an id and a type"));
        }

        let mut log = self.log.lock().unwrap();
        let existing = log.streams.get(&stream).map(Vec::as_slice).unwrap_or_default();
        let current = existing.len().checked_sub(1).map(|r| r as u64);
        // An append of events already there, at the place they were expected, is a retry: it
        // succeeds without writing them again.
        let from = match expected {
            X::Revision(r) => Some(r as usize + 1),
            X::NoStream(()) => Some(0),
            X::Any(()) => existing.iter().position(|e| Some(&e.id) == proposed.first().and_then(|p| p.id.as_ref())),
            X::StreamExists(()) => None,
        };
        if let Some(from) = from.filter(|_| !proposed.is_empty()) {
            let there = existing.get(from..from + proposed.len());
            if there.is_some_and(|t| t.iter().zip(&proposed).all(|(e, p)| Some(&e.id) == p.id.as_ref())) {
                return Ok(Response::new(success(&existing[from + proposed.len() - 1])));
            }
        }
        let fits = match expected {
            X::Revision(r) => current == Some(r),
            X::NoStream(()) => current.is_none(),
            X::Any(()) => true,
            X::StreamExists(()) => current.is_some(),
        } && !self.refuse_appends.load(Ordering::SeqCst);
        if !fits {
            return Ok(Response::new(wrong_expected_version(current, &expected)));
        }
        if proposed.is_empty() {
            return Err(Status::invalid_argument("an append of no events"));
        }
        let mut written = Vec::new();
        for (revision, p) in (current.map_or(0, |c| c + 1)..).zip(proposed) {
            let position = log.next_position;
            log.next_position += 128;
            let mut metadata = p.metadata;
            metadata.insert("created".into(), "0".into());
            written.push(Arc::new(Recorded {
                id: p.id.unwrap(),
                stream: stream.clone(),
                revision,
                metadata,
                custom_metadata: p.custom_metadata,
                data: p.data,
                position,
            }));
        }
        let answer_stream = stream.clone();
        log.streams.entry(stream).or_default().extend(written.iter().cloned());
        let answer = success(written.last().unwrap());
        for e in written {
            let _ = self.appended.send(e);
        }
        drop(log);
        let targeted =
            self.fault_streams.lock().unwrap().as_ref().is_none_or(|suffix| answer_stream.ends_with(suffix.as_bytes()));
        if !targeted {
            return Ok(Response::new(answer));
        }
        if self.down_after_write.swap(false, Ordering::SeqCst) {
            self.set_down(true);
            return Err(Status::unavailable("the server went away (stand-in)"));
        }
        let lost = self.lose_answers.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if lost {
            let code = *self.lost_with.lock().unwrap();
            return Err(Status::new(code, "the answer was lost on its way (stand-in)"));
        }
        Ok(Response::new(answer))
    }

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        use read_req::options::stream_options::RevisionOption;
        use read_req::options::{CountOption, StreamOption};
        self.check_up()?;
        let options = request.into_inner().options.ok_or_else(|| Status::invalid_argument("no options"))?;
        let Some(StreamOption::Stream(stream_options)) = options.stream_option else {
            return Err(Status::unimplemented("the stand-in reads single streams only"));
        };
        let stream = name(&stream_options.stream_identifier)?;
        let backwards = options.read_direction == 1;
        let (sender, receiver) = mpsc::channel(256);
        // Subscribed before the snapshot is taken, so nothing falls between the two.
        let mut live = self.appended.subscribe();
        let events = self.log.lock().unwrap().streams.get(&stream).cloned();
        match options.count_option {
            Some(CountOption::Count(count)) => {
                let Some(events) = events else {
                    let not_found =
                        read_resp::StreamNotFound { stream_identifier: Some(StreamIdentifier { stream_name: stream }) };
                    let _ =
                        sender.try_send(Ok(ReadResp { content: Some(read_resp::Content::StreamNotFound(not_found)) }));
                    // The server ends the call with its trailers a moment later; a client that
                    // resets it first (drops the answer) is counted.
                    let cancelled = Arc::clone(&self.cancelled_reads);
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = sender.closed() => {
                                cancelled.fetch_add(1, Ordering::SeqCst);
                            }
                            _ = tokio::time::sleep(TRAILERS_AFTER) => {}
                        }
                    });
                    return Ok(Response::new(ReceiverStream::new(receiver)));
                };
                let count = count.min(usize::MAX as u64) as usize;
                let picked: Vec<Arc<Recorded>> = if backwards {
                    let end = match stream_options.revision_option {
                        Some(RevisionOption::Revision(r)) => (r as usize + 1).min(events.len()),
                        Some(RevisionOption::Start(())) => 1.min(events.len()),
                        _ => events.len(),
                    };
                    events[..end].iter().rev().take(count).cloned().collect()
                } else {
                    let start = match stream_options.revision_option {
                        Some(RevisionOption::Revision(r)) => (r as usize).min(events.len()),
                        Some(RevisionOption::End(())) => events.len(),
                        _ => 0,
                    };
                    events[start..].iter().take(count).cloned().collect()
                };
                tokio::spawn(async move {
                    for e in picked {
                        if sender.send(Ok(read_event(&e))).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Some(CountOption::Subscription(_)) => {
                let events = events.unwrap_or_default();
                let from = match stream_options.revision_option {
                    Some(RevisionOption::Revision(r)) => r as usize + 1,
                    Some(RevisionOption::End(())) => events.len(),
                    _ => 0,
                };
                tokio::spawn(async move {
                    let confirmation =
                        read_resp::SubscriptionConfirmation { subscription_id: uuid::Uuid::new_v4().to_string() };
                    let mut next = from as u64;
                    let send = |content| sender.send(Ok(ReadResp { content: Some(content) }));
                    if send(read_resp::Content::Confirmation(confirmation)).await.is_err() {
                        return;
                    }
                    for e in events.iter().skip(from) {
                        if sender.send(Ok(read_event(e))).await.is_err() {
                            return;
                        }
                        next = e.revision + 1;
                    }
                    if send(read_resp::Content::CaughtUp(read_resp::CaughtUp {})).await.is_err() {
                        return;
                    }
                    loop {
                        match live.recv().await {
                            Ok(e) if e.stream == stream && e.revision >= next => {
                                next = e.revision + 1;
                                if sender.send(Ok(read_event(&e))).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            // A subscriber that cannot keep up is dropped, as the server does.
                            Err(_) => return,
                        }
                    }
                });
            }
            None => return Err(Status::invalid_argument("a read says how many events or that it subscribes")),
        }
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn delete(&self, _: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        Err(Status::unimplemented("meshgate never deletes"))
    }

    async fn tombstone(&self, _: Request<TombstoneReq>) -> Result<Response<TombstoneResp>, Status> {
        Err(Status::unimplemented("meshgate never deletes"))
    }

    async fn batch_append(
        &self,
        _: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        Err(Status::unimplemented("meshgate appends with Append"))
    }
}
