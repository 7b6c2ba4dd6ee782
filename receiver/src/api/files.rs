//! Mapping files, streamed: `GET /v1/mappings/{path}/files/{file}` reads the file from the
//! store in pieces on a blocking thread and sends them through a bounded channel, so neither a
//! large file nor a slow client makes the receiver hold the file in memory.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use flowpack_shared::names::{ContainerPath, Name, RelPath};
use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderValue};

use crate::App;
use crate::problem::{Problem, ProblemCode};
use crate::service::auth::Principal;
use crate::store::MappingFile;

use super::extract::{object_path, percent_decode};
use super::{Body, json_response};
use crate::service::catalog::{self, FileAnswer, FileCandidate};

/// Size of the pieces a mapping file is streamed in.
const CHUNK: usize = 64 * 1024;
/// Pieces buffered between the reading thread and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;

/// `GET /v1/mappings/{path}/files/{file}`: the file is read from the store in pieces of
/// [`CHUNK`] bytes on a blocking thread and sent through a bounded channel, so neither a large
/// file nor a slow client makes the receiver hold the file in memory.
pub(crate) async fn stream_mapping_file(
    app: &Arc<App>,
    who: Principal,
    tail: String,
) -> Result<Response<Body>, Problem> {
    let (answer, answered) = tokio::sync::oneshot::channel::<Result<Response<Body>, Problem>>();
    let worker = app.clone();
    app.spawn_blocking(move || {
        let app = worker;
        let db = match app.store.db() {
            Ok(db) => db,
            Err(e) => {
                let _ = answer.send(Err(e.into()));
                return;
            }
        };
        let (candidates, whole) = file_candidates(&tail);
        let mut file = match catalog::mapping_file(&db, &who, candidates, whole) {
            Ok(FileAnswer::File(f)) => f,
            Ok(FileAnswer::Mapping(v)) => {
                let _ = answer.send(Ok(json_response(hyper::StatusCode::OK, &v)));
                return;
            }
            Err(e) => {
                let _ = answer.send(Err(e));
                return;
            }
        };
        let (pieces, body) = ChannelBody::new(file.len());
        let mut r = Response::new(body.boxed());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(file.len()));
        if answer.send(Ok(r)).is_ok() {
            pump(&mut file, &pieces);
        }
    });
    // The sender is dropped unanswered only if the thread panicked.
    answered
        .await
        .map_err(|_| Problem::internal("the mapping file reader stopped"))?
}

/// Sends `file` down `pieces`; stops at the end, at a read error (sent on, so the connection is
/// aborted) or when the client has gone away (the body, and with it the receiver, dropped).
pub(crate) fn pump(
    file: &mut MappingFile<'_>,
    pieces: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    loop {
        let mut buf = vec![0u8; CHUNK];
        let piece = match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                Ok(Bytes::from(buf))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading a mapping file from the store failed");
                Err(e)
            }
        };
        let failed = piece.is_err();
        if pieces.blocking_send(piece).is_err() || failed {
            return;
        }
    }
}

/// A response body fed by a blocking thread through a bounded channel.
#[derive(Debug)]
pub(crate) struct ChannelBody {
    pieces: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    remaining: u64,
}

impl ChannelBody {
    /// A body of exactly `len` bytes and the sender that feeds it.
    fn new(
        len: u64,
    ) -> (
        tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
        ChannelBody,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
        (
            tx,
            ChannelBody {
                pieces: rx,
                remaining: len,
            },
        )
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let next = std::task::ready!(self.pieces.poll_recv(cx));
        if let Some(Ok(piece)) = &next {
            self.remaining = self.remaining.saturating_sub(piece.len() as u64);
        }
        Poll::Ready(next.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The ways a `…/files/…` path splits into a mapping and a file: at each `/files/` whose left
/// side is an object path, in order, and the whole path as a mapping in a container named
/// `files`. Which one names a live mapping is the catalog's to find.
fn file_candidates(tail: &str) -> (Vec<FileCandidate>, Option<(ContainerPath, Name)>) {
    let mut candidates = Vec::new();
    for (i, _) in tail.match_indices("/files/") {
        let (left, file) = (&tail[..i], &tail[i + "/files/".len()..]);
        let Ok((container, name)) = object_path(left) else {
            continue;
        };
        candidates.push(FileCandidate {
            container,
            name,
            file: file_path(file),
        });
    }
    (candidates, object_path(tail).ok())
}

/// A mapping file's path from the URL: each segment percent-decoded, none holding a `/`.
fn file_path(file: &str) -> Result<RelPath, Problem> {
    let decoded = file
        .split('/')
        .map(|seg| percent_decode(seg).filter(|s| !s.contains('/')))
        .collect::<Option<Vec<_>>>()
        .map(|segs| segs.join("/"))
        .ok_or_else(|| Problem::bad_request(ProblemCode::BadPath, "invalid percent-encoding"))?;
    RelPath::parse(&decoded).map_err(|e| Problem::bad_request(ProblemCode::BadPath, e.0))
}
