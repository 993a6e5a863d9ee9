//! The store under conditions users hit: definitions holding values JSON cannot spell
//! (issue 12, item 2: py-amqp sends NaN in queue arguments).

mod common;

use common::*;
use integration_tests::{TestServer, temp_data_dir, unique_name};
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

async fn declare_durable_with(channel: &Channel, queue: &str, arguments: FieldTable) {
    within(
        "durable queue.declare",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        ),
    )
    .await
    .expect("declare a durable queue");
}

/// A durable queue declared with a NaN argument, then a durable queue with 100 confirmed
/// persistent messages: after a clean restart both queues and all 100 messages are
/// there. (The definitions log used to write NaN as JSON `null`, could not read that
/// line back, stopped replaying there, and deleted the later queue's log as an orphan.)
#[tokio::test(flavor = "multi_thread")]
async fn a_nan_argument_does_not_lose_later_queues_across_a_restart() {
    let dir = temp_data_dir("nan-args");
    let server = TestServer::start_in(&dir).await;
    let odd = unique_name("odd");
    let queue = unique_name("after-odd");
    {
        let (_conn, channel) = open_confirm(&server).await;
        let mut arguments = FieldTable::default();
        arguments.insert("x-odd-nan".into(), AMQPValue::Double(f64::NAN));
        arguments.insert("x-odd-inf".into(), AMQPValue::Float(f32::NEG_INFINITY));
        declare_durable_with(&channel, &odd, arguments).await;
        declare_durable_with(&channel, &queue, FieldTable::default()).await;
        for i in 0..100 {
            let confirm = within("basic.publish", async {
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        format!("m{i}").as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await
            })
            .await
            .expect("publish");
            assert!(matches!(confirm, Confirmation::Ack(_)), "{confirm:?}");
        }
    }
    server.stop().await;
    let server = TestServer::start_in(&dir).await;
    let (conn, channel) = open(&server).await;
    assert!(
        queue_exists(&conn, &odd).await,
        "the queue with NaN survives"
    );
    assert!(
        queue_exists(&conn, &queue).await,
        "the later queue survives"
    );
    assert_eq!(message_count(&channel, &queue).await, 100);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
