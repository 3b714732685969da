//! Helpers of the shared suite: unique names, subjects, and the cross-process holder.

use std::future::Future;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::oneshot;
use tollgate::blocking::Blocking;
use tollgate::{
    Acquire, AnyAcquire, AnyProvider, Handle, LockProvider, ReadWriteLock, ReadWriteLockProvider,
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
        Holder::spawn(url, kind, name, "async")
    }

    /// As [`Holder::start`], but the child uses the blocking API, on a plain thread without
    /// any async runtime of its own.
    pub async fn start_blocking(url: &str, kind: &str, name: &str) -> Holder {
        Holder::spawn(url, kind, name, "blocking")
    }

    fn spawn(url: &str, kind: &str, name: &str, api: &str) -> Holder {
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
            .env("TOLLGATE_HOLDER_API", api)
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

    async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to holder");
        self.stdin.flush().await.expect("flush holder stdin");
    }

    /// Asks the child to release, and waits until it has.
    pub async fn release(mut self) {
        self.send("release").await;
        self.expect_line(RELEASED).await;
        let _ = self.child.wait().await;
    }

    /// Asks the child to exit without releasing (a leaked handle), and waits until it is gone.
    pub async fn exit_without_release(mut self) {
        self.send("exit").await;
        let status = self.child.wait().await.expect("wait for holder");
        assert!(status.success(), "holder exited with {status}");
    }

    /// Asks the child to drop its handle (no `release().await`) and return from its main at
    /// once, as a short program does; waits (bounded) until it has exited successfully.
    pub async fn drop_and_return(mut self) {
        self.send("drop-return").await;
        let status = tokio::time::timeout(PROMPT, self.child.wait())
            .await
            .expect("the holder did not exit after dropping its handle")
            .expect("wait for holder");
        assert!(status.success(), "holder exited with {status}");
    }

    /// `SIGKILL`s the child and waits until it is gone.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill holder");
        let _ = self.child.wait().await;
    }
}

/// The child side of [`Holder`]: runs when the test binary is started as a holder.
///
/// Commands on stdin: `release` (or end of input) releases and says so, `exit` exits at once
/// without releasing, `drop-return` drops the handle and returns from here at once (the
/// runtime is dropped and the process exits, as after returning from `#[tokio::main]`).
pub fn holder_main() {
    let (Ok(url), Ok(kind), Ok(name)) = (
        std::env::var("TOLLGATE_HOLDER_URL"),
        std::env::var("TOLLGATE_HOLDER_KIND"),
        std::env::var("TOLLGATE_HOLDER_NAME"),
    ) else {
        return; // Run by hand with --ignored: nothing to hold.
    };
    if std::env::var("TOLLGATE_HOLDER_API").as_deref() == Ok("blocking") {
        return hold_through_blocking_api(&url, &kind, &name);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let provider = AnyProvider::from_url(&url).expect("holder URL");
        let handle = holder_primitive(&provider, &kind, &name)
            .acquire()
            .await
            .expect("holder acquire");
        println!("{HELD} {}", token_text(handle.fencing_token()));
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = stdin.next_line().await.expect("holder stdin");
            match HolderCommand::parse(line.as_deref()) {
                Some(HolderCommand::Exit) => std::process::exit(0),
                Some(HolderCommand::DropReturn) => return drop(handle),
                Some(HolderCommand::Release) => break,
                None => continue,
            }
        }
        handle.release().await.expect("holder release");
        println!("{RELEASED}");
    });
}

/// [`holder_main`] through the blocking API, on this plain thread with no runtime at all.
fn hold_through_blocking_api(url: &str, kind: &str, name: &str) {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "the blocking holder must run outside any runtime"
    );
    let provider = AnyProvider::from_url(url).expect("holder URL");
    let handle = Blocking::new(holder_primitive(&provider, kind, name))
        .acquire()
        .expect("holder acquire");
    println!("{HELD} {}", token_text(handle.fencing_token()));
    let mut stdin = std::io::stdin().lines();
    loop {
        let line = stdin.next().map(|line| line.expect("holder stdin"));
        match HolderCommand::parse(line.as_deref()) {
            Some(HolderCommand::Exit) => std::process::exit(0),
            Some(HolderCommand::DropReturn) => return drop(handle),
            Some(HolderCommand::Release) => break,
            None => continue,
        }
    }
    handle.release().expect("holder release");
    println!("{RELEASED}");
}

enum HolderCommand {
    Exit,
    Release,
    DropReturn,
}

impl HolderCommand {
    /// `None` for a line that is no command; end of input means release.
    fn parse(line: Option<&str>) -> Option<HolderCommand> {
        match line {
            Some("exit") => Some(HolderCommand::Exit),
            Some("drop-return") => Some(HolderCommand::DropReturn),
            Some("release") | None => Some(HolderCommand::Release),
            Some(_) => None,
        }
    }
}

fn token_text(token: Option<u64>) -> String {
    token.map(|token| token.to_string()).unwrap_or_default()
}

/// What a holder of `kind` acquires.
fn holder_primitive(provider: &AnyProvider, kind: &str, name: &str) -> AnyAcquire {
    match kind {
        "lock" => AnyAcquire::new(provider.lock(name).expect("lock")),
        "read" => AnyAcquire::new(provider.read_write_lock(name).expect("rw").reader()),
        "write" => AnyAcquire::new(provider.read_write_lock(name).expect("rw").writer()),
        other => {
            let max: u32 = other
                .strip_prefix("semaphore:")
                .and_then(|max| max.parse().ok())
                .unwrap_or_else(|| panic!("unknown holder kind {other}"));
            AnyAcquire::new(provider.semaphore(name, max).expect("semaphore"))
        }
    }
}

/// Acquires `name` from a fresh instance, waiting up to `bound`, and releases it again;
/// `Err` says why it could not (still held, an error, or a hang), and whether a child
/// process could acquire it then (and how long after the check began: a lease running out
/// frees a leaked hold too), to tell a hold left on the backend from a stuck provider.
pub async fn free_within<S: Subject>(
    subject: &S,
    name: &str,
    bound: Duration,
) -> Result<(), String> {
    let began = std::time::Instant::now();
    let lock = subject.make(name);
    let why = match tokio::time::timeout(bound + PROMPT, lock.acquire_timeout(bound)).await {
        Err(_) => format!("acquire_timeout({bound:?}) hung"),
        Ok(Err(error)) if error.is_timeout() => format!("still held after {bound:?}"),
        Ok(Err(error)) => format!("acquire failed: {error}"),
        Ok(Ok(handle)) => {
            return match tokio::time::timeout(PROMPT, handle.release()).await {
                Err(_) => Err("acquired, but its release hung".into()),
                Ok(Err(error)) => Err(format!("acquired, but its release failed: {error}")),
                Ok(Ok(())) => Ok(()),
            }
        }
    };
    const PROBE: Duration = Duration::from_secs(3);
    let mut holder = Holder::start(&subject.url(), &subject.child_kind(), name).await;
    let probe = if holder.holds_within(PROBE).await {
        holder.release().await;
        format!(
            "a child process then acquired it, {:?} after the check began",
            began.elapsed()
        )
    } else {
        format!("a child process could not acquire it either within {PROBE:?}")
    };
    Err(format!("{why}; {probe}"))
}

/// Runs one part of a case, turning a panic in it into `Err(message)`, so that a case of
/// several parts reports every part that failed rather than only the first.
pub async fn outcome(part: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    match std::panic::AssertUnwindSafe(part).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(
            match (panic.downcast_ref::<String>(), panic.downcast_ref::<&str>()) {
                (Some(message), _) => format!("panicked: {message}"),
                (None, Some(message)) => format!("panicked: {message}"),
                (None, None) => "panicked".into(),
            },
        ),
    }
}

/// How many ways [`abandon`] knows.
pub const ABANDON_WAYS: usize = 5;

/// Polls `future` a little and gives up on it (drops it), the `way`-th way of
/// [`ABANDON_WAYS`]: a zero timeout, a random 0–3 ms timeout, exactly one poll
/// (`now_or_never`), one poll in a biased `select!` against a ready future, or a `select!`
/// against a random 0–3 ms sleep. Returns how, and the output if it completed in time.
pub async fn abandon<F: Future>(way: usize, future: F) -> (String, Option<F::Output>) {
    let pause = Duration::from_micros(rand::thread_rng().gen_range(0..=3_000));
    match way % ABANDON_WAYS {
        0 => (
            "a zero timeout".into(),
            tokio::time::timeout(Duration::ZERO, future).await.ok(),
        ),
        1 => (
            format!("a {pause:?} timeout"),
            tokio::time::timeout(pause, future).await.ok(),
        ),
        2 => ("one poll (now_or_never)".into(), future.now_or_never()),
        3 => (
            "one poll (a biased select against a ready future)".into(),
            tokio::select! {
                biased;
                output = future => Some(output),
                () = std::future::ready(()) => None,
            },
        ),
        _ => (
            format!("a select against a {pause:?} sleep"),
            tokio::select! {
                output = future => Some(output),
                () = tokio::time::sleep(pause) => None,
            },
        ),
    }
}

/// A current-thread runtime with I/O and time, as `#[tokio::main(flavor = "current_thread")]`
/// builds.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime")
}

/// A plain std thread the async test waits for with a bound: a hang fails the test instead
/// of hanging it, and a panic on the thread is re-raised in the test.
pub struct PlainThread<T> {
    what: String,
    result: oneshot::Receiver<std::thread::Result<T>>,
}

impl<T: Send + 'static> PlainThread<T> {
    /// Runs `body` on a new thread; `what` names it in failure messages.
    pub fn spawn(what: impl Into<String>, body: impl FnOnce() -> T + Send + 'static) -> Self {
        let (sender, result) = oneshot::channel();
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let _ = sender.send(outcome);
        });
        PlainThread {
            what: what.into(),
            result,
        }
    }

    /// Waits (up to `bound`) for what the thread sends on `step`'s sender.
    pub async fn until<U>(&mut self, step: oneshot::Receiver<U>, bound: Duration) -> U {
        match tokio::time::timeout(bound, step).await {
            Ok(Ok(value)) => value,
            // The thread dropped the sender without sending: it ended, by panicking.
            Ok(Err(_)) => match tokio::time::timeout(PROMPT, &mut self.result).await {
                Ok(Ok(Err(panic))) => std::panic::resume_unwind(panic),
                Ok(_) => panic!("{}: the thread ended without sending", self.what),
                Err(_) => panic!("{}: the thread panicked, then hung unwinding", self.what),
            },
            Err(_) => panic!("{}: hung (nothing within {bound:?})", self.what),
        }
    }

    /// Waits (up to `bound`) for the thread's result.
    pub async fn join(self, bound: Duration) -> T {
        match tokio::time::timeout(bound, self.result).await {
            Ok(Ok(Ok(value))) => value,
            Ok(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            Ok(Err(_)) => panic!("{}: the thread vanished", self.what),
            Err(_) => panic!("{}: hung (no result within {bound:?})", self.what),
        }
    }
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

/// Acquires of `locks` (tries and bounded waits) dropped at random moments, some of the
/// handles kept for a while; `within_size` is checked after each round (the pool stays within
/// its size). Ends with every handle dropped and the releases flushed.
pub async fn drop_acquires_at_random_moments<L: Acquire>(
    locks: &[L],
    within_size: impl Fn() -> bool,
) {
    use rand::SeedableRng;
    let mut random = rand::rngs::StdRng::seed_from_u64(11);
    let mut kept = Vec::new();
    for _ in 0..120 {
        let lock = &locks[random.gen_range(0..locks.len())];
        let patience = Duration::from_micros(random.gen_range(0..8_000));
        let (trying, keep) = (random.gen_bool(0.5), random.gen_bool(0.2));
        let acquire = async {
            if trying {
                lock.try_acquire().await
            } else {
                match lock.acquire_timeout(Duration::from_secs(2)).await {
                    Ok(handle) => Ok(Some(handle)),
                    Err(error) if error.is_timeout() => Ok(None),
                    Err(error) => Err(error),
                }
            }
        };
        if let Ok(outcome) = tokio::time::timeout(patience, acquire).await {
            if let Some(handle) = outcome.unwrap() {
                if keep {
                    kept.push(handle);
                }
            }
        }
        if kept.len() > 2 {
            drop(kept.remove(0));
        }
        assert!(within_size(), "the pool stays within its size");
    }
    drop(kept);
    tollgate::flush_releases().await;
}

/// Each lock acquired once, all at once, each within `patience`, held for a moment and
/// released: every contender gets its turn and no two hold at once (the locks share a name).
pub async fn contenders_take_turns<L: Acquire + Send + Sync + 'static>(
    locks: Vec<L>,
    patience: Duration,
) {
    let inside = std::sync::Arc::new(AtomicU64::new(0));
    let contenders: Vec<_> = locks
        .into_iter()
        .map(|lock| {
            let inside = inside.clone();
            tokio::spawn(async move {
                let handle = lock.acquire_timeout(patience).await?;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                handle.release().await
            })
        })
        .collect();
    for contender in contenders {
        contender
            .await
            .unwrap()
            .expect("every contender gets its turn");
    }
}
