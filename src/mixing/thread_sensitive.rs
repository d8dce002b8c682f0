//! Handlers whose state is not `Send` or not `Sync`: one instance per pool thread
//! ([`PerThread`]), or one instance on one dedicated thread ([`SingleThread`]).
//!
//! asgiref's `thread_sensitive=True` runs all such code on one thread, which is simple
//! and famous for deadlocks when that thread waits on itself. Here the two modes are
//! separate and explicit, and the single-thread mode has a bounded queue whose overflow
//! is a `503`, never a wait without end.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{header, HeaderValue, StatusCode};
use tokio::runtime::Handle;

use crate::context::{self, Context};
use crate::error::{panic_message, Error, Kind, Result};
use crate::handler::{internal_error, Handler, IntoResponse, Request, Response};
use crate::metrics::{HandlerFailure, Refused};
use crate::throttle::Throttle;

/// A handler built once per pool thread by a factory, for state that is not `Sync` or not
/// `Send`: a `RefCell` cache, an `Rc`, one database connection per thread.
///
/// The first request a pool thread serves calls `factory` on that thread; the instance
/// stays in a thread-local and serves every later request on the same thread, so it never
/// crosses threads and needs neither `Send` nor `Sync`. Requests still run in parallel,
/// one per thread.
///
/// # Trade-offs
///
/// - Memory and setup: up to one instance per pool thread (`max_threads`, 512 by
///   default), each built on that thread's first request. Idle pool threads exit after
///   their keep-alive, dropping their instance; the next request there builds a new one.
///   Bound the count with the pool's `max_threads`.
/// - State is per thread, not shared: two requests may see different caches. Use it for
///   things that are equivalent per thread (connections, parsers, caches of pure
///   functions), not for state that must be consistent across requests.
/// - A factory panic answers that request `500` (logged by the bridge); the next request
///   on that thread calls the factory again. A handler panic leaves the instance in place.
/// - When the `PerThread` is dropped, its instances are dropped on each thread's next
///   miss or at thread exit, not at once.
///
/// # Where it may be called from
///
/// Serve it like any [`Handler`]: its `call` runs on a pool thread. Called directly on any
/// other thread, it builds an instance for that thread too; nothing is refused.
///
/// # Examples
///
/// ```
/// use std::cell::RefCell;
/// use std::collections::HashMap;
/// use syncbridge::{Handler, PerThread, Request};
///
/// let handler = PerThread::new(|| {
///     // Built on each pool thread; `RefCell` is fine since it never leaves that thread.
///     let cache = RefCell::new(HashMap::<String, usize>::new());
///     move |req: Request| {
///         let path = req.uri().path().to_owned();
///         let mut cache = cache.borrow_mut();
///         let hits = cache.entry(path).or_default();
///         *hits += 1;
///         format!("{hits} hits on this thread")
///     }
/// });
/// fn assert_handler(_: &impl Handler) {}
/// assert_handler(&handler);
/// ```
pub struct PerThread<F> {
    factory: F,
    /// Keys this handler's instances in each thread's table.
    id: u64,
    /// Dropped with the last clone: tells threads that their instances can go.
    alive: Arc<()>,
}

/// One thread's instance of one `PerThread`, with the liveness token of its owner.
type Instance = (Weak<()>, Rc<dyn Any>);

thread_local! {
    /// This thread's instances, by `PerThread::id`.
    static INSTANCES: Instances = Instances::default();
}

/// A thread's table of instances. Its own `Drop` runs when the thread exits (a pool
/// thread's keep-alive ran out, the server stopped), where a panic that escapes a
/// thread-local's destructor aborts the whole process: each instance is dropped under
/// `catch_unwind` instead, and a panic logged.
#[derive(Default)]
struct Instances(RefCell<HashMap<u64, Instance>>);

impl Drop for Instances {
    fn drop(&mut self) {
        drop_instances(self.0.get_mut().drain().map(|(_, instance)| instance));
    }
}

/// Drops instances one by one, logging (not propagating) a panic in a `Drop`: no request
/// is to blame for it.
fn drop_instances(instances: impl IntoIterator<Item = Instance>) {
    for instance in instances {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(instance))) {
            let panic = panic_message(payload);
            tracing::error!(
                thread = %std::thread::current().name().unwrap_or("unnamed"),
                %panic,
                "a per-thread handler instance panicked while being dropped"
            );
        }
    }
}

impl<F, H, R> PerThread<F>
where
    F: Fn() -> H + Send + Sync + 'static,
    H: Fn(Request) -> R + 'static,
    R: IntoResponse,
{
    /// Wraps `factory`, which builds one handler per thread. Callable from anywhere; the
    /// factory does not run until the first request.
    pub fn new(factory: F) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        PerThread {
            factory,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
        }
    }

    /// This thread's instance, built now if it has none.
    fn instance(&self) -> Rc<H> {
        let existing =
            INSTANCES.with(|table| table.0.borrow().get(&self.id).map(|(_, i)| i.clone()));
        if let Some(instance) = existing {
            return instance
                .downcast::<H>()
                .expect("a PerThread id always maps to its own handler type");
        }
        // Built outside the table's borrow: the factory may itself use a `PerThread`.
        let built = Rc::new((self.factory)());
        tracing::debug!(
            thread = %std::thread::current().name().unwrap_or("unnamed"),
            "built a per-thread handler instance"
        );
        let dead = INSTANCES.with(|table| {
            let mut table = table.0.borrow_mut();
            table.insert(
                self.id,
                (Arc::downgrade(&self.alive), built.clone() as Rc<dyn Any>),
            );
            let dead: Vec<u64> = table
                .iter()
                .filter(|(_, (alive, _))| alive.strong_count() == 0)
                .map(|(id, _)| *id)
                .collect();
            dead.into_iter()
                .filter_map(|id| table.remove(&id))
                .collect::<Vec<_>>()
        });
        // Dropped after the borrow ends, in case an instance's `Drop` touches the table.
        drop_instances(dead);
        built
    }
}

impl<F, H, R> Handler for PerThread<F>
where
    F: Fn() -> H + Send + Sync + 'static,
    H: Fn(Request) -> R + 'static,
    R: IntoResponse,
{
    fn call(&self, request: Request) -> Response {
        (self.instance())(request).into_response()
    }
}

impl<F: Clone> Clone for PerThread<F> {
    /// A clone shares the instances: same factory, same threads' handlers.
    fn clone(&self) -> Self {
        PerThread {
            factory: self.factory.clone(),
            id: self.id,
            alive: self.alive.clone(),
        }
    }
}

impl<F> fmt::Debug for PerThread<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerThread")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A handler that runs every request, in arrival order, on one dedicated thread: for
/// state that must not be used from two threads at all, or only ever from the thread that
/// built it (an `Rc` graph, a thread-affine C library, one connection that must not be
/// duplicated).
///
/// # Trade-offs
///
/// - Throughput is one request at a time, whatever the pool's size: a slow request
///   delays every request behind it. Prefer [`PerThread`] when one instance per thread
///   is acceptable.
/// - Ordering: requests run in the order they reached the queue.
/// - Each queued request holds a pool thread while it waits; keep `queue_capacity` below
///   the pool's `max_threads` so that other handlers keep threads to run on.
/// - The queue is bounded ([`queue_capacity`](SingleThreadBuilder::queue_capacity)): a
///   request that finds it full, or waits in it longer than
///   [`queue_timeout`](SingleThreadBuilder::queue_timeout), is answered `503` with
///   `Retry-After`, and logged.
/// - A panic in the handler is logged and answered `500`; the thread and its instance
///   live on (the instance is not rebuilt, so keep it consistent across unwinding, as
///   `RefCell` and `Mutex` do).
/// - The thread lives as long as the handler (and its clones); dropping the last one lets
///   the thread finish the queued requests and exit.
/// - Inside the handler, [`ensure_sync`](crate::ensure_sync) works and reaches the
///   caller's runtime: the future runs there, not on the dedicated thread. But a call
///   that comes back to the dedicated thread from another thread while it waits (the
///   future's `ensure_async` closure calling the same `SingleThread`, or two
///   `SingleThread`s calling each other) is queued for a thread that waits for it: it
///   gets `503` when its `queue_timeout` ends, logged, and the wait ends there. Such a
///   call is not detected earlier, as asgiref does by carrying its thread across hops.
/// - A call made on the dedicated thread itself (the handler calling its own
///   `SingleThread`) runs there at once, re-entrantly, as asgiref runs a thread-sensitive
///   call made from its own thread: queued, it would wait for the very thread that waits
///   for it. A `RefCell` borrow held across such a call makes the inner one panic (a
///   logged `500`). To call itself the handler must keep a clone of its `SingleThread`,
///   and that clone keeps the thread alive for good: fine for a handler that lives as
///   long as the process.
///
/// # Where it may be called from
///
/// Serve it like any [`Handler`]; `call` blocks the calling thread (a pool thread) until
/// the dedicated thread answers. Called from async code (a `spawn_blocking` thread
/// included), where that wait would block the runtime, it answers `500` at once and logs
/// why (see its `call`, under "Trait Implementations").
///
/// # Examples
///
/// ```
/// use std::rc::Rc;
/// use std::cell::Cell;
/// use syncbridge::{Request, SingleThread};
///
/// let handler = SingleThread::spawn(|| {
///     let counter = Rc::new(Cell::new(0u64)); // neither Send nor Sync
///     move |_req: Request| {
///         counter.set(counter.get() + 1);
///         format!("request #{}", counter.get())
///     }
/// })?;
/// # let _ = handler;
/// # Ok::<(), syncbridge::Error>(())
/// ```
#[derive(Clone)]
pub struct SingleThread {
    inner: Arc<SingleInner>,
}

struct SingleInner {
    /// Tells the handler's own thread that a call is its own (see `OWN`).
    id: u64,
    /// Unbounded itself: `in_hand` bounds it. A bounded std channel would allocate all
    /// of its places up front, whatever the queue's size.
    calls: Sender<Call>,
    /// Calls the thread has been handed and not answered yet: the one it runs, and those
    /// queued behind it (abandoned ones too, until it reaches them).
    in_hand: Arc<AtomicUsize>,
    /// The most calls in hand: the queue's capacity, plus the one running.
    max_in_hand: usize,
    queue_timeout: Duration,
    name: String,
}

/// One request on its way to the dedicated thread.
struct Call {
    request: Request,
    reply: SyncSender<Response>,
    /// `PENDING` until the thread claims it or the waiting caller gives up.
    state: Arc<AtomicU8>,
    context: Option<Arc<Context>>,
    span: tracing::Span,
}

/// Tells each `SingleThread` from the others, for `OWN`.
static NEXT_SINGLE_ID: AtomicU64 = AtomicU64::new(0);

/// The handler a dedicated thread serves, under its `SingleInner::id`: set on that thread
/// only, so a call that finds its own id here comes from its own handler.
type OwnHandler = (u64, Rc<dyn Fn(Request) -> Response>);

thread_local! {
    static OWN: RefCell<Option<OwnHandler>> = const { RefCell::new(None) };
}

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const ABANDONED: u8 = 2;

impl SingleThread {
    /// Starts the dedicated thread, builds the handler on it with `factory`, and waits for
    /// the factory to return. Default limits: see [`SingleThreadBuilder`].
    ///
    /// Callable from any thread; it blocks until the factory returns, so in async code
    /// keep the factory quick or build the handler before the runtime starts.
    ///
    /// # Errors
    ///
    /// [`Error::is_runtime`] if the thread cannot be started; [`Error::is_panic`] if the
    /// factory panicked.
    pub fn spawn<F, H, R>(factory: F) -> Result<SingleThread>
    where
        F: FnOnce() -> H + Send + 'static,
        H: Fn(Request) -> R + 'static,
        R: IntoResponse,
    {
        Self::builder().spawn(factory)
    }

    /// A builder to set the queue's limits and the thread's name.
    pub fn builder() -> SingleThreadBuilder {
        SingleThreadBuilder {
            queue_capacity: 64,
            queue_timeout: Duration::from_secs(30),
            name: "syncbridge-single".to_owned(),
        }
    }
}

impl Handler for SingleThread {
    /// Queues the request for the thread and waits for its answer. Call it from a
    /// handler thread (the server and `SyncService` do) or a plain thread; from async
    /// code, where the wait would block the runtime, it answers `500` at once (logged).
    /// tokio's `spawn_blocking` threads count as async code here, as for `ensure_sync`
    /// (tokio enters the runtime on them): call it through `ensure_async` instead.
    fn call(&self, request: Request) -> Response {
        let inner = &*self.inner;
        let own = OWN.with(|own| match &*own.borrow() {
            Some((id, handler)) if *id == inner.id => Some(handler.clone()),
            _ => None,
        });
        if let Some(handler) = own {
            return serve_here(&*handler, request, &inner.name);
        }
        if Handle::try_current().is_ok() {
            tracing::error!(
                thread = %inner.name,
                method = %request.method(),
                path = %request.uri().path(),
                "single-thread handler called from async code, where waiting for its thread \
                 would block the runtime; answered 500 (serve it through the server or \
                 SyncService)"
            );
            return internal_error();
        }
        let (reply, replied) = mpsc::sync_channel(1);
        let state = Arc::new(AtomicU8::new(PENDING));
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let call = Call {
            request,
            reply,
            state: state.clone(),
            context: context::current(),
            span: tracing::Span::current(),
        };
        let room = inner
            .in_hand
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max_in_hand).then_some(n + 1)
            });
        let sent = match room {
            Ok(_) => inner.calls.send(call).map_err(|_| {
                inner.in_hand.fetch_sub(1, Ordering::AcqRel);
            }),
            Err(_) => {
                crate::metrics::refused(Refused::SingleThreadFull);
                static FULL: Throttle = Throttle::new();
                if let Some(left_out) = FULL.admit() {
                    tracing::warn!(
                        thread = %inner.name, %method, %path, left_out,
                        "single-thread handler queue is full; answered 503"
                    );
                }
                return service_unavailable();
            }
        };
        if sent.is_err() {
            crate::metrics::handler_failed(HandlerFailure::Error);
            tracing::error!(thread = %inner.name, %method, %path, "single-thread handler thread is gone; answered 500");
            return internal_error();
        }
        let response = match replied.recv_timeout(inner.queue_timeout) {
            Err(RecvTimeoutError::Timeout) => {
                if state
                    .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    crate::metrics::refused(Refused::SingleThreadTimeout);
                    static WAITED: Throttle = Throttle::new();
                    if let Some(left_out) = WAITED.admit() {
                        tracing::warn!(
                            thread = %inner.name, %method, %path, left_out,
                            "request waited too long for the single-thread handler; answered 503"
                        );
                    }
                    return service_unavailable();
                }
                // Claimed just in time: it runs now; wait for it like any running handler.
                replied.recv()
            }
            other => other.map_err(|_| mpsc::RecvError),
        };
        response.unwrap_or_else(|_| {
            crate::metrics::handler_failed(HandlerFailure::Error);
            tracing::error!(thread = %inner.name, %method, %path, "single-thread handler dropped the request; answered 500");
            internal_error()
        })
    }
}

impl fmt::Debug for SingleThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleThread")
            .field("thread", &self.inner.name)
            .field("queue_timeout", &self.inner.queue_timeout)
            .finish_non_exhaustive()
    }
}

/// Configures a [`SingleThread`] handler.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct SingleThreadBuilder {
    queue_capacity: usize,
    queue_timeout: Duration,
    name: String,
}

impl SingleThreadBuilder {
    /// How many requests may wait for the thread while it runs one; past that they are
    /// answered `503`. Default is 64. Zero means a request is taken only when the thread
    /// is idle.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// How long a request may wait for the thread before it is answered `503` instead.
    /// Default is 30 seconds, as the pool's queue timeout. The wait includes the hand-over
    /// to an idle thread (a wake-up: microseconds, milliseconds on a busy machine), so a
    /// timeout of a few milliseconds or less also refuses requests the thread would have
    /// taken at once.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// The dedicated thread's name. Default is `syncbridge-single`. NUL bytes, which an
    /// OS thread name cannot hold, are left out.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = crate::pool::thread_name(name.into());
        self
    }

    /// Starts the thread and builds the handler there; see [`SingleThread::spawn`].
    ///
    /// # Errors
    ///
    /// As [`SingleThread::spawn`].
    pub fn spawn<F, H, R>(self, factory: F) -> Result<SingleThread>
    where
        F: FnOnce() -> H + Send + 'static,
        H: Fn(Request) -> R + 'static,
        R: IntoResponse,
    {
        let (calls, queue) = mpsc::channel::<Call>();
        let in_hand = Arc::new(AtomicUsize::new(0));
        let answered = in_hand.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<std::result::Result<(), String>>(1);
        let name = self.name.clone();
        let id = NEXT_SINGLE_ID.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                let handler = match catch_unwind(AssertUnwindSafe(factory)) {
                    Ok(handler) => handler,
                    Err(payload) => {
                        let _ = ready_tx.send(Err(panic_message(payload)));
                        return;
                    }
                };
                let handler: Rc<dyn Fn(Request) -> Response> =
                    Rc::new(move |request| handler(request).into_response());
                OWN.with(|own| *own.borrow_mut() = Some((id, handler.clone())));
                let _ = ready_tx.send(Ok(()));
                // Ends when the last `SingleThread` clone drops the sender.
                while let Ok(call) = queue.recv() {
                    serve_one(&*handler, call, &name, &answered);
                }
                OWN.with(|own| own.borrow_mut().take());
                tracing::debug!(thread = %name, "single-thread handler stopped");
            })
            .map_err(|e| {
                Error::new(Kind::Runtime)
                    .with_message("could not start the single-thread handler's thread")
                    .with_source(e)
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(SingleThread {
                inner: Arc::new(SingleInner {
                    id,
                    calls,
                    in_hand,
                    max_in_hand: self.queue_capacity.saturating_add(1),
                    queue_timeout: self.queue_timeout,
                    name: self.name,
                }),
            }),
            Ok(Err(message)) => {
                tracing::error!(thread = %self.name, panic = %message, "single-thread handler factory panicked");
                Err(Error::new(Kind::Panicked).with_message(message))
            }
            Err(_) => Err(Error::new(Kind::Runtime)
                .with_message("the single-thread handler's thread exited before it was ready")),
        }
    }
}

/// Runs one call and answers it; `in_hand` counts it off before the answer goes, so
/// that its caller's next call finds the room this one leaves.
fn serve_one(handler: &dyn Fn(Request) -> Response, call: Call, name: &str, in_hand: &AtomicUsize) {
    let Call {
        request,
        reply,
        state,
        context,
        span,
    } = call;
    if state
        .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // The caller gave up (queue timeout) and has already answered 503.
        in_hand.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let outcome = span.in_scope(|| {
        context::enter(context.as_ref(), || {
            catch_unwind(AssertUnwindSafe(|| handler(request)))
        })
    });
    let response = outcome.unwrap_or_else(|payload| {
        crate::metrics::handler_failed(HandlerFailure::Panic);
        let panic = panic_message(payload);
        tracing::error!(
            thread = %name, %method, %path, %panic,
            "single-thread handler panicked; answered 500, thread kept"
        );
        internal_error()
    });
    in_hand.fetch_sub(1, Ordering::AcqRel);
    // The caller only leaves early before the claim, so it is still waiting.
    let _ = reply.send(response);
}

/// Runs a call the handler made to its own `SingleThread`, here on its thread, with the
/// context and span of the call it is part of.
fn serve_here(handler: &dyn Fn(Request) -> Response, request: Request, name: &str) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    catch_unwind(AssertUnwindSafe(|| handler(request))).unwrap_or_else(|payload| {
        crate::metrics::handler_failed(HandlerFailure::Panic);
        let panic = panic_message(payload);
        tracing::error!(
            thread = %name, %method, %path, %panic,
            "single-thread handler panicked in a call to itself; answered 500"
        );
        internal_error()
    })
}

fn service_unavailable() -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `panic_any` payload whose `Drop` panics in turn.
    struct PayloadPanicsOnDrop;

    impl Drop for PayloadPanicsOnDrop {
        fn drop(&mut self) {
            std::panic::resume_unwind(Box::new("the payload's drop panicked"));
        }
    }

    /// With no subscriber the panic's line is not written, and its fields are not
    /// evaluated: the payload must still be let go of under its guard, not after it.
    #[test]
    fn a_panic_payload_whose_drop_panics_is_contained_with_no_subscriber() {
        let handler = |_req: Request| -> Response {
            std::panic::resume_unwind(Box::new(PayloadPanicsOnDrop))
        };
        let response =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                serve_here(&handler, Request::new(crate::Body::empty()), "test")
            });
        assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    }
}
