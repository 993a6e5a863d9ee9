//! Races between a connection's opening and administration: what happens to a user
//! while its connection is being opened still reaches that connection.
//!
//! The broker runs in-process, its connection on an in-memory stream whose writer can
//! stall right after `connection.open-ok` has gone out: the client already holds the
//! open connection while the broker's task has not yet gone on to serve it, the moment a
//! busy machine can deschedule that task for.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use integration_tests::fuzz::Handshake;
use integration_tests::{temp_data_dir, wait_for};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use warren::broker::Broker;
use warren::shutdown::Shutdown;

/// Where a [`StallAfterOpenOk`] writer is.
#[derive(Default)]
struct Stall {
    /// Its write of `connection.open-ok` went out but is not yet reported done.
    stalled: bool,
    /// The test let it go on.
    released: bool,
    /// The connection task, to wake on release.
    waker: Option<Waker>,
}

/// A writer that passes `connection.open-ok` on at once but reports the write done only
/// once the test releases it, as if the broker's task were descheduled right after it.
struct StallAfterOpenOk {
    inner: tokio::io::WriteHalf<DuplexStream>,
    stall: Arc<Mutex<Stall>>,
}

/// Whether `buf` starts with a `connection.open-ok` frame (class 10, method 41).
fn is_open_ok(buf: &[u8]) -> bool {
    buf.len() >= 11 && buf[0] == 1 && buf[1..3] == [0, 0] && buf[7..11] == [0, 10, 0, 41]
}

impl AsyncWrite for StallAfterOpenOk {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if is_open_ok(buf) {
            let mut stall = self.stall.lock().unwrap_or_else(PoisonError::into_inner);
            if stall.released {
                // Written when it stalled: now reported.
                return Poll::Ready(Ok(buf.len()));
            }
            if !stall.stalled {
                drop(stall);
                let written = Pin::new(&mut self.inner).poll_write(cx, buf);
                assert!(
                    matches!(written, Poll::Ready(Ok(n)) if n == buf.len()),
                    "open-ok went out whole"
                );
                stall = self.stall.lock().unwrap_or_else(PoisonError::into_inner);
                stall.stalled = true;
            }
            stall.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A user deleted after its connection was told it is open, but before the broker's
/// task served it, still closes that connection with 320.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_while_its_connection_opens_closes_it() {
    let dir = temp_data_dir("open-race-user");
    let config = warren::Config {
        data_dir: dir.clone(),
        ..warren::Config::default()
    };
    let broker = Arc::new(Broker::open(Arc::new(config)).expect("open the broker"));
    let (_stopping_tx, stopping) = watch::channel(false);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (reader, writer) = tokio::io::split(server);
    let stall = Arc::new(Mutex::new(Stall::default()));
    let writer = StallAfterOpenOk {
        inner: writer,
        stall: stall.clone(),
    };
    let task = tokio::spawn(warren::connection::serve(
        reader,
        writer,
        ([127, 0, 0, 1], 40000).into(),
        broker.clone(),
        Shutdown::from(stopping),
        warren::connection::Transport::default(),
    ));
    let (mut from_broker, mut to_broker) = tokio::io::split(client);
    to_broker
        .write_all(&Handshake::default().encode())
        .await
        .expect("write the handshake");
    let is_stalled = || {
        let stalled = stall.lock().unwrap_or_else(PoisonError::into_inner).stalled;
        async move { stalled }
    };
    assert!(
        wait_for(Duration::from_secs(10), is_stalled).await,
        "the broker sent connection.open-ok"
    );

    broker.delete_user("guest").expect("delete guest");
    let waker = {
        let mut stall = stall.lock().unwrap_or_else(PoisonError::into_inner);
        stall.released = true;
        stall.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }

    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&seen);
            if text.contains("CONNECTION_FORCED - user 'guest' is deleted") {
                return true;
            }
            match from_broker.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the connection was not closed with 320; the broker wrote {:?}",
        String::from_utf8_lossy(&seen)
    );
    drop((from_broker, to_broker));
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the connection task ended")
        .expect("the connection task did not panic");
    let _ = std::fs::remove_dir_all(&dir);
}
