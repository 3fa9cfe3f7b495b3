//! A webhook receiver for the tests: a real HTTP server in the test process, on its own
//! ephemeral loopback port, that records every request and answers as told.
#![allow(dead_code)] // each test crate uses a different part of the harness

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

use super::WAIT;

/// How the receiver answers.
#[derive(Clone, Copy)]
pub enum Mode {
    Status(u16),
    /// Reads the request, then never answers.
    Hang,
}

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    /// The status the receiver answered with (`None`: it hung).
    pub answered: Option<u16>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<(Mode, Vec<Received>)>>,
}

impl Receiver {
    /// A receiver on a new ephemeral port.
    pub async fn start(mode: Mode) -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), mode)
    }

    pub fn start_on(listener: TcpListener, mode: Mode) -> Receiver {
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new((mode, Vec::new()))),
        };
        let state = receiver.state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().0 = mode;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().1.clone()
    }

    /// Waits until `done` holds for what was received.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + WAIT * 2;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not in time; received {received:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<(Mode, Vec<Received>)>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    // A server killed mid-request leaves a body that never ends: nothing was received.
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(Response::new(Full::new(Bytes::new())));
    };
    let mode = state.lock().unwrap().0;
    let answered = match mode {
        Mode::Status(status) => Some(status),
        Mode::Hang => None,
    };
    state.lock().unwrap().1.push(Received {
        id,
        timestamp,
        signature,
        body: String::from_utf8(body.to_vec()).unwrap(),
        answered,
    });
    match answered {
        Some(status) => Ok(Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .body(Full::new(Bytes::new()))
            .unwrap()),
        None => std::future::pending().await,
    }
}
