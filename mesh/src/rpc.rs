//! Requests between nodes over one long-lived stream per peer and direction (protocol
//! `/taskmesh/rpc/2`). Many requests share the stream at once, and the answers come back in
//! whatever order they are ready.
//!
//! - **Frames.** `[length: u32][id: u64][JSON]`, big-endian, where the length counts the id and
//!   the JSON. A request and its answer carry the same id. A frame is at most
//!   [`MAX_MESSAGE`] bytes of JSON. A longer one, or a stream that ends inside a frame, closes
//!   the stream: its framing cannot be trusted after that. Requests still waiting on it fail at
//!   once, and the next request to that peer opens a new stream.
//! - **Writes** are gathered: a writer sends everything queued in one write and one flush, so a
//!   burst of requests or answers costs one encrypted frame.
//! - **Why not a substream per request** (libp2p's request-response, which the mesh used before):
//!   each request then opened and closed a yamux substream, negotiated its protocol, and got a
//!   handler and a timer of its own. Under load that was about 15 % of the machine (see
//!   docs/performance.md).
//!
//! A large answer (a run's log piece, a Raft snapshot) holds up the frames behind it on the
//! same stream while it is written, a few milliseconds on a LAN.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Announcement, Command, Inbound, MeshError, Request, Response, Traffic};

pub(super) const PROTOCOL: StreamProtocol = StreamProtocol::new("/taskmesh/rpc/2");
/// The largest request or answer, in bytes of JSON.
pub(super) const MAX_MESSAGE: usize = 16 << 20;
/// Opening a stream (and dialling the peer, if need be) may take this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A request without an answer after this long fails (callers may give up sooner).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The length and the id in front of each frame's JSON.
const HEADER: usize = 12;

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response, MeshError>>>>>;

/// The sending side: one [`Channel`] per peer, opened on the first request to it.
#[derive(Clone)]
pub(super) struct Rpc {
    inner: Arc<Inner>,
}

struct Inner {
    control: libp2p_stream::Control,
    channels: Mutex<HashMap<PeerId, Channel>>,
    next_id: AtomicU64,
    traffic: Arc<Traffic>,
    cancel: CancellationToken,
}

/// The stream to one peer: frames queued for its writer, and the requests waiting for answers.
#[derive(Clone)]
struct Channel {
    serial: u64,
    queue: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Waiting,
}

impl Rpc {
    /// Stops its streams when `cancel` fires (they also end with the mesh's connections).
    pub(super) fn new(
        control: libp2p_stream::Control,
        traffic: Arc<Traffic>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                control,
                channels: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                traffic,
                cancel,
            }),
        }
    }

    /// Sends `request` to `peer` and waits for its answer.
    pub(super) async fn request(
        &self,
        peer: PeerId,
        request: &Request,
    ) -> Result<Response, MeshError> {
        let failed = |message: String| MeshError::Request { peer, message };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(id, request).map_err(|e| failed(format!("encoding: {e}")))?;
        let channel = self.channel(peer);
        let (reply, answer) = oneshot::channel();
        channel.waiting.lock().expect("rpc lock").insert(id, reply);
        // Forgets the request however this ends, also when the caller gives up first.
        let _forget = Forget {
            waiting: &channel.waiting,
            id,
        };
        // A channel that has closed meanwhile refuses the frame; one that closes after taking
        // it fails every waiting request (it closes its queue first, then fails them).
        if channel.queue.send(frame).is_err() {
            return Err(failed("the stream to the peer has closed".into()));
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(failed("the stream to the peer has closed".into())),
            Err(_) => Err(failed(format!("no answer within {REQUEST_TIMEOUT:?}"))),
        }
    }

    /// The channel to `peer`, opened now if there is none.
    fn channel(&self, peer: PeerId) -> Channel {
        let mut channels = self.inner.channels.lock().expect("rpc lock");
        if let Some(channel) = channels.get(&peer) {
            return channel.clone();
        }
        let (queue, frames) = mpsc::unbounded_channel();
        let channel = Channel {
            serial: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            queue,
            waiting: Arc::default(),
        };
        channels.insert(peer, channel.clone());
        tokio::spawn(run_channel(
            Arc::downgrade(&self.inner),
            self.inner.control.clone(),
            peer,
            channel.clone(),
            frames,
            self.inner.traffic.clone(),
            self.inner.cancel.clone(),
        ));
        channel
    }
}

struct Forget<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting.lock().expect("rpc lock").remove(&self.id);
    }
}

/// Opens the stream to `peer`, writes the queued requests and hands out the answers until the
/// stream or the mesh ends; then fails whatever still waits.
async fn run_channel(
    owner: Weak<Inner>,
    mut control: libp2p_stream::Control,
    peer: PeerId,
    channel: Channel,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    traffic: Arc<Traffic>,
    cancel: CancellationToken,
) {
    let outcome = async {
        let stream = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, PROTOCOL))
            .await
            .map_err(|_| format!("no stream within {OPEN_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let (read, write) = stream.split();
        tokio::select! {
            r = write_frames(write, &mut frames, &traffic) => r,
            r = read_answers(peer, read, &channel.waiting, &traffic) => r,
        }
    };
    let why = tokio::select! {
        r = outcome => match r {
            Ok(()) => "the stream to the peer has closed".to_string(),
            Err(e) => e,
        },
        _ = cancel.cancelled() => "the mesh has stopped".to_string(),
    };
    debug!(%peer, reason = %why, "rpc stream ended");
    frames.close();
    if let Some(owner) = owner.upgrade() {
        let mut channels = owner.channels.lock().expect("rpc lock");
        if channels
            .get(&peer)
            .is_some_and(|c| c.serial == channel.serial)
        {
            channels.remove(&peer);
        }
    }
    let waiting: Vec<_> = channel.waiting.lock().expect("rpc lock").drain().collect();
    for (_, reply) in waiting {
        let _ = reply.send(Err(MeshError::Request {
            peer,
            message: why.clone(),
        }));
    }
}

/// Writes queued frames, each burst in one write and one flush, until the queue closes.
async fn write_frames(
    mut write: WriteHalf<Stream>,
    frames: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    traffic: &Traffic,
) -> Result<(), String> {
    let mut buf = Vec::new();
    while let Some(first) = frames.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while let Ok(more) = frames.try_recv() {
            buf.extend_from_slice(&more);
        }
        write.write_all(&buf).await.map_err(|e| e.to_string())?;
        write.flush().await.map_err(|e| e.to_string())?;
        traffic.rpc_sent(buf.len());
    }
    let _ = write.close().await;
    Ok(())
}

/// Hands each answer to the request with its id. An answer that does not decode fails its
/// request; the stream goes on.
async fn read_answers(
    peer: PeerId,
    read: ReadHalf<Stream>,
    waiting: &Waiting,
    traffic: &Traffic,
) -> Result<(), String> {
    let mut read = BufReader::with_capacity(64 << 10, read);
    while let Some((id, body)) = read_frame(&mut read).await? {
        traffic.rpc_received(HEADER + body.len());
        let answer = decode_response(&body).map_err(|e| MeshError::Request {
            peer,
            message: format!("unreadable answer: {e}"),
        });
        if let Some(reply) = waiting.lock().expect("rpc lock").remove(&id) {
            let _ = reply.send(answer);
        }
    }
    Ok(())
}

/// The receiving side: answers every stream peers open to this node, until `cancel`.
pub(super) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    own: watch::Receiver<Option<Announcement>>,
    actor: mpsc::Sender<Command>,
    inbound: Option<mpsc::Sender<Inbound>>,
    traffic: Arc<Traffic>,
    cancel: CancellationToken,
) {
    loop {
        let (peer, stream) = tokio::select! {
            _ = cancel.cancelled() => return,
            next = incoming.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let (own, inbound, cancel) = (own.clone(), inbound.clone(), cancel.clone());
        let (actor, traffic) = (actor.clone(), traffic.clone());
        tokio::spawn(async move {
            let (read, write) = stream.split();
            let (answers, mut queued) = mpsc::unbounded_channel();
            let why = tokio::select! {
                r = read_requests(peer, read, answers, own, &actor, inbound, &traffic) => r.err(),
                r = write_frames(write, &mut queued, &traffic) => r.err(),
                _ = cancel.cancelled() => None,
            };
            debug!(%peer, reason = ?why, "rpc stream from the peer ended");
        });
    }
}

/// Reads a peer's requests and passes each on with a [`Reply`] that writes its answer back.
async fn read_requests(
    peer: PeerId,
    read: ReadHalf<Stream>,
    answers: mpsc::UnboundedSender<Vec<u8>>,
    own: watch::Receiver<Option<Announcement>>,
    actor: &mpsc::Sender<Command>,
    inbound: Option<mpsc::Sender<Inbound>>,
    traffic: &Traffic,
) -> Result<(), String> {
    let mut read = BufReader::with_capacity(64 << 10, read);
    while let Some((id, body)) = read_frame(&mut read).await? {
        traffic.rpc_received(HEADER + body.len());
        let reply = Reply {
            id,
            answers: Some(answers.clone()),
        };
        let request = match decode_request(&body) {
            Ok(request) => request,
            Err(e) => {
                let _ = reply.send(Response::Error(format!("unreadable request: {e}")));
                continue;
            }
        };
        match (request, &inbound) {
            // The mesh answers this one itself.
            (Request::Announcement, _) => {
                let own = own.borrow().clone().map(Box::new);
                let _ = reply.send(Response::Announcement(own));
            }
            // The mesh's actor answers these (a reply dropped on its way answers with an error).
            (Request::Beat(beat), _) => {
                let _ = actor.send(Command::Beat(peer, beat, reply)).await;
            }
            (Request::Live, _) => {
                let _ = actor.send(Command::Live(reply)).await;
            }
            (Request::AddrsOf(peer), _) => {
                let _ = actor.send(Command::AddrsOf(peer, reply)).await;
            }
            (_, None) => {
                let _ = reply.send(Response::Error("this node handles no such request".into()));
            }
            (request, Some(node)) => {
                let request = Inbound {
                    from: peer,
                    request,
                    reply,
                };
                // Waiting here holds up this peer's next requests: back-pressure, not loss.
                if let Err(mpsc::error::SendError(request)) = node.send(request).await {
                    let _ = request
                        .reply
                        .send(Response::Error("the node is shutting down".into()));
                }
            }
        }
    }
    Ok(())
}

/// How the node answers a peer's request. Dropping it unanswered answers with an error, so the
/// peer does not wait for its timeout.
#[derive(Debug)]
pub struct Reply {
    id: u64,
    answers: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl Reply {
    /// Sends the answer; gives it back when the stream has closed.
    pub fn send(mut self, response: Response) -> Result<(), Response> {
        let answers = self.answers.take().expect("a reply is sent once");
        let frame = encode(self.id, &response).or_else(|e| {
            encode(
                self.id,
                &Response::Error(format!("encoding the answer: {e}")),
            )
        });
        match frame {
            Ok(frame) => answers.send(frame).map_err(|_| response),
            Err(_) => Err(response),
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(answers) = self.answers.take() {
            let answer = Response::Error("the request was dropped".into());
            if let Ok(frame) = encode(self.id, &answer) {
                let _ = answers.send(frame);
            }
        }
    }
}

fn encode(id: u64, message: &impl Serialize) -> Result<Vec<u8>, String> {
    let mut frame = vec![0; HEADER];
    serde_json::to_writer(&mut frame, message).map_err(|e| e.to_string())?;
    let json = frame.len() - HEADER;
    if json > MAX_MESSAGE {
        return Err(format!(
            "a message of {json} bytes is longer than the {MAX_MESSAGE} allowed"
        ));
    }
    frame[..4].copy_from_slice(&((json + 8) as u32).to_be_bytes());
    frame[4..HEADER].copy_from_slice(&id.to_be_bytes());
    Ok(frame)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Reads a frame's JSON as a peer's request, as the node answering it does.
pub fn decode_request(body: &[u8]) -> Result<Request, String> {
    decode(body)
}

/// Reads a frame's JSON as a peer's answer, as the node that asked does.
pub fn decode_response(body: &[u8]) -> Result<Response, String> {
    decode(body)
}

/// The next frame's id and JSON; `None` when the stream ends between frames.
pub async fn read_frame<R: futures::io::AsyncRead + Unpin>(
    read: &mut R,
) -> Result<Option<(u64, Vec<u8>)>, String> {
    let mut length = [0u8; 4];
    match read.read_exact(&mut length).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if !(8..=MAX_MESSAGE + 8).contains(&length) {
        return Err(format!(
            "a frame of {length} bytes (a frame holds 8 to {} bytes)",
            MAX_MESSAGE + 8
        ));
    }
    let mut frame = vec![0; length];
    read.read_exact(&mut frame)
        .await
        .map_err(|e| format!("the stream ended inside a frame: {e}"))?;
    let id = u64::from_be_bytes(frame[..8].try_into().expect("8 bytes"));
    frame.drain(..8);
    Ok(Some((id, frame)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }

    #[test]
    fn a_frame_reads_back_as_its_id_and_json() {
        let mut bytes = encode(
            7,
            &Request::RunLog {
                run: "r".into(),
                from: 3,
                max: 9,
            },
        )
        .expect("encode");
        bytes.extend(encode(8, &Request::Announcement).expect("encode"));
        let mut read = &bytes[..];
        let (id, body) = block(read_frame(&mut read))
            .expect("read")
            .expect("a frame");
        assert_eq!(id, 7);
        assert!(matches!(
            decode::<Request>(&body),
            Ok(Request::RunLog {
                from: 3,
                max: 9,
                ..
            })
        ));
        let (id, body) = block(read_frame(&mut read))
            .expect("read")
            .expect("a frame");
        assert_eq!(id, 8);
        assert!(matches!(
            decode::<Request>(&body),
            Ok(Request::Announcement)
        ));
        assert!(block(read_frame(&mut read)).expect("end").is_none());
    }

    #[test]
    fn a_frame_too_long_or_cut_off_is_an_error_that_says_so() {
        let mut long = ((MAX_MESSAGE + 9) as u32).to_be_bytes().to_vec();
        long.extend([0; 16]);
        let error = block(read_frame(&mut &long[..])).expect_err("too long");
        assert!(
            error.contains(&format!("a frame of {} bytes", MAX_MESSAGE + 9)),
            "{error}"
        );

        let short = 4u32.to_be_bytes();
        let error = block(read_frame(&mut &short[..])).expect_err("too short");
        assert!(error.contains("a frame of 4 bytes"), "{error}");

        let frame = encode(1, &Request::Announcement).expect("encode");
        let cut = &frame[..frame.len() - 2];
        let error = block(read_frame(&mut &cut[..])).expect_err("cut off");
        assert!(error.contains("ended inside a frame"), "{error}");
    }

    /// The id and answer of the next queued frame.
    fn next_answer(
        queued: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    ) -> (u64, Result<Response, String>) {
        let frame = queued.try_recv().expect("an answer");
        let (id, body) = block(read_frame(&mut &frame[..]))
            .expect("read")
            .expect("frame");
        (id, decode(&body))
    }

    #[test]
    fn a_reply_dropped_unanswered_answers_with_an_error() {
        let (answers, mut queued) = mpsc::unbounded_channel();
        drop(Reply {
            id: 5,
            answers: Some(answers.clone()),
        });
        let (id, answer) = next_answer(&mut queued);
        assert_eq!(id, 5);
        assert!(matches!(answer, Ok(Response::Error(m)) if m.contains("dropped")));

        let reply = Reply {
            id: 6,
            answers: Some(answers),
        };
        reply.send(Response::RunLog(None)).expect("sent");
        let (id, answer) = next_answer(&mut queued);
        assert_eq!(id, 6);
        assert!(matches!(answer, Ok(Response::RunLog(None))));
        assert!(queued.try_recv().is_err(), "answered once");
    }
}
