//! Kubernetes Events for problems users must see with `kubectl describe`: a NetworkPolicy
//! the agent rejected, with the field at fault.
//!
//! Events are created directly as `events.k8s.io/v1` objects, one per rejected policy
//! version: kube-runtime's `Recorder` aggregates repeats of the same reason into a series
//! and would keep the first message, but each rejected version deserves its own message.
//! Deduplication (one Event per object and `resourceVersion`, across all nodes' agents only
//! by their own reporting instance) is the caller's job ([`super::watch`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use super::metrics::Metrics;

/// `reportingController` of our Events.
pub const REPORTING_CONTROLLER: &str = "nftpol.io/agent";
/// Reason of the Event for a NetworkPolicy that failed validation.
pub const REASON_POLICY_REJECTED: &str = "NetworkPolicyRejected";

/// Event notes are limited to 1 kB by the API server.
const NOTE_LIMIT: usize = 1024;

/// Publishes Events as this node's agent.
#[derive(Clone)]
pub struct EventReporter {
    client: kube::Client,
    instance: String,
    metrics: Arc<Metrics>,
}

impl EventReporter {
    pub fn new(client: kube::Client, node: &str, metrics: Arc<Metrics>) -> EventReporter {
        let mut instance = format!("nftpol-agent-{node}");
        instance.truncate(128);
        EventReporter {
            client,
            instance,
            metrics,
        }
    }

    /// A Warning Event on the NetworkPolicy `meta` describes.
    pub async fn policy_rejected(&self, meta: &ObjectMeta, note: &str) {
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let regarding = ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("NetworkPolicy".into()),
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            field_path: None,
        };
        let now = Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some("Warning".into()),
            reason: Some(REASON_POLICY_REJECTED.into()),
            action: Some("Validate".into()),
            note: Some(truncate(note, NOTE_LIMIT)),
            regarding: Some(regarding),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                self.metrics.events_published.inc();
            }
            Err(e) => {
                self.metrics.event_failures.inc();
                tracing::warn!(
                    policy = %format!("{namespace}/{name}"),
                    error = %e,
                    "cannot create the NetworkPolicyRejected event"
                );
            }
        }
    }
}

fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut end = limit - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let s = "é".repeat(600);
        let t = super::truncate(&s, 1024);
        assert!(t.len() <= 1024 && t.ends_with("..."), "{}", t.len());
        assert_eq!(super::truncate("short", 1024), "short");
    }
}
