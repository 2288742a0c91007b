//! A minimal HTTP/1 client for the agent's unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error("cannot reach the agent at {path}: {source} (is `beeline agent` running on this node?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("agent request {uri} failed: {0}", uri = .1)]
    Http(hyper::Error, String),
    #[error("agent answered {status} for {uri}: {body}")]
    Status { status: u16, uri: String, body: String },
    #[error("cannot decode the agent's answer to {uri}: {source}")]
    Decode { uri: String, source: serde_json::Error },
}

/// `GET uri` on the agent socket, decoded from JSON.
pub async fn get_json<T: serde::de::DeserializeOwned>(socket: &Path, uri: &str) -> Result<T, AgentClientError> {
    request_json(socket, hyper::Method::GET, uri, None).await
}

async fn connect(
    socket: &Path,
    uri: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, AgentClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| AgentClientError::Connect { path: socket.to_path_buf(), source })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| AgentClientError::Http(e, uri.to_string()))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get_response(socket: &Path, uri: &str) -> Result<hyper::Response<hyper::body::Incoming>, AgentClientError> {
    let mut sender = connect(socket, uri).await?;
    let req = hyper::Request::builder()
        .uri(uri)
        .header(hyper::header::HOST, "beeline-agent")
        .body(Full::new(Bytes::new()))
        .expect("request parts are valid");
    let resp = sender.send_request(req).await.map_err(|e| AgentClientError::Http(e, uri.to_string()))?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body = String::from_utf8_lossy(&body).into_owned();
        return Err(AgentClientError::Status { status, uri: uri.to_string(), body });
    }
    Ok(resp)
}

/// `GET uri` on the agent socket, the body as text (newline-delimited JSON answers).
pub async fn get_text(socket: &Path, uri: &str) -> Result<String, AgentClientError> {
    let resp = get_response(socket, uri).await?;
    let body = resp.into_body().collect().await.map_err(|e| AgentClientError::Http(e, uri.to_string()))?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `GET uri` on a streaming answer: every complete line goes to `lines` as it arrives, until the
/// agent closes the stream or the receiver goes away.
pub async fn stream_lines(
    socket: &Path,
    uri: &str,
    lines: tokio::sync::mpsc::Sender<String>,
) -> Result<(), AgentClientError> {
    let mut body = get_response(socket, uri).await?.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| AgentClientError::Http(e, uri.to_string()))?;
        let Some(data) = frame.data_ref() else { continue };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            if !line.trim().is_empty() && lines.send(line).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// One request on the agent socket with an optional JSON body; a non-2xx answer is
/// [`AgentClientError::Status`] carrying the body (the agent's JSON error).
pub async fn request_json<T: serde::de::DeserializeOwned>(
    socket: &Path,
    method: hyper::Method,
    uri: &str,
    body: Option<Vec<u8>>,
) -> Result<T, AgentClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| AgentClientError::Connect { path: socket.to_path_buf(), source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| AgentClientError::Http(e, uri.to_string()))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(uri).header(hyper::header::HOST, "beeline-agent");
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("request parts are valid");
    let resp = sender.send_request(req).await.map_err(|e| AgentClientError::Http(e, uri.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| AgentClientError::Http(e, uri.to_string()))?.to_bytes();
    if !status.is_success() {
        return Err(AgentClientError::Status {
            status: status.as_u16(),
            uri: uri.to_string(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| AgentClientError::Decode { uri: uri.to_string(), source })
}
