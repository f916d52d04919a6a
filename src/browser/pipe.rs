//! Chromium's DevTools on a private pipe, so that no other process can drive the browser.
//!
//! A debugging port (`--remote-debugging-port`) is a TCP endpoint on 127.0.0.1 without any
//! authentication: every local user could read the session cookies (`Network.getAllCookies`)
//! or run script in the signed-in page. poed starts Chromium with `--remote-debugging-pipe`
//! instead: DevTools on fd 3 (commands in) and fd 4 (messages out), each message a JSON text
//! ended by a NUL byte, and only poed holds the other ends. Chromium exits when its command
//! pipe closes, so it cannot outlive poed either.
//!
//! chromiumoxide 0.9 speaks DevTools only over a WebSocket, so [`PipeChromium::attach`]
//! bridges in process: it binds a listener on 127.0.0.1:0 whose only accepted path carries a
//! fresh 128-bit random token, accepts exactly one WebSocket handshake on that path (anything
//! else gets 403), closes the listener at once, and relays WebSocket messages to and from the
//! pipes. The listener lives for the milliseconds of chromiumoxide's handshake and asks for a
//! secret; after it there is no endpoint at all, only the established connection inside poed.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::handler::HandlerConfig;
use chromiumoxide::{Browser, Handler};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, trace};

/// Lines of Chromium's stderr kept for the message of a failed launch.
const STDERR_TAIL: usize = 8;
/// How long one connection to the bridge may take over its WebSocket handshake; a client that
/// connects and says nothing must not hold up the launch.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed launch waits for Chromium's last stderr lines.
const LAST_WORDS_WAIT: Duration = Duration::from_millis(500);

/// Why a Chromium could not be started or reached over its pipe.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    #[error("cannot create the DevTools pipes: {0}")]
    Pipes(io::Error),
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("cannot open the in-process DevTools bridge: {0}")]
    Bridge(io::Error),
    #[error("the DevTools client did not reach the in-process bridge within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the DevTools client could not attach to the in-process bridge: {0}")]
    Attach(chromiumoxide::error::CdpError),
    #[error("the DevTools pipes were already handed to a client")]
    AlreadyAttached,
}

/// A Chromium started by poed, with its DevTools on two pipes only poed holds.
pub struct PipeChromium {
    /// The browser's main process: the supervisor awaits its exit and reaps it.
    pub child: Child,
    /// poed's ends of the pipes, until [`PipeChromium::attach`] hands them to the relay.
    ends: Option<Ends>,
    /// The relay task; aborting it closes both the pipes and the WebSocket.
    relay: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Ends when Chromium's stderr reaches EOF.
    drain: JoinHandle<()>,
}

/// poed's ends of Chromium's DevTools pipes.
struct Ends {
    /// Chromium reads commands from the other end as its fd 3.
    to_chromium: pipe::Sender,
    /// Chromium writes answers and events to the other end as its fd 4.
    from_chromium: pipe::Receiver,
}

impl PipeChromium {
    /// Starts `program` with `args` (which must include `--remote-debugging-pipe`), its fds 3
    /// and 4 on fresh pipes, stdout discarded and stderr drained into the debug log. Chromium
    /// runs with umask 077: everything it writes, the profile with its cookies first, is
    /// private to the user. It is killed if the returned value is dropped.
    pub fn spawn(program: &Path, args: &[OsString]) -> Result<PipeChromium, PipeError> {
        let (child_reads, to_chromium) = cloexec_pipe().map_err(PipeError::Pipes)?;
        let (from_chromium, child_writes) = cloexec_pipe().map_err(PipeError::Pipes)?;
        let to_chromium = pipe::Sender::from_owned_fd(to_chromium).map_err(PipeError::Pipes)?;
        let from_chromium =
            pipe::Receiver::from_owned_fd(from_chromium).map_err(PipeError::Pipes)?;
        let (commands_fd, messages_fd) = (child_reads.as_raw_fd(), child_writes.as_raw_fd());
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and makes only
        // async-signal-safe calls (fcntl, dup2, umask); it allocates nothing.
        unsafe {
            command.pre_exec(move || child_fds(commands_fd, messages_fd));
        }
        let mut child = command.spawn().map_err(|source| PipeError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        // From here Chromium alone holds its ends: its exit is EOF on `from_chromium`.
        drop(child_reads);
        drop(child_writes);
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let drain = match child.stderr.take() {
            Some(out) => tokio::spawn(drain(out, stderr.clone())),
            None => tokio::spawn(async {}),
        };
        debug!(pid = child.id(), "chromium started with DevTools on a pipe");
        Ok(PipeChromium {
            child,
            ends: Some(Ends {
                to_chromium,
                from_chromium,
            }),
            relay: None,
            stderr,
            drain,
        })
    }

    /// Connects chromiumoxide to this Chromium through a one-shot bridge (see the module
    /// docs) and starts relaying. The returned [`Handler`] must be polled, as always.
    /// Chromium may still be starting: the first command's answer shows that it is up.
    pub async fn attach(
        &mut self,
        config: HandlerConfig,
        limit: Duration,
    ) -> Result<(Browser, Handler), PipeError> {
        let ends = self.ends.take().ok_or(PipeError::AlreadyAttached)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(PipeError::Bridge)?;
        let port = listener.local_addr().map_err(PipeError::Bridge)?.port();
        let path = format!(
            "/devtools/browser/{}",
            random_token().map_err(PipeError::Bridge)?
        );
        let url = format!("ws://127.0.0.1:{port}{path}");
        let client = async {
            Browser::connect_with_config(url, config)
                .await
                .map_err(PipeError::Attach)
        };
        // `accept_one` owns the listener: it is closed as soon as the handshake is done.
        let (attached, ws) = tokio::try_join!(client, accept_one(listener, &path, limit))?;
        self.relay = Some(tokio::spawn(relay(
            ws,
            ends.to_chromium,
            ends.from_chromium,
        )));
        Ok(attached)
    }

    /// Chromium's last stderr lines (after waiting briefly for them if it has exited), for
    /// the message of a failed launch; empty when it said nothing.
    pub async fn last_words(&mut self) -> String {
        if matches!(self.child.try_wait(), Ok(Some(_))) && !self.drain.is_finished() {
            let _ = tokio::time::timeout(LAST_WORDS_WAIT, &mut self.drain).await;
        }
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl Drop for PipeChromium {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.abort();
        }
    }
}

/// A pipe whose both ends are close-on-exec: (read end, write end).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two new descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In the forked child, before exec: Chromium's pipe ends onto fds 3 and 4, and umask 077.
fn child_fds(commands: RawFd, messages: RawFd) -> io::Result<()> {
    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
    // Copies above 4 first: then neither dup2 below overwrites the other end, and neither is
    // a dup2 of a descriptor onto itself (a no-op that would leave close-on-exec set).
    // SAFETY: fcntl, dup2 and umask are async-signal-safe and touch only descriptors we own.
    unsafe {
        let commands = check(libc::fcntl(commands, libc::F_DUPFD_CLOEXEC, 5))?;
        let messages = check(libc::fcntl(messages, libc::F_DUPFD_CLOEXEC, 5))?;
        check(libc::dup2(commands, 3))?;
        check(libc::dup2(messages, 4))?;
        libc::umask(0o077);
    }
    Ok(())
}

/// Logs Chromium's stderr at debug level and keeps its last lines. Chromium blocks when
/// nobody reads a full stderr pipe, so this reads until EOF.
async fn drain(stderr: ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if text.is_empty() {
            continue;
        }
        debug!(line = %text, "chromium stderr");
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(text);
    }
}

/// 128 bits from the kernel's random source, as 32 hex digits.
fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n.unsigned_abs();
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// No size caps: the only peer is poed's own DevTools client after the secret handshake, and
/// DevTools messages (response bodies, screenshots) can be large.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

/// Accepts the one WebSocket handshake whose path is `path` and returns its stream; the
/// listener is closed on return. Other connections get 403 (or are dropped after
/// [`HANDSHAKE_TIMEOUT`]) without holding up the right one.
async fn accept_one(
    listener: TcpListener,
    path: &str,
    limit: Duration,
) -> Result<WebSocketStream<TcpStream>, PipeError> {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted.map_err(PipeError::Bridge)?;
                let check = SecretPath(path.to_owned());
                handshakes.spawn(async move {
                    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config()));
                    (peer, tokio::time::timeout(HANDSHAKE_TIMEOUT, ws).await)
                });
            }
            Some(done) = handshakes.join_next() => match done {
                Ok((peer, Ok(Ok(ws)))) => {
                    // Small DevTools messages both ways: no Nagle delay on either end of the
                    // loopback bridge (the client end is chromiumoxide's, in this process).
                    let _ = ws.get_ref().set_nodelay(true);
                    no_delay_on_local_socket(peer);
                    return Ok(ws);
                }
                Ok((peer, _)) => debug!(%peer, "refused a connection to the DevTools bridge"),
                Err(_) => {}
            },
            () = &mut deadline => return Err(PipeError::HandshakeTimeout(limit)),
        }
    }
}

/// Sets `TCP_NODELAY` on this process's own TCP socket whose local address is `addr` (the
/// client end of the bridge, opened by chromiumoxide, which offers no way to set it).
fn no_delay_on_local_socket(addr: std::net::SocketAddr) {
    let std::net::SocketAddr::V4(v4) = addr else {
        return;
    };
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in fds.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: getsockname only writes into the zeroed address we own, up to `len`; on an fd
        // that is not a socket it fails and nothing is touched.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc =
            unsafe { libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) };
        if rc != 0 || sa.sin_family != libc::AF_INET as libc::sa_family_t {
            continue;
        }
        let port = u16::from_be(sa.sin_port);
        let ip = std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        if port == v4.port() && ip == *v4.ip() {
            let one: libc::c_int = 1;
            // SAFETY: setting an int option on a socket of this process.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            return;
        }
    }
}

/// The handshake check: only a request for the secret path is answered; others get 403.
struct SecretPath(String);

impl Callback for SecretPath {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        if same_secret(request.uri().path().as_bytes(), self.0.as_bytes()) {
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(None);
            *refusal.status_mut() = StatusCode::FORBIDDEN;
            Err(refusal)
        }
    }
}

/// Moves messages between the WebSocket and Chromium's pipes (any byte streams: in-memory
/// ones in tests) until one side ends, then ends the other: a closed command pipe makes
/// Chromium exit, a closed WebSocket ends chromiumoxide's handler (and so tells the
/// supervisor).
async fn relay<S, W, R>(ws: WebSocketStream<S>, mut to_chromium: W, from_chromium: R)
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let (mut ws_out, mut ws_in) = ws.split();
    let commands = async {
        while let Some(message) = ws_in.next().await {
            let mut bytes = match message {
                Ok(Message::Text(text)) => text.as_str().as_bytes().to_vec(),
                Ok(Message::Binary(data)) => data.to_vec(),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            bytes.push(0);
            if to_chromium.write_all(&bytes).await.is_err() {
                break;
            }
        }
        debug!("the DevTools client closed its connection");
    };
    let messages = async {
        let mut reader = BufReader::new(from_chromium);
        let mut buf = Vec::new();
        loop {
            match reader.read_until(0, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if buf.last() == Some(&0) {
                buf.pop();
            }
            let text = match String::from_utf8(std::mem::take(&mut buf)) {
                Ok(text) => text,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            trace!(
                bytes = text.len(),
                method = method_of(&text),
                "devtools message"
            );
            if ws_out.send(Message::text(text)).await.is_err() {
                return;
            }
        }
        debug!("Chromium closed its DevTools pipe");
        let _ = ws_out.close().await;
    };
    tokio::select! {
        () = commands => {}
        () = messages => {}
    }
}

/// The method of a DevTools event, for the trace log (never the message's content, which
/// may hold cookies); "reply" for answers to commands.
fn method_of(message: &str) -> &str {
    message
        .strip_prefix(r#"{"method":""#)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("reply")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Error as WsError;

    async fn bridge(limit: Duration) -> (u16, String, JoinHandle<Result<(), PipeError>>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let path = format!("/devtools/browser/{}", random_token().expect("token"));
        let expected = path.clone();
        let task = tokio::spawn(async move {
            let ws = accept_one(listener, &expected, limit).await?;
            drop(ws);
            Ok(())
        });
        (port, path, task)
    }

    #[test]
    fn the_trace_names_events_and_nothing_else() {
        assert_eq!(
            method_of(r#"{"method":"Network.webSocketFrameReceived","params":{}}"#),
            "Network.webSocketFrameReceived"
        );
        assert_eq!(
            method_of(r#"{"id":7,"result":{"cookies":[{"name":"p-b"}]}}"#),
            "reply"
        );
    }

    #[test]
    fn tokens_are_128_bits_and_differ() {
        let a = random_token().expect("token");
        let b = random_token().expect("token");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(same_secret(a.as_bytes(), a.as_bytes()));
        assert!(!same_secret(a.as_bytes(), b.as_bytes()));
        assert!(!same_secret(a.as_bytes(), &a.as_bytes()[..31]));
    }

    #[tokio::test]
    async fn the_bridge_refuses_wrong_paths_accepts_the_secret_once_then_is_gone() {
        let (port, path, task) = bridge(Duration::from_secs(10)).await;
        // A silent connection does not hold up the others.
        let _silent = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .expect("connect");
        for wrong in [
            "/devtools/browser",
            "/devtools/browser/0123",
            "/json/version",
            "/",
        ] {
            let url = format!("ws://127.0.0.1:{port}{wrong}");
            match tokio_tungstenite::connect_async(url).await {
                Err(WsError::Http(response)) => assert_eq!(response.status(), 403, "{wrong}"),
                other => panic!("{wrong}: expected 403, got {:?}", other.map(|_| ())),
            }
        }
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("the secret path is accepted");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("accept_one returns")
            .expect("join")
            .expect("accepted");
        drop(ws);
        // The listener is closed: nothing answers on the port any more, secret or not.
        let again = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await;
        assert!(
            again.is_err(),
            "the bridge's port still accepts connections"
        );
    }

    #[tokio::test]
    async fn the_bridge_gives_up_after_its_limit() {
        let (_, _, task) = bridge(Duration::from_millis(100)).await;
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("bounded")
            .expect("join");
        assert!(matches!(result, Err(PipeError::HandshakeTimeout(_))));
    }

    #[tokio::test]
    async fn the_relay_frames_messages_with_nul_both_ways_and_ends_with_either_side() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // A fake Chromium: `commands` is what it reads on fd 3, `messages` what it writes on 4.
        let (relay_writes, mut commands) = tokio::io::duplex(1024);
        let (mut messages, relay_reads) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let ws = tokio_tungstenite::accept_async(stream)
                .await
                .expect("handshake");
            relay(ws, relay_writes, relay_reads).await;
        });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
            .await
            .expect("connect");
        ws.send(Message::text(r#"{"id":1,"method":"Browser.getVersion"}"#))
            .await
            .expect("send");
        ws.send(Message::text("ünïcode")).await.expect("send");
        let mut got = [0u8; 64];
        let mut read = 0;
        use tokio::io::AsyncReadExt;
        while got[..read].iter().filter(|b| **b == 0).count() < 2 {
            read += commands.read(&mut got[read..]).await.expect("read");
        }
        let expected = format!(
            "{}\0{}\0",
            r#"{"id":1,"method":"Browser.getVersion"}"#, "ünïcode"
        );
        assert_eq!(&got[..read], expected.as_bytes());
        // Two messages in one write and one split over two writes arrive as three texts.
        messages
            .write_all(b"{\"id\":1}\0{\"a\":")
            .await
            .expect("write");
        messages.write_all(b"2}\0{\"b\":3}\0").await.expect("write");
        for want in [r#"{"id":1}"#, r#"{"a":2}"#, r#"{"b":3}"#] {
            let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("bounded")
                .expect("message")
                .expect("ok");
            assert_eq!(message, Message::text(want));
        }
        // Chromium going away closes the WebSocket.
        drop(messages);
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("bounded");
        assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "{end:?}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the relay ends")
            .expect("join");
    }

    #[tokio::test]
    async fn the_relay_closes_the_command_pipe_when_the_client_goes() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (relay_writes, mut commands) = tokio::io::duplex(1024);
        let (_messages, relay_reads) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let ws = tokio_tungstenite::accept_async(stream)
                .await
                .expect("handshake");
            relay(ws, relay_writes, relay_reads).await;
        });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
            .await
            .expect("connect");
        ws.close(None).await.expect("close");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), commands.read_to_end(&mut rest))
            .await
            .expect("EOF on the command pipe")
            .expect("read");
        assert!(rest.is_empty());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the relay ends")
            .expect("join");
    }
}
