//! A TCP proxy on loopback in front of PostgreSQL, to make the server unreachable while it runs on:
//! - [`PgProxy::cut`] closes every connection and refuses new ones (a server that is down: errors come at once);
//!   [`PgProxy::restore`] listens again;
//! - [`PgProxy::partition`] forwards nothing any more but closes nothing: statements sent wait for an answer that
//!   never comes, new connections are accepted and never served (a network that drops packets); [`PgProxy::heal`]
//!   serves new connections again, while those of the partition stay silent for good (as after a failover or a
//!   NAT that forgot them: only a timeout of the client's ends them).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

pub struct PgProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    /// Bumped at each cut or partition: connections of an earlier generation stop.
    generation: Arc<AtomicU64>,
    /// Partitioned: new connections are held silent, and connections that stop are held rather than closed.
    silent: Arc<AtomicBool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Sockets held silent, closed when the proxy is dropped.
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl PgProxy {
    pub async fn start(upstream: SocketAddr) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = PgProxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            generation: Arc::default(),
            silent: Arc::default(),
            task: Mutex::new(None),
            held: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (g, silent, held, upstream) = (
            self.generation.clone(),
            self.silent.clone(),
            self.held.clone(),
            self.upstream,
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if silent.load(Ordering::SeqCst) {
                    held.lock().unwrap().push(client);
                    continue;
                }
                let (g, silent, held, born) = (
                    g.clone(),
                    silent.clone(),
                    held.clone(),
                    g.load(Ordering::SeqCst),
                );
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let pump = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let watch = async {
                        while g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = pump => return,
                        _ = watch => {}
                    }
                    if silent.load(Ordering::SeqCst) {
                        held.lock().unwrap().extend([client, server]);
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// The server is down: every connection closed, new ones refused.
    pub fn cut(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub async fn restore(&self) {
        // The aborted task drops its listener shortly; bind again until the port is free (bounded).
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                return self.serve(listener);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not listen on {} again", self.addr);
    }

    /// The network drops everything: nothing forwarded, nothing closed.
    pub fn partition(&self) {
        self.silent.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// New connections are served again; the partition's stay silent.
    pub fn heal(&self) {
        self.silent.store(false, Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.cut();
        self.held.lock().unwrap().clear();
    }
}
