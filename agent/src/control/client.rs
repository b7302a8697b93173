//! The CLI's side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::proto::{Request, Response};

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens there.
    #[error(
        "cannot reach the agent at {path}: {source} (is `portcullis agent` running? see `systemctl status portcullis`)"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    /// The agent answered something unreadable.
    #[error("unreadable answer from the agent: {0}")]
    Decode(#[from] serde_json::Error),
}

/// One connection to the agent; requests are answered in order.
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the control socket.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.into(),
            source,
        })?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self {
            writer: stream,
            reader,
        })
    }

    /// Gives up on an answer after `limit` (for callers that must not hang on a wedged agent).
    pub fn set_timeout(&mut self, limit: std::time::Duration) -> Result<(), ClientError> {
        self.writer.set_read_timeout(Some(limit))?;
        self.writer.set_write_timeout(Some(limit))?;
        Ok(())
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req)?;
        self.receive()
    }

    /// Sends one request without waiting: the agent reads one request ahead, so a caller
    /// with many (import batches) keeps it busy by sending the next before
    /// [`Client::receive`]ing the last answer.
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// The next line of a stream (`Request::Events`); `None` when the agent hangs up.
    pub fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line))
    }

    /// The answer to the oldest request not yet answered.
    pub fn receive(&mut self) -> Result<Response, ClientError> {
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "agent closed the connection",
            )));
        }
        Ok(serde_json::from_str(&answer)?)
    }
}
