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

/// A broker in `dir` with one connection opened as guest (`pipelined` written right
/// behind `connection.open`), its task stalled right after open-ok went out: the
/// broker, the connection task, the client's ends and the stall to release.
async fn stalled_after_open(
    dir: &std::path::Path,
    pipelined: &[u8],
) -> (
    Arc<Broker>,
    tokio::task::JoinHandle<()>,
    tokio::io::ReadHalf<DuplexStream>,
    tokio::io::WriteHalf<DuplexStream>,
    Arc<Mutex<Stall>>,
) {
    let config = warren::Config {
        data_dir: dir.to_path_buf(),
        ..warren::Config::default()
    };
    let broker = Arc::new(Broker::open(Arc::new(config)).expect("open the broker"));
    let (stopping_tx, stopping) = watch::channel(false);
    // Never stopped: the broker is dropped with the test.
    std::mem::forget(stopping_tx);
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
    let (from_broker, mut to_broker) = tokio::io::split(client);
    let mut handshake = Handshake::default().encode();
    handshake.extend_from_slice(pipelined);
    to_broker
        .write_all(&handshake)
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
    (broker, task, from_broker, to_broker, stall)
}

/// Lets the stalled connection task go on.
fn release(stall: &Mutex<Stall>) {
    let waker = {
        let mut stall = stall.lock().unwrap_or_else(PoisonError::into_inner);
        stall.released = true;
        stall.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Reads what the broker writes until it holds `text` (true) or the stream ends or 10 s
/// pass (false, with what was read).
async fn wait_for_text(
    from_broker: &mut tokio::io::ReadHalf<DuplexStream>,
    text: &str,
) -> Result<(), String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            if String::from_utf8_lossy(&seen).contains(text) {
                return true;
            }
            match from_broker.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    match found {
        Ok(true) => Ok(()),
        _ => Err(String::from_utf8_lossy(&seen).into_owned()),
    }
}

/// Deletes guest and makes it again, with every right in `/`: another user of the
/// same name.
fn delete_and_make_guest_again(broker: &Broker) {
    broker.delete_user("guest").expect("delete guest");
    broker
        .add_user("guest", "guest", vec!["administrator".into()])
        .expect("make guest again");
    broker
        .set_permissions(warren::store::definitions::PermissionDef {
            user: "guest".into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        })
        .expect("its permissions");
}

/// Waits (bounded) for the connection task to end, without a panic.
async fn ends(task: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the connection task ended")
        .expect("the connection task did not panic");
}

/// A user deleted after its connection was told it is open, but before the broker's
/// task served it, still closes that connection with 320.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_while_its_connection_opens_closes_it() {
    let dir = temp_data_dir("open-race-user");
    let (broker, task, mut from_broker, to_broker, stall) = stalled_after_open(&dir, &[]).await;
    broker.delete_user("guest").expect("delete guest");
    release(&stall);
    if let Err(seen) = wait_for_text(
        &mut from_broker,
        "CONNECTION_FORCED - user 'guest' is deleted",
    )
    .await
    {
        panic!("the connection was not closed with 320; the broker wrote {seen:?}");
    }
    drop((from_broker, to_broker));
    ends(task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user deleted and made again under the same name is another user: the first one's
/// connection closes with 320 all the same, as RabbitMQ closes it at the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_and_made_again_still_loses_its_connection() {
    let dir = temp_data_dir("open-race-user-again");
    let (broker, task, mut from_broker, to_broker, stall) = stalled_after_open(&dir, &[]).await;
    delete_and_make_guest_again(&broker);
    release(&stall);
    if let Err(seen) = wait_for_text(
        &mut from_broker,
        "CONNECTION_FORCED - user 'guest' is deleted",
    )
    .await
    {
        panic!("the first guest's connection stayed open; the broker wrote {seen:?}");
    }
    drop((from_broker, to_broker));
    ends(task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Methods pipelined behind `connection.open` run before the connection first looks at
/// its user; if that user was deleted and made again meanwhile, they run with no rights
/// (the new user's are not the connection's): the declare is refused, never done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_pipelined_behind_open_never_get_a_new_users_rights() {
    use amqp_codec::amq_protocol::protocol::{AMQPClass, channel, queue};
    let dir = temp_data_dir("open-race-pipelined");
    let mut pipelined = bytes::BytesMut::new();
    amqp_codec::encode::method(
        &mut pipelined,
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    amqp_codec::encode::method(
        &mut pipelined,
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "pipelined".into(),
            ..Default::default()
        })),
    );
    let (broker, task, mut from_broker, to_broker, stall) =
        stalled_after_open(&dir, &pipelined).await;
    delete_and_make_guest_again(&broker);
    release(&stall);
    if let Err(seen) = wait_for_text(
        &mut from_broker,
        "CONNECTION_FORCED - user 'guest' is deleted",
    )
    .await
    {
        panic!("the first guest's connection stayed open; the broker wrote {seen:?}");
    }
    let vhost = broker.vhost("/").expect("the default vhost");
    assert!(
        vhost.queue("pipelined", 1).is_err(),
        "the pipelined declare ran with the new user's rights"
    );
    drop((from_broker, to_broker));
    ends(task).await;
    let _ = std::fs::remove_dir_all(&dir);
}
