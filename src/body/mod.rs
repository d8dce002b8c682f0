//! Bodies in both directions, and the bounded channel that carries them across the
//! sync/async line.
//!
//! ```text
//! request:  hyper Incoming --(async pump, in the service future)--> channel --> Body: io::Read
//! response: ResponseBody --(producer, on the handler thread)--> channel --> BridgeBody --> hyper
//! ```

mod bridge;
pub(crate) mod channel;
mod produce;
mod request;
mod response;

pub use bridge::BridgeBody;
pub(crate) use bridge::{Completion, OwnedLine, RequestLine};
pub(crate) use channel::{FaultProbe, MIN_PROGRESS};
pub(crate) use produce::{produce, Produced};
pub use request::Body;
pub use response::ResponseBody;
pub(crate) use response::{Producer, ResponseKind};

/// The most bytes in one chunk read from a response reader or written through a writer.
pub(crate) const CHUNK_SIZE: usize = 64 * 1024;

/// The most body bytes in flight in one direction of one request, plus one chunk: a
/// chunk goes in while fewer than this are queued, so up to 256 KiB − 1 plus one chunk
/// (≤ 64 KiB from a reader or writer, about 320 KiB in all), whatever the body's size.
pub(crate) const BYTES_IN_FLIGHT: usize = 256 * 1024;
