//! The Kubernetes edge: one kube-runtime watcher per kind (Pods and NetworkPolicies in all
//! namespaces, Namespaces as metadata only, Nodes), each event converted at once and the API
//! object dropped.
//!
//! There is deliberately no reflector store: the compiler holds the only copy of each object,
//! trimmed by [`Converter`] to what policy needs (shared label sets, interned strings), which
//! is what keeps 150 000 pods in tens of megabytes. The watcher's `Init` / `InitApply` /
//! `InitDone` sequence is passed on as [`Change::Relist`], upserts and [`Change::Synced`]: the
//! engine gates its first sync on every kind's first `Synced`, and after a relist forgets
//! objects the list no longer contained.
//!
//! An object that fails validation keeps its last valid version in the compiler (it is
//! reported as [`Change::Keep`], so a relist does not drop it) and is logged and counted
//! (`nftpol_invalid_objects_total`). A rejected NetworkPolicy also gets a Warning Event
//! (`NetworkPolicyRejected`, the message naming the field), once per `resourceVersion`.
//!
//! Watch errors are logged, counted and retried with kube-runtime's default backoff.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::engine::{Change, Input, Object, ObjectId, WatchEvent};
use super::events::EventReporter;
use super::metrics::{Metrics, ObjectKind};
use crate::core::cluster::ObjectKey;
use crate::core::convert::{ConvertError, Converter, DEFAULT_NAMESPACE};

/// How often the converter's string cache drops strings nobody uses any more.
const FORGET_INTERVAL: Duration = Duration::from_secs(600);

/// What the watchers share.
#[derive(Clone)]
pub struct WatchContext {
    pub client: kube::Client,
    pub converter: Arc<Mutex<Converter>>,
    pub engine: mpsc::Sender<Input>,
    pub metrics: Arc<Metrics>,
    pub events: EventReporter,
}

/// A kind the agent watches.
trait Watched: kube::Resource + Clone + std::fmt::Debug + Send + 'static {
    const KIND: ObjectKind;
    fn id(&self) -> Option<ObjectId>;
    fn convert(self, c: &mut Converter) -> Result<Object, ConvertError>;
}

fn namespaced_key(meta: &ObjectMeta) -> Option<ObjectKey> {
    let name = meta.name.as_deref()?;
    let ns = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    Some(ObjectKey::new(ns, name))
}

impl Watched for Pod {
    const KIND: ObjectKind = ObjectKind::Pod;
    fn id(&self) -> Option<ObjectId> {
        namespaced_key(&self.metadata).map(ObjectId::Pod)
    }
    fn convert(self, c: &mut Converter) -> Result<Object, ConvertError> {
        c.pod(&self).map(Object::Pod)
    }
}

impl Watched for NetworkPolicy {
    const KIND: ObjectKind = ObjectKind::Networkpolicy;
    fn id(&self) -> Option<ObjectId> {
        namespaced_key(&self.metadata).map(ObjectId::Policy)
    }
    fn convert(self, c: &mut Converter) -> Result<Object, ConvertError> {
        c.network_policy(&self).map(Object::Policy)
    }
}

impl Watched for Node {
    const KIND: ObjectKind = ObjectKind::Node;
    fn id(&self) -> Option<ObjectId> {
        self.metadata
            .name
            .as_deref()
            .map(|n| ObjectId::Node(n.into()))
    }
    fn convert(self, c: &mut Converter) -> Result<Object, ConvertError> {
        c.node(&self).map(Object::Node)
    }
}

impl Watched for PartialObjectMeta<Namespace> {
    const KIND: ObjectKind = ObjectKind::Namespace;
    fn id(&self) -> Option<ObjectId> {
        self.metadata
            .name
            .as_deref()
            .map(|n| ObjectId::Namespace(n.into()))
    }
    fn convert(self, c: &mut Converter) -> Result<Object, ConvertError> {
        let ns = Namespace {
            metadata: self.metadata,
            ..Namespace::default()
        };
        c.namespace(&ns).map(Object::Namespace)
    }
}

/// Starts the four watchers and the converter's cache trimming; abort the handles to stop.
pub fn spawn(ctx: WatchContext) -> Vec<JoinHandle<()>> {
    let c = &ctx.client;
    // Initial lists from the API server's watch cache (resourceVersion=0), as kubelet and
    // kube-proxy do: every node lists every pod, which must not all hit etcd.
    let cfg = || watcher::Config::default().any_semantic();
    let pods = watcher(Api::<Pod>::all(c.clone()), cfg()).default_backoff();
    let policies = watcher(Api::<NetworkPolicy>::all(c.clone()), cfg()).default_backoff();
    let nodes = watcher(Api::<Node>::all(c.clone()), cfg()).default_backoff();
    let namespaces =
        watcher(Api::<PartialObjectMeta<Namespace>>::all(c.clone()), cfg()).default_backoff();
    let trim = {
        let converter = ctx.converter.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FORGET_INTERVAL);
            every.tick().await;
            loop {
                every.tick().await;
                converter
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget_unused();
            }
        })
    };
    vec![
        tokio::spawn(drive(pods, ctx.clone())),
        tokio::spawn(drive(policies, ctx.clone())),
        tokio::spawn(drive(nodes, ctx.clone())),
        tokio::spawn(drive(namespaces, ctx)),
        trim,
    ]
}

/// Rejected NetworkPolicies: the resourceVersion last reported, and which policies ever had
/// a valid version.
#[derive(Default)]
struct Rejections {
    reported: HashMap<ObjectKey, String>,
    had_valid: HashSet<ObjectKey>,
}

async fn drive<K, S>(stream: S, ctx: WatchContext)
where
    K: Watched,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut rejections = Rejections::default();
    while let Some(item) = stream.next().await {
        let change = match item {
            Err(e) => {
                ctx.metrics.watch_error(K::KIND);
                tracing::warn!(kind = %K::KIND, error = %e, "watch failed; retrying with backoff");
                continue;
            }
            Ok(watcher::Event::Init) => Some(Change::Relist(K::KIND)),
            Ok(watcher::Event::InitDone) => {
                if K::KIND == ObjectKind::Pod {
                    ctx.converter
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .forget_unused();
                }
                Some(Change::Synced(K::KIND))
            }
            Ok(watcher::Event::Delete(obj)) => obj.id().map(|id| {
                if let ObjectId::Policy(k) = &id {
                    rejections.reported.remove(k);
                    rejections.had_valid.remove(k);
                    ctx.metrics
                        .rejected_policies
                        .set(rejections.reported.len() as i64);
                }
                Change::Delete(id)
            }),
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                on_object(obj, &ctx, &mut rejections)
            }
        };
        if let Some(change) = change
            && ctx
                .engine
                .send(Input::Watch(WatchEvent::now(change)))
                .await
                .is_err()
        {
            return;
        }
    }
}

fn on_object<K: Watched>(
    obj: K,
    ctx: &WatchContext,
    rejections: &mut Rejections,
) -> Option<Change> {
    let id = obj.id()?;
    let meta = (K::KIND == ObjectKind::Networkpolicy).then(|| obj.meta().clone());
    let converted = {
        let mut c = ctx.converter.lock().unwrap_or_else(PoisonError::into_inner);
        obj.convert(&mut c)
    };
    match converted {
        Ok(o) => {
            if let ObjectId::Policy(k) = &id {
                rejections.reported.remove(k);
                rejections.had_valid.insert(k.clone());
                ctx.metrics
                    .rejected_policies
                    .set(rejections.reported.len() as i64);
            }
            Some(Change::Upsert(o))
        }
        Err(e) => {
            ctx.metrics.invalid_object(K::KIND);
            match (&id, meta) {
                (ObjectId::Policy(k), Some(meta)) => {
                    let kept = rejections.had_valid.contains(k);
                    let rv = meta.resource_version.clone().unwrap_or_default();
                    if rejections.reported.get(k) != Some(&rv) {
                        rejections.reported.insert(k.clone(), rv);
                        let note = if kept {
                            format!("{e}; the last valid version stays in force")
                        } else {
                            format!("{e}; the policy is not enforced")
                        };
                        tracing::warn!(policy = %k, error = %e, kept, "NetworkPolicy rejected");
                        let events = ctx.events.clone();
                        tokio::spawn(async move { events.policy_rejected(&meta, &note).await });
                    }
                    ctx.metrics
                        .rejected_policies
                        .set(rejections.reported.len() as i64);
                }
                _ => tracing::warn!(
                    object = %id,
                    error = %e,
                    "invalid object ignored; its last valid version (if any) stays"
                ),
            }
            Some(Change::Keep(id))
        }
    }
}
