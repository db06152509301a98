//! Log lines to stderr in batches: request threads append each formatted line to a buffer in
//! memory, and one thread writes the buffer out every [`FLUSH_EVERY`] or as soon as it holds
//! [`FLUSH_AT`]. A write to stderr (or a hand-off to a writer thread woken for every line) per
//! request's line cost a local server a quarter of its `/me` throughput (docs/benchmarks.md);
//! batched, it is a memory copy. Nothing is dropped: a buffer that the writer cannot empty fast
//! enough makes the request threads write it out themselves, and the guard writes out the rest
//! when the process ends.

use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Longest a line waits in memory before it reaches stderr.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this full is written out at once instead of waiting for the next tick.
pub const FLUSH_AT: usize = 64 * 1024;
/// A buffer this full is written out by the thread that finds it so, before its own line.
const BACKPRESSURE_AT: usize = 4 * 1024 * 1024;

/// Fields written as `name=value` and the message bare, as the default formatter writes them
/// without colours, for less: it styles every field name even with colours off, which was 2% of
/// a `/me` request's CPU (docs/benchmarks.md).
#[must_use]
pub fn plain_fields() -> impl for<'writer> FormatFields<'writer> + Send + Sync + 'static {
    fn field(writer: &mut Writer<'_>, field: &Field, value: &dyn std::fmt::Debug) -> std::fmt::Result {
        if field.name() == "message" {
            write!(writer, "{value:?}")
        } else {
            write!(writer, "{}={value:?}", field.name())
        }
    }
    tracing_subscriber::fmt::format::debug_fn(field).delimited(" ")
}

/// Where batches go: stderr, or a test's buffer.
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Taken while `state` is still held and kept while writing, so that batches reach the sink
    /// in the order they left the buffer, whichever thread writes them.
    sink: Mutex<Sink>,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sink(&self) -> MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the subscriber's lines go (`tracing_subscriber`'s `MakeWriter`); cheap to clone.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BatchedStderr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedStderr").finish_non_exhaustive()
    }
}

/// Writes out what is still buffered and stops the writer thread when dropped.
#[must_use = "buffered lines are lost unless the guard lives until the end"]
pub struct FlushGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FlushGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushGuard").finish_non_exhaustive()
    }
}

impl BatchedStderr {
    /// The writer and the guard that must outlive every line; starts the writer thread.
    pub fn start() -> std::io::Result<(Self, FlushGuard)> {
        Self::start_to(|bytes| {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(bytes);
            let _ = stderr.flush();
        })
    }

    /// [`start`](Self::start) with another destination, for tests.
    fn start_to(sink: impl Fn(&[u8]) + Send + Sync + 'static) -> std::io::Result<(Self, FlushGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            sink: Mutex::new(Box::new(sink)),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new().name("log-writer".into()).spawn(move || {
                loop {
                    let mut state = shared.lock();
                    if state.buffer.len() < FLUSH_AT && !state.closing {
                        state = shared
                            .wake
                            .wait_timeout(state, FLUSH_EVERY)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    let closing = state.closing;
                    let batch = std::mem::take(&mut state.buffer);
                    let sink = shared.sink();
                    drop(state);
                    if !batch.is_empty() {
                        sink(&batch);
                    }
                    drop(sink);
                    if closing {
                        return;
                    }
                }
            })?
        };
        let writer_side = Self { shared: Arc::clone(&shared) };
        Ok((writer_side, FlushGuard { shared, writer: Some(writer) }))
    }

    fn append(&self, bytes: &[u8]) {
        let mut state = self.shared.lock();
        if state.buffer.len() >= BACKPRESSURE_AT {
            // The writer has fallen far behind: this thread writes the backlog, holding the
            // lock so that lines keep their order, and everyone logging waits meanwhile.
            (self.shared.sink())(&state.buffer);
            state.buffer.clear();
        }
        state.buffer.extend_from_slice(bytes);
        if state.buffer.len() >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// One event's line on its way into the buffer. The subscriber formats a whole line first and
/// hands it over in one write, so lines from different threads never interleave.
#[derive(Debug)]
pub struct LineWriter<'a>(&'a BatchedStderr);

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

/// What a test's subscriber writes, kept in memory.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::time::Instant;

    use super::*;

    /// As the subscriber writes: a whole line at once.
    fn line(writer: &BatchedStderr, text: &str) {
        LineWriter(writer).write_all(format!("{text}\n").as_bytes()).unwrap();
    }

    fn collecting() -> (BatchedStderr, FlushGuard, Arc<Mutex<Vec<u8>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink_out = Arc::clone(&out);
        let (writer, guard) =
            BatchedStderr::start_to(move |bytes| sink_out.lock().unwrap().extend_from_slice(bytes)).unwrap();
        (writer, guard, out)
    }

    /// The lines a subscriber (without time, colours or thread names) writes for a few events of
    /// every kind of field inside a span.
    fn lines_written_by(
        build: impl FnOnce(
            tracing_subscriber::fmt::SubscriberBuilder<
                tracing_subscriber::fmt::format::DefaultFields,
                tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>,
                tracing::level_filters::LevelFilter,
                tracing_subscriber::fmt::writer::BoxMakeWriter,
            >,
        ) -> Box<dyn tracing::Subscriber + Send + Sync>,
    ) -> String {
        #[derive(Debug)]
        struct Cause;
        let out = Captured::default();
        let to = out.clone();
        let subscriber = build(
            tracing_subscriber::fmt()
                .without_time()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || to.clone())),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", id = %"0a1b-2c");
            span.in_scope(|| {
                tracing::info!(method = %"GET", path = %"/api/v1/me", status = 200_u16, latency_ms = 3_u64, "handled");
                tracing::warn!(code = "rate_limited", error = ?Cause, quote = "say \"hi\"", "request refused");
            });
            tracing::info!(ok = true, "shutting down");
        });
        out.text()
    }

    #[test]
    fn plain_fields_write_what_the_default_formatter_writes_without_colours() {
        let default = lines_written_by(|b| Box::new(b.finish()));
        let plain = lines_written_by(|b| Box::new(b.fmt_fields(plain_fields()).finish()));
        assert!(
            default.contains(r#"request{id=0a1b-2c}: "#) && default.contains(r#"quote="say \"hi\"""#),
            "{default}"
        );
        assert_eq!(plain, default);
    }

    #[test]
    fn every_line_arrives_in_order_soon_and_the_guard_writes_out_the_rest() {
        let (writer, guard, out) = collecting();
        line(&writer, "first");
        let deadline = Instant::now() + FLUSH_EVERY * 20;
        while out.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "a line waited more than 20 ticks");
            std::thread::sleep(FLUSH_EVERY / 5);
        }
        for i in 0..10_000 {
            line(&writer, &format!("line {i}"));
        }
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let expected: Vec<String> =
            std::iter::once("first".to_owned()).chain((0..10_000).map(|i| format!("line {i}"))).collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    }

    /// A writer far behind (a sink that takes its time) makes the logging thread write the
    /// backlog itself, after the batch already on its way: every line, in order.
    #[test]
    fn a_slow_sink_applies_backpressure_and_keeps_the_order() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink_out = Arc::clone(&out);
        let first = std::sync::atomic::AtomicBool::new(true);
        let (writer, guard) = BatchedStderr::start_to(move |bytes| {
            // The first batch takes long enough for the rest to pile up past the bound.
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(2));
            }
            sink_out.lock().unwrap().extend_from_slice(bytes);
        })
        .unwrap();
        let lines = 2 * BACKPRESSURE_AT / 20;
        for i in 0..lines {
            line(&writer, &format!("{i:019}"));
        }
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let numbers: Vec<usize> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(numbers, (0..lines).collect::<Vec<_>>());
    }

    #[test]
    fn many_threads_lose_no_line() {
        let (writer, guard, out) = collecting();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        line(&writer, &format!("{t}:{i}"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 20_000, "every line once");
    }
}
