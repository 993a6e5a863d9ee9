//! Failures the chaos test found, each kept as a small deterministic test (the chaos run
//! is random; these are not).

mod common;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, channel, queue};
use amq_protocol::types::FieldTable;
use common::{Raw, Read};
use integration_tests::TestServer;

/// Crossed `channel.close`: the broker closes a channel (here a 404) while the client,
/// which has not seen that yet, closes it too. Each side answers the other's close with
/// `close-ok`; the broker must accept the client's `close-ok` for its own close (RabbitMQ
/// keeps such a channel "closing" until then) instead of closing the whole connection
/// with `504 CHANNEL_ERROR - expected 'channel.open'`, as Warren did when it forgot the
/// channel on the client's close.
#[tokio::test(flavor = "multi_thread")]
async fn a_crossed_channel_close_leaves_the_connection_open() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "no-such-queue".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "OK".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    // The broker's close (404) and its close-ok for ours, in either order; the broker's
    // close is answered.
    for _ in 0..2 {
        match raw.frame().await {
            AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(close))) => {
                assert_eq!(close.reply_code, 404, "{close:?}");
                raw.send_method(
                    1,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                )
                .await;
            }
            AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {}
            other => panic!("expected channel.close or close-ok on 1, got {other:?}"),
        }
    }
    // The connection still works: a new channel opens.
    raw.send_method(
        2,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    match raw.read().await {
        Read::Frame(AMQPFrame::Method(2, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))) => {}
        other => panic!("expected channel.open-ok on 2, got {other:?}"),
    }
}
