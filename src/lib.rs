#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
// The audited `unsafe` calls are all in `sys.rs`: std has no way to lower a thread's
// priority or set its scheduling policy.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod bridge;
mod context;
mod error;
mod handler;
mod long_poll;
mod metrics;
mod mixing;
mod offload;
mod pool;
mod server;
mod sys;
mod tasks;
mod throttle;
mod timer;

#[cfg(feature = "metrics")]
pub use crate::metrics::PoolGauges;
pub use body::{Body, BridgeBody, ResponseBody};
pub use bridge::{SyncService, SyncServiceBuilder, SyncServiceFuture};
pub use error::{Error, Result};
pub use handler::{Handler, IntoResponse, Request, Response};
pub use mixing::{
    ensure_async, ensure_async_on, ensure_sync, ensure_sync_with_handle, sync_fn,
    EnsureAsyncFuture, PerThread, SingleThread, SingleThreadBuilder,
};
pub use pool::{BlockingPool, BlockingPoolBuilder, PoolStats};
#[cfg(unix)]
pub use server::PeerCred;
pub use server::{
    ClientIp, ClientScheme, ForwardedHeaders, ListenAddr, ParseTrustedProxyError, RemoteAddr,
    Server, ShutdownHandle, TrustedProxy,
};
pub use tasks::{
    ParseTaskIdError, TaskBuilder, TaskContext, TaskHandle, TaskId, TaskInfo, TaskSet,
    TaskSetBuilder, TaskStatus,
};

pub use bytes;
pub use http;
