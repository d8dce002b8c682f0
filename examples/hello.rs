//! The smallest syncbridge server: one blocking handler on 127.0.0.1:8000 (or `$PORT`).
//!
//! ```text
//! cargo run --release --example hello
//! curl http://127.0.0.1:8000/
//! ```
//!
//! Set `RUST_LOG=syncbridge=debug` for more detail; the access log is at `info`.

use syncbridge::{Request, Server};

fn hello(req: Request) -> String {
    // An ordinary blocking function: it could query a sync database client here.
    format!("Hello, World! You asked for {}\n", req.uri().path())
}

fn main() -> syncbridge::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".to_owned());
    let server = Server::try_bind(format!("127.0.0.1:{port}"))?;
    println!("serving on http://{}", server.local_addr());
    server.serve(hello)
}
