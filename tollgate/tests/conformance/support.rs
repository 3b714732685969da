//! Helpers of the shared suite: unique names, subjects, and the cross-process holder.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tollgate::{
    Acquire, AnyProvider, Handle, LockProvider, ReadWriteLock, ReadWriteLockProvider,
    SemaphoreProvider,
};

/// Generous bound for anything that should happen "promptly".
pub const PROMPT: Duration = Duration::from_secs(10);

/// A name no other test (or earlier run) uses.
pub fn unique(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!(
        "{label}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Something the mutex suite runs against: makes mutex-like primitives by name and tells a
/// child process how to make the same one.
pub trait Subject: Send + Sync + 'static {
    /// The primitive.
    type Primitive: Acquire + Clone + 'static;
    /// The primitive called `name`.
    fn make(&self, name: &str) -> Self::Primitive;
    /// The backend URL a child process connects with.
    fn url(&self) -> String;
    /// What the child acquires: `lock`, `semaphore:N`, `read`, `write` or `upgradeable`.
    fn child_kind(&self) -> String;
}

/// Locks of a provider.
pub struct Locks<P> {
    pub provider: P,
    pub url: String,
}

impl<P: LockProvider<Lock: Clone + 'static> + 'static> Subject for Locks<P> {
    type Primitive = P::Lock;
    fn make(&self, name: &str) -> P::Lock {
        self.provider.lock(name).expect("valid lock name")
    }
    fn url(&self) -> String {
        self.url.clone()
    }
    fn child_kind(&self) -> String {
        "lock".into()
    }
}

/// Semaphores of one max count, used where a mutex is expected when the count is 1.
pub struct Semaphores<P> {
    pub provider: P,
    pub url: String,
    pub max_count: u32,
}

impl<P: SemaphoreProvider<Semaphore: Clone + 'static> + 'static> Subject for Semaphores<P> {
    type Primitive = P::Semaphore;
    fn make(&self, name: &str) -> P::Semaphore {
        self.provider
            .semaphore(name, self.max_count)
            .expect("valid semaphore")
    }
    fn url(&self) -> String {
        self.url.clone()
    }
    fn child_kind(&self) -> String {
        format!("semaphore:{}", self.max_count)
    }
}

/// The write side of reader-writer locks, used as a mutex.
pub struct Writers<P> {
    pub provider: P,
    pub url: String,
}

impl<P> Subject for Writers<P>
where
    P: ReadWriteLockProvider<ReadWriteLock: ReadWriteLock<Write: Clone + 'static>> + 'static,
{
    type Primitive = <P::ReadWriteLock as ReadWriteLock>::Write;
    fn make(&self, name: &str) -> Self::Primitive {
        self.provider
            .read_write_lock(name)
            .expect("valid name")
            .writer()
    }
    fn url(&self) -> String {
        self.url.clone()
    }
    fn child_kind(&self) -> String {
        "write".into()
    }
}

/// A child process holding a primitive: the same test binary, run as the holder.
pub struct Holder {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// What the child prints once it holds.
const HELD: &str = "TOLLGATE-HOLDER-HELD";
const RELEASED: &str = "TOLLGATE-HOLDER-RELEASED";

impl Holder {
    /// Starts a child that acquires `kind` called `name` on `url` and says when it holds.
    pub async fn start(url: &str, kind: &str, name: &str) -> Holder {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = tokio::process::Command::new(exe)
            .args([
                "conformance_holder_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TOLLGATE_HOLDER_URL", url)
            .env("TOLLGATE_HOLDER_KIND", kind)
            .env("TOLLGATE_HOLDER_NAME", name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the holder process");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Holder {
            child,
            stdin,
            lines,
        }
    }

    /// Waits until the child prints `line` (ignoring the test harness's own output).
    async fn expect_line(&mut self, line: &str) -> String {
        let found = tokio::time::timeout(PROMPT, async {
            while let Some(next) = self.lines.next_line().await.expect("read holder output") {
                // The harness may print its own text before ours on the same line.
                if let Some(at) = next.find(line) {
                    return next[at..].to_owned();
                }
            }
            panic!("holder exited before printing {line}");
        });
        found
            .await
            .unwrap_or_else(|_| panic!("holder did not print {line} in time"))
    }

    /// Waits until the child holds; returns its fencing token, if any.
    pub async fn held(&mut self) -> Option<u64> {
        let line = self.expect_line(HELD).await;
        line.split_whitespace()
            .nth(1)
            .and_then(|token| token.parse().ok())
    }

    /// Whether the child has printed that it holds within `wait`.
    pub async fn holds_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, async {
            while let Some(next) = self.lines.next_line().await.expect("read holder output") {
                if next.contains(HELD) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    }

    /// Asks the child to release, and waits until it has.
    pub async fn release(mut self) {
        self.stdin
            .write_all(b"release\n")
            .await
            .expect("write to holder");
        self.stdin.flush().await.expect("flush holder stdin");
        self.expect_line(RELEASED).await;
        let _ = self.child.wait().await;
    }

    /// Asks the child to exit without releasing (a leaked handle), and waits until it is gone.
    pub async fn exit_without_release(mut self) {
        self.stdin
            .write_all(b"exit\n")
            .await
            .expect("write to holder");
        self.stdin.flush().await.expect("flush holder stdin");
        let status = self.child.wait().await.expect("wait for holder");
        assert!(status.success(), "holder exited with {status}");
    }

    /// `SIGKILL`s the child and waits until it is gone.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill holder");
        let _ = self.child.wait().await;
    }
}

/// The child side of [`Holder`]: runs when the test binary is started as a holder.
pub fn holder_main() {
    let (Ok(url), Ok(kind), Ok(name)) = (
        std::env::var("TOLLGATE_HOLDER_URL"),
        std::env::var("TOLLGATE_HOLDER_KIND"),
        std::env::var("TOLLGATE_HOLDER_NAME"),
    ) else {
        return; // Run by hand with --ignored: nothing to hold.
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let provider = AnyProvider::from_url(&url).expect("holder URL");
        let handle: tollgate::AnyHandle = match kind.as_str() {
            "lock" => provider.lock(&name).expect("lock").acquire().await,
            "read" => {
                provider
                    .read_write_lock(&name)
                    .expect("rw")
                    .reader()
                    .acquire()
                    .await
            }
            "write" => {
                provider
                    .read_write_lock(&name)
                    .expect("rw")
                    .writer()
                    .acquire()
                    .await
            }
            other => {
                let max: u32 = other
                    .strip_prefix("semaphore:")
                    .and_then(|max| max.parse().ok())
                    .unwrap_or_else(|| panic!("unknown holder kind {other}"));
                provider
                    .semaphore(&name, max)
                    .expect("semaphore")
                    .acquire()
                    .await
            }
        }
        .expect("holder acquire");
        let token = handle
            .fencing_token()
            .map(|token| token.to_string())
            .unwrap_or_default();
        println!("{HELD} {token}");
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        loop {
            match stdin.next_line().await.expect("holder stdin").as_deref() {
                Some("exit") => std::process::exit(0),
                Some("release") | None => break,
                Some(_) => continue,
            }
        }
        handle.release().await.expect("holder release");
        println!("{RELEASED}");
    });
}

/// A TCP proxy in front of a server that can be made to black-hole all traffic, as a network
/// that silently drops everything would: nothing is forwarded either way, nothing is closed.
pub struct FreezableProxy {
    /// The loopback port to connect to instead of the server's.
    pub port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
    tasks: std::sync::Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
}

impl FreezableProxy {
    /// Starts forwarding connections on a free loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> FreezableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let (upstream, watch, pipes) = (upstream.to_owned(), frozen.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (inbound_read, inbound_write) = inbound.into_split();
                let (outbound_read, outbound_write) = outbound.into_split();
                let mut pipes = pipes.lock().unwrap();
                pipes.spawn(forward(inbound_read, outbound_write, watch.subscribe()));
                pipes.spawn(forward(outbound_read, inbound_write, watch.subscribe()));
            }
        });
        FreezableProxy {
            port,
            frozen,
            tasks,
        }
    }

    /// From now on nothing gets through, and every connection stays open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// Holds a lock of `provider` (which connects through `proxy`), then black-holes the proxy
/// and waits (bounded) for the handle's loss signal: a keepalive must notice a network that
/// silently drops everything rather than wait for TCP to give up. Returns the lost handle.
pub async fn hold_then_black_hole<P: LockProvider>(
    provider: &P,
    proxy: &FreezableProxy,
) -> <P::Lock as Acquire>::Handle {
    let held = provider
        .lock(&unique("silent"))
        .unwrap()
        .acquire()
        .await
        .unwrap();
    assert!(!held.loss_signal().is_lost());
    proxy.freeze();
    tokio::time::timeout(PROMPT, held.lost())
        .await
        .expect("the loss signal fires");
    held
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.abort_all();
        }
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 16 * 1024];
    let is_frozen = frozen.clone();
    loop {
        tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(count) => {
                    let stopped = *is_frozen.borrow();
                    if stopped || to.write_all(&buffer[..count]).await.is_err() {
                        // Frozen: what was read is dropped, and the connection stays open.
                        std::future::pending::<()>().await;
                    }
                }
            },
            () = async {
                let _ = frozen.wait_for(|frozen| *frozen).await;
            } => std::future::pending::<()>().await,
        }
    }
}
