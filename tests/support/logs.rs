//! A global subscriber that keeps what the crate logs, so tests can assert that nothing
//! fails silently. Every test server installs it (support's `init_tracing`); a test that
//! reads the lines without a server installs it itself. It prints what `RUST_LOG` asks
//! for, or the crate's warnings.

use std::fmt::Write as _;
use std::sync::{Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

struct Capture;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields(format!("{} ", event.metadata().level()));
        event.record(&mut fields);
        // The spans the event is in, outermost first, as `in {name field=value }`.
        for span in ctx
            .event_scope(event)
            .into_iter()
            .flat_map(|s| s.from_root())
        {
            if let Some(span_fields) = span.extensions().get::<Fields>() {
                let _ = write!(fields.0, "in {{{}}} ", span_fields.0);
            }
        }
        LINES.lock().unwrap().push(fields.0);
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(format!("{} ", attrs.metadata().name()));
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        let (Some(span), Some(follows)) = (ctx.span(span), ctx.span(follows)) else {
            return;
        };
        let describe = |s: &tracing_subscriber::registry::SpanRef<'_, S>| {
            s.extensions()
                .get::<Fields>()
                .map(|f| f.0.clone())
                .unwrap_or_default()
        };
        let line = format!("FOLLOWS {} <- {}", describe(&span), describe(&follows));
        LINES.lock().unwrap().push(line);
    }
}

pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let capture = Capture.with_filter(
            Targets::new()
                .with_target("syncbridge", Level::DEBUG)
                .with_target("tasks", Level::TRACE)
                .with_target("app", Level::TRACE),
        );
        let print = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| "syncbridge=warn".into()),
            );
        // A binary with a subscriber of its own (`mixing`) keeps it.
        let _ = tracing_subscriber::registry()
            .with(capture)
            .with(print)
            .try_init();
    });
}

/// Whether one captured line contains every part.
pub fn contains(parts: &[&str]) -> bool {
    LINES
        .lock()
        .unwrap()
        .iter()
        .any(|line| parts.iter().all(|p| line.contains(p)))
}

/// How many captured lines contain every part.
pub fn count(parts: &[&str]) -> usize {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|line| parts.iter().all(|p| line.contains(p)))
        .count()
}

/// Where the first captured line with every part is, in the order lines were logged.
pub fn position(parts: &[&str]) -> Option<usize> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .position(|line| parts.iter().all(|p| line.contains(p)))
}

/// Whether a line with every part is captured within [`super::STEP`]: for lines logged
/// by a thread the test has no other word from, after what it waits for.
pub async fn eventually_contains(parts: &[&str]) -> bool {
    let deadline = std::time::Instant::now() + super::STEP;
    while !contains(parts) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    true
}
