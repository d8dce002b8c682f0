//! Streaming both ways with plain blocking code: hash an upload as it arrives through
//! `io::Read`, and send a file from disk through a reader, neither held whole in memory.
//!
//! ```text
//! cargo run --release --example streaming          # 127.0.0.1:8000, or $PORT
//! head -c 100000000 /dev/urandom | curl -sT - http://127.0.0.1:8000/sha256
//! curl -s http://127.0.0.1:8000/file -o /dev/null -w '%{size_download}\n'
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use syncbridge::http::{header, StatusCode};
use syncbridge::{IntoResponse, Request, Response, ResponseBody, Server};

/// Hashes the request body 64 KiB at a time: the handler pulls, the client is held back.
fn sha256(mut req: Request) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = req.body_mut().read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("{hex}  {total} bytes\n"))
}

/// Sends a file through a reader; the length is known, so it goes with Content-Length.
fn file(path: &PathBuf) -> io::Result<Response> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut response = Response::new(ResponseBody::from_reader(file));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, len.into());
    Ok(response)
}

/// A 32 MiB file to serve, written once at start-up.
fn make_file() -> io::Result<PathBuf> {
    let path =
        std::env::temp_dir().join(format!("syncbridge-streaming-{}.bin", std::process::id()));
    let mut out = io::BufWriter::new(File::create(&path)?);
    let block: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    for _ in 0..32 {
        out.write_all(&block)?;
    }
    out.flush()?;
    Ok(path)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".to_owned());
    // Bound first: a busy port must not leave a 32 MiB file behind. A download holds its
    // thread while it goes out: ten minutes at most, however slowly a client reads.
    let server = Server::try_bind(format!("127.0.0.1:{port}"))?
        .max_body_size(1 << 30)
        .stream_timeout(std::time::Duration::from_secs(600));
    let path = make_file()?;
    let served = path.clone();
    println!("serving on http://{}", server.local_addr());
    let result = server.serve(move |req: Request| -> io::Result<Response> {
        match (req.method().as_str(), req.uri().path()) {
            ("PUT" | "POST", "/sha256") => Ok(Response::new(sha256(req)?.into())),
            ("GET", "/file") => file(&served),
            _ => Ok((StatusCode::NOT_FOUND, "try PUT /sha256 or GET /file\n").into_response()),
        }
    });
    if let Err(err) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %err, "could not remove the served file");
    }
    Ok(result?)
}
