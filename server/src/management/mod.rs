//! RabbitMQ's management HTTP API (`rabbitmq_management`), on port 15672: its paths,
//! JSON shapes, status codes and error bodies, over the broker's administration
//! operations ([`crate::admin`]), so that `rabbitmqadmin`, monitoring checks and the
//! tools built on the API work against Warren unchanged.
//! `docs/management-rabbitmq-facts.md` is what the shapes are checked against.
//!
//! - [`auth`]: Basic authentication and RabbitMQ's rules for which tag sees and does what.
//! - [`reply`]: error bodies and the JSON replies.
//! - [`listing`]: pagination, sorting, filtering and column selection of lists.
//! - [`access`]: users, vhosts, permissions, topic permissions and limits.
//! - [`health`]: `/api/health/checks/*` and `/api/aliveness-test`.
//! - [`definitions`]: `/api/definitions`, exported and imported.
//! - [`connections`]: open connections, channels and consumers.
//! - [`queues`], [`exchanges`], [`bindings`]: the topology, with [`messages`] published
//!   and peeked at over HTTP.
//! - [`rates`]: counters sampled every five seconds, and their rates.
//! - [`overview`]: `/api/overview`, `/api/whoami`, `/api/nodes`, `/api/extensions`.

pub mod access;
pub mod auth;
pub mod bindings;
pub mod body;
pub mod connections;
pub mod definitions;
pub mod exchanges;
pub mod health;
pub mod listing;
pub mod messages;
pub mod overview;
pub mod queues;
pub mod rates;
pub mod reply;
pub mod ui;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use axum::Router;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Broker;

/// What every handler is given: the broker, while it runs, and the rates sampled.
#[derive(Clone)]
pub struct Api {
    broker: Weak<Broker>,
    rates: Arc<RwLock<rates::Rates>>,
}

impl Api {
    /// The broker; None once it is shutting down.
    pub fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.upgrade()
    }
}

/// The API's routes, showing the rates in `rates`.
pub fn router(broker: Weak<Broker>, rates: Arc<RwLock<rates::Rates>>) -> Router {
    Router::new()
        .merge(overview::routes())
        .merge(access::routes())
        .merge(health::routes())
        .merge(definitions::routes())
        .merge(queues::routes())
        .merge(exchanges::routes())
        .merge(bindings::routes())
        .merge(connections::routes())
        .merge(ui::routes())
        .fallback(reply::not_found)
        .with_state(Api { broker, rates })
}

/// Serves the API on `listener`, showing the rates in `rates`, until `stopping` turns
/// true.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: TcpListener,
    broker: Weak<Broker>,
    rates: Arc<RwLock<rates::Rates>>,
    mut stopping: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router(broker, rates).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        })
        .await
}
