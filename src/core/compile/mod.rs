//! The compiler: cluster objects in, this node's desired nftables table out, incrementally.
//!
//! [`Compiler`] keeps the cluster (trimmed objects plus indexes) and, for every *local* pod
//! that a policy isolates, the piece of the table that pod owns: its chains and its elements in
//! the dispatch and allow maps. Object changes only mark pods and peer groups dirty;
//! [`Compiler::commit`] recomputes just those pods and returns the net [`Transaction`] from the
//! previous desired table to the new one. A full build is the same code with every local pod
//! dirty, so the incremental and the full path cannot disagree.
//!
//! The table layout (dispatch maps, flattened allow maps, per-rule chains, shared sets for big
//! peer groups) is described in ARCHITECTURE.md and built by [`layout`].

pub mod layout;
mod output;
pub mod ranges;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rustc_hash::{FxHashMap, FxHashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::core::cluster::{Labels, NAMESPACE_NAME_LABEL, Namespace, Node, ObjectKey, Pod, Str};
use crate::core::policy::{IpBlock, Namespaces, NetworkPolicy};
use crate::core::selector::Selector;
use crate::nft::model::{Chain, Key, Name, Set, Table, Verdict};
use crate::nft::transaction::Transaction;

use output::{PodOutput, SharedSpec};

/// Default table name.
pub const DEFAULT_TABLE: &str = "nftpol";

/// A peer group with more pod IPs than this is kept as one shared named set instead of being
/// flattened into every using pod's map elements.
pub const DEFAULT_INLINE_PEER_LIMIT: usize = 256;

/// What the compiler needs to know about the node it compiles for.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node whose pods are enforced (`spec.nodeName`).
    pub node: Str,
    /// Name of the inet table.
    pub table: String,
    /// See [`DEFAULT_INLINE_PEER_LIMIT`].
    pub inline_peer_limit: usize,
}

impl Config {
    pub fn new(node: impl Into<Str>) -> Self {
        Config {
            node: node.into(),
            table: DEFAULT_TABLE.to_string(),
            inline_peer_limit: DEFAULT_INLINE_PEER_LIMIT,
        }
    }

    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }
}

/// What the CNI plugin reported about a local pod's network attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAttachment {
    /// The pod's host-side interface (its veth peer on the node), for anti-spoofing.
    pub host_interface: Option<String>,
    /// The pod's addresses as the interface plugin assigned them. Used until the API server
    /// reports `status.podIPs` (which the kubelet sets only after CNI ADD returns).
    pub ips: Vec<IpAddr>,
}

/// What a local pod owns in the table: its chains and its set and map elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObjects {
    pub chains: Vec<Name>,
    pub elements: Vec<(Name, Key)>,
}

/// A set of pods that a policy peer names, resolved against the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupKey {
    /// Pods matching a pod selector in the named or matching namespaces.
    Pods {
        namespaces: Namespaces,
        pods: Selector,
    },
    /// Pods with an IP inside an ipBlock (to resolve egress named ports against them).
    Block(IpBlock),
}

impl GroupKey {
    /// Every policy-relevant pod of the cluster.
    pub fn all_pods() -> GroupKey {
        GroupKey::Pods {
            namespaces: Namespaces::Matching(Selector::everything()),
            pods: Selector::everything(),
        }
    }

    fn describe(&self) -> String {
        match self {
            GroupKey::Pods {
                namespaces: Namespaces::Named(ns),
                pods,
            } => format!("pods {pods} in namespace {ns}"),
            GroupKey::Pods {
                namespaces: Namespaces::Matching(sel),
                pods,
            } => format!("pods {pods} in namespaces {sel}"),
            GroupKey::Block(b) => {
                let mut s = format!("pods in {}", b.cidr);
                for e in &b.except {
                    s.push_str(&format!(" except {e}"));
                }
                s
            }
        }
    }
}

#[derive(Debug, Default)]
struct Group {
    members: BTreeSet<ObjectKey>,
    /// Local pods whose output uses this group.
    users: BTreeSet<ObjectKey>,
    /// Whether the group is kept as shared sets (decided at the last commit).
    big: bool,
}

/// Counts for logs, metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub namespaces: usize,
    pub pods: usize,
    pub nodes: usize,
    pub policies: usize,
    /// Local pods isolated in at least one direction.
    pub isolated_pods: usize,
    pub peer_groups: usize,
    pub elements: usize,
    pub rules: usize,
    pub chains: usize,
    pub sets: usize,
}

/// The incremental compiler of one node's table. See the module docs.
pub struct Compiler {
    cfg: Config,
    namespaces: FxHashMap<Str, Namespace>,
    nodes: BTreeMap<Str, Node>,
    /// Boxed: a bucket of the (57-100% full) table then costs 40 bytes, not 152, which
    /// saves ~10 MB at 150 000 pods and halves the transient double table of a resize.
    pods: FxHashMap<ObjectKey, Box<Pod>>,
    /// Pod names by namespace, for namespace-scoped selectors.
    pods_by_ns: FxHashMap<Str, FxHashSet<Str>>,
    /// Names of this node's pods by namespace: the pods a policy change can touch.
    local_pods_by_ns: FxHashMap<Str, BTreeSet<Str>>,
    policies: FxHashMap<ObjectKey, Arc<NetworkPolicy>>,
    /// Policy names by namespace, sorted: the order in which rules rank.
    policies_by_ns: FxHashMap<Str, BTreeSet<Str>>,
    /// Every relevant pod claiming an IP; the owner is chosen by [`Compiler::owner_of`].
    ip_claims: FxHashMap<IpAddr, Claims>,
    groups: FxHashMap<GroupKey, Group>,
    /// Output of every local isolated pod, as of the last commit.
    outputs: BTreeMap<ObjectKey, PodOutput>,
    /// Reference counts of per-rule chains and shared sets, as of the last commit.
    rule_chain_refs: BTreeMap<Name, usize>,
    shared_set_refs: BTreeMap<Name, (SharedSpec, usize)>,
    /// The desired table as of the last commit; `None` before the first.
    table: Option<Table>,
    dirty_pods: BTreeSet<ObjectKey>,
    dirty_groups: BTreeSet<GroupKey>,
    /// CNI attachments of local pods.
    attachments: HashMap<ObjectKey, LocalAttachment>,
    /// Pods whose stored IPs come from their attachment (the API had none yet).
    filled_from_attachment: HashSet<ObjectKey>,
    /// The local Node (its pod ranges) changed since the last commit.
    node_dirty: bool,
}

impl Compiler {
    pub fn new(cfg: Config) -> Self {
        Compiler {
            cfg,
            namespaces: FxHashMap::default(),
            nodes: BTreeMap::new(),
            pods: FxHashMap::default(),
            pods_by_ns: FxHashMap::default(),
            local_pods_by_ns: FxHashMap::default(),
            policies: FxHashMap::default(),
            policies_by_ns: FxHashMap::default(),
            ip_claims: FxHashMap::default(),
            groups: FxHashMap::default(),
            outputs: BTreeMap::new(),
            rule_chain_refs: BTreeMap::new(),
            shared_set_refs: BTreeMap::new(),
            table: None,
            dirty_pods: BTreeSet::new(),
            dirty_groups: BTreeSet::new(),
            attachments: HashMap::new(),
            filled_from_attachment: HashSet::new(),
            node_dirty: false,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The desired table as of the last [`commit`](Self::commit) (`None` before the first).
    pub fn table(&self) -> Option<&Table> {
        self.table.as_ref()
    }

    /// Whether changes are waiting for a commit.
    pub fn has_pending(&self) -> bool {
        self.table.is_none()
            || self.node_dirty
            || !self.dirty_pods.is_empty()
            || !self.dirty_groups.is_empty()
    }

    pub fn pod(&self, key: &ObjectKey) -> Option<&Pod> {
        self.pods.get(key).map(|p| &**p)
    }

    /// Number of pods known (local or not).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Keys of every pod known.
    pub fn pod_keys(&self) -> impl Iterator<Item = &ObjectKey> + '_ {
        self.pods.keys()
    }

    pub fn stats(&self) -> Stats {
        let (elements, rules, chains, sets) = self.table.as_ref().map_or((0, 0, 0, 0), |t| {
            (
                t.element_count(),
                t.rule_count(),
                t.chains.len(),
                t.sets.len(),
            )
        });
        Stats {
            namespaces: self.namespaces.len(),
            pods: self.pods.len(),
            nodes: self.nodes.len(),
            policies: self.policies.len(),
            isolated_pods: self.outputs.len(),
            peer_groups: self.groups.len(),
            elements,
            rules,
            chains,
            sets,
        }
    }

    /// Namespaced chain names of a local pod, if it is isolated (for CNI CHECK and tests).
    pub fn pod_chains(&self, key: &ObjectKey) -> Vec<Name> {
        self.outputs
            .get(key)
            .map(|o| o.chains.keys().cloned().collect())
            .unwrap_or_default()
    }

    // ----- object changes -------------------------------------------------------------

    pub fn upsert_namespace(&mut self, ns: Namespace) {
        let old = self.ns_labels(&ns.name);
        let name = ns.name.clone();
        self.namespaces.insert(name.clone(), ns);
        self.namespace_labels_changed(&name, &old);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        let old = self.ns_labels(name);
        if let Some(ns) = self.namespaces.remove(name) {
            self.namespace_labels_changed(&ns.name, &old);
        }
    }

    pub fn upsert_node(&mut self, node: Node) {
        if *node.name == *self.cfg.node
            && self.nodes.get(&node.name).map(|n| &n.pod_cidrs) != Some(&node.pod_cidrs)
        {
            self.node_dirty = true;
        }
        self.nodes.insert(node.name.clone(), node);
    }

    pub fn remove_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() && name == &*self.cfg.node {
            self.node_dirty = true;
        }
    }

    /// Records a local pod's CNI attachment (host interface and addresses).
    pub fn upsert_attachment(&mut self, key: ObjectKey, attachment: LocalAttachment) {
        if self.attachments.get(&key) == Some(&attachment) {
            return;
        }
        self.attachments.insert(key.clone(), attachment);
        self.refresh_attachment(&key);
    }

    /// Forgets a local pod's CNI attachment.
    pub fn remove_attachment(&mut self, key: &ObjectKey) {
        if self.attachments.remove(key).is_some() {
            self.refresh_attachment(key);
        }
    }

    pub fn attachment(&self, key: &ObjectKey) -> Option<&LocalAttachment> {
        self.attachments.get(key)
    }

    pub fn attachments(&self) -> impl Iterator<Item = (&ObjectKey, &LocalAttachment)> {
        self.attachments.iter()
    }

    fn refresh_attachment(&mut self, key: &ObjectKey) {
        if let Some(stored) = self.pods.get(key) {
            let mut api = Pod::clone(stored);
            if self.filled_from_attachment.contains(key) {
                api.ips.clear();
            }
            self.upsert_pod(api);
        }
        self.dirty_pods.insert(key.clone());
    }

    /// Chains and elements the kernel must hold for a local pod (for CNI CHECK).
    pub fn expected_objects(&self, key: &ObjectKey) -> Option<PodObjects> {
        let o = self.outputs.get(key)?;
        Some(PodObjects {
            chains: o.chains.keys().cloned().collect(),
            elements: o
                .elements
                .iter()
                .flat_map(|(set, e)| e.keys().map(move |k| (set.clone(), k.clone())))
                .collect(),
        })
    }

    pub fn upsert_pod(&mut self, mut pod: Pod) {
        let key = pod.key();
        // Until the API reports addresses, the attachment's stand in for them.
        match self.attachments.get(&key) {
            Some(att) if pod.ips.is_empty() && !att.ips.is_empty() => {
                pod.ips = att.ips.clone();
                self.filled_from_attachment.insert(key.clone());
            }
            _ => {
                self.filled_from_attachment.remove(&key);
            }
        }
        if self.pods.get(&key).map(|p| &**p) == Some(&pod) {
            return;
        }
        self.pods_by_ns
            .entry(pod.namespace.clone())
            .or_default()
            .insert(pod.name.clone());
        self.pod_changed(&key, Some(pod));
    }

    pub fn remove_pod(&mut self, key: &ObjectKey) {
        if !self.pods.contains_key(key) {
            return;
        }
        self.filled_from_attachment.remove(key);
        if let Some(names) = self.pods_by_ns.get_mut(&key.namespace) {
            names.remove(&key.name);
            if names.is_empty() {
                self.pods_by_ns.remove(&key.namespace);
            }
        }
        self.pod_changed(key, None);
    }

    pub fn upsert_policy(&mut self, policy: NetworkPolicy) {
        let key = policy.key();
        if self.policies.get(&key).map(|p| p.as_ref()) == Some(&policy) {
            return;
        }
        self.policies_by_ns
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.name.clone());
        self.policies.insert(key.clone(), Arc::new(policy));
        self.dirty_namespace_pods(&key.namespace);
    }

    pub fn remove_policy(&mut self, key: &ObjectKey) {
        if self.policies.remove(key).is_none() {
            return;
        }
        if let Some(names) = self.policies_by_ns.get_mut(&key.namespace) {
            names.remove(&key.name);
            if names.is_empty() {
                self.policies_by_ns.remove(&key.namespace);
            }
        }
        self.dirty_namespace_pods(&key.namespace);
    }

    /// Marks every pod dirty, so the next commit recomputes everything (it still only emits
    /// what changed).
    pub fn invalidate_all(&mut self) {
        let local: Vec<ObjectKey> = self
            .pods
            .values()
            .filter(|p| self.is_local(p))
            .map(|p| p.key())
            .collect();
        self.dirty_pods.extend(local);
        self.dirty_pods.extend(self.outputs.keys().cloned());
        self.dirty_groups.extend(self.groups.keys().cloned());
    }

    // ----- commit ----------------------------------------------------------------------

    /// Recomputes what changed since the last commit and returns the transaction that takes
    /// the previous desired table to the new one. The first commit creates the whole table.
    pub fn commit(&mut self) -> Transaction {
        let mut tx = Transaction::new(self.cfg.table.clone());
        if self.table.is_none() {
            let skeleton = layout::skeleton(&self.cfg.table);
            tx.create_table = true;
            for chain in skeleton.chains.values() {
                tx.add_chains.push(Chain {
                    rules: Vec::new(),
                    ..chain.clone()
                });
                tx.add_rules.push((chain.name.clone(), chain.rules.clone()));
            }
            tx.add_sets.extend(skeleton.sets.values().cloned());
            self.table = Some(skeleton);
            self.invalidate_all();
        }

        // Groups whose members changed: a small group is flattened into its users, so they are
        // recomputed; a big one only refreshes its shared sets. Crossing the size limit
        // switches representation for every user.
        let mut refresh_sets: BTreeSet<GroupKey> = BTreeSet::new();
        for g in std::mem::take(&mut self.dirty_groups) {
            let limit = self.cfg.inline_peer_limit;
            let Some(group) = self.groups.get_mut(&g) else {
                continue;
            };
            let big = group.members.len() > limit;
            if big != group.big || !big {
                group.big = big;
                self.dirty_pods.extend(group.users.iter().cloned());
            } else {
                refresh_sets.insert(g);
            }
        }

        let dirty = std::mem::take(&mut self.dirty_pods);
        let mut new_outputs: Vec<(ObjectKey, Option<PodOutput>)> = Vec::with_capacity(dirty.len());
        for key in &dirty {
            let out = self.compute_output(key);
            new_outputs.push((key.clone(), out));
        }

        let mut table = self
            .table
            .take()
            .unwrap_or_else(|| layout::skeleton(&self.cfg.table));
        let mut chain_delta: BTreeMap<Name, (isize, Option<Chain>)> = BTreeMap::new();
        let mut set_delta: BTreeMap<Name, (isize, Option<SharedSpec>)> = BTreeMap::new();
        let mut elems = ElementChanges::default();

        // Deletions of every pod first, then additions: an IP (and so a map key) can move
        // from one pod to another within one commit.
        let mut pairs: Vec<(ObjectKey, Option<PodOutput>, Option<PodOutput>)> =
            Vec::with_capacity(new_outputs.len());
        for (key, new) in new_outputs {
            let old = self.outputs.remove(&key);
            if let Some(o) = &old {
                for g in &o.groups {
                    if let Some(group) = self.groups.get_mut(g) {
                        group.users.remove(&key);
                    }
                }
                for name in o.rule_chains.keys() {
                    chain_delta.entry(name.clone()).or_insert((0, None)).0 -= 1;
                }
                for name in o.shared_sets.keys() {
                    set_delta.entry(name.clone()).or_insert((0, None)).0 -= 1;
                }
            }
            if let Some(n) = &new {
                for g in &n.groups {
                    if let Some(group) = self.groups.get_mut(g) {
                        group.users.insert(key.clone());
                    }
                }
                for (name, chain) in &n.rule_chains {
                    let e = chain_delta.entry(name.clone()).or_insert((0, None));
                    e.0 += 1;
                    e.1 = Some(chain.clone());
                }
                for (name, spec) in &n.shared_sets {
                    let e = set_delta.entry(name.clone()).or_insert((0, None));
                    e.0 += 1;
                    e.1 = Some(spec.clone());
                }
            }
            pairs.push((key, old, new));
        }
        for (_, old, new) in &pairs {
            diff_pod_chains(&mut tx, &mut table, old.as_ref(), new.as_ref());
            remove_pod_elements(&mut table, &mut elems, old.as_ref(), new.as_ref());
        }
        for (_, old, new) in &pairs {
            add_pod_elements(&mut table, &mut elems, old.as_ref(), new.as_ref());
        }
        for (key, _, new) in pairs {
            if let Some(n) = new {
                self.outputs.insert(key, n);
            }
        }

        // Per-rule chains: create on first use, delete after last use.
        for (name, (delta, chain)) in chain_delta {
            let before = self.rule_chain_refs.get(&name).copied().unwrap_or(0);
            let after = (before as isize + delta).max(0) as usize;
            match (before, after) {
                (0, a) if a > 0 => {
                    if let Some(chain) = chain {
                        tx.add_chains.push(Chain {
                            rules: Vec::new(),
                            ..chain.clone()
                        });
                        tx.add_rules.push((name.clone(), chain.rules.clone()));
                        table.chains.insert(name.clone(), chain);
                    }
                }
                (b, 0) if b > 0 => {
                    tx.flush_chains.push(name.clone());
                    tx.delete_chains.push(name.clone());
                    table.chains.remove(&name);
                }
                _ => {}
            }
            if after == 0 {
                self.rule_chain_refs.remove(&name);
            } else {
                self.rule_chain_refs.insert(name, after);
            }
        }

        // Shared sets: create (with elements) on first use, delete after last use, refresh the
        // elements of surviving sets whose group changed.
        for (name, (delta, spec)) in set_delta {
            let (before, old_spec) = self
                .shared_set_refs
                .get(&name)
                .map(|(s, c)| (*c, Some(s.clone())))
                .unwrap_or((0, None));
            let after = (before as isize + delta).max(0) as usize;
            let spec = spec.or(old_spec);
            match (before, after, spec) {
                (0, a, Some(spec)) if a > 0 => {
                    let set = self.shared_set(&name, &spec);
                    tx.add_sets.push(Set {
                        elements: BTreeMap::new(),
                        ..set.clone()
                    });
                    if !set.elements.is_empty() {
                        tx.add_elements.insert(
                            name.clone(),
                            set.elements
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                        );
                    }
                    table.sets.insert(name.clone(), set);
                    self.shared_set_refs.insert(name, (spec, a));
                }
                (b, 0, _) if b > 0 => {
                    tx.delete_sets.push(name.clone());
                    table.sets.remove(&name);
                    self.shared_set_refs.remove(&name);
                }
                (_, a, Some(spec)) if a > 0 => {
                    self.shared_set_refs.insert(name, (spec, a));
                }
                _ => {
                    self.shared_set_refs.remove(&name);
                }
            }
        }
        for g in refresh_sets {
            let names: Vec<(Name, SharedSpec)> = self
                .shared_set_refs
                .iter()
                .filter(|(_, (spec, _))| spec.group == g)
                .map(|(n, (s, _))| (n.clone(), s.clone()))
                .collect();
            for (name, spec) in names {
                let fresh = self.shared_set(&name, &spec);
                if let Some(current) = table.sets.get_mut(&name) {
                    for key in current.elements.keys() {
                        if !fresh.elements.contains_key(key) {
                            elems.delete(&name, key.clone());
                        }
                    }
                    for (key, v) in &fresh.elements {
                        if !current.elements.contains_key(key) {
                            elems.add(&name, key.clone(), v.clone());
                        }
                    }
                    current.elements = fresh.elements;
                }
            }
        }

        // This node's pod ranges.
        if std::mem::take(&mut self.node_dirty) {
            for fam in layout::Family::BOTH {
                let name = layout::local_pod_cidrs_set(fam);
                let want: BTreeSet<Key> = self
                    .nodes
                    .get(&self.cfg.node)
                    .map(|n| n.pod_cidrs.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(ranges::AddrRange::of_net)
                    .filter(|(f, _)| *f == fam)
                    .map(|(f, r)| Key::new(vec![r.key_part(f)]))
                    .collect();
                if let Some(set) = table.sets.get_mut(&name) {
                    let have: Vec<Key> = set.elements.keys().cloned().collect();
                    for k in have.iter().filter(|k| !want.contains(*k)) {
                        elems.delete(&name, k.clone());
                        set.elements.remove(k);
                    }
                    for k in want {
                        if let std::collections::btree_map::Entry::Vacant(e) =
                            set.elements.entry(k.clone())
                        {
                            e.insert(None);
                            elems.add(&name, k, None);
                        }
                    }
                }
            }
        }

        // Groups nobody uses any more are forgotten.
        self.groups.retain(|_, g| !g.users.is_empty());

        elems.into_transaction(&mut tx);
        self.table = Some(table);
        tx
    }

    // ----- internals ------------------------------------------------------------------

    fn is_local(&self, pod: &Pod) -> bool {
        pod.node_name.as_deref() == Some(&*self.cfg.node)
    }

    /// Labels of a namespace; a namespace we have not seen still carries its name label
    /// (the API server always sets it), so pods in it can be matched by name.
    fn ns_labels(&self, name: &str) -> Labels {
        match self.namespaces.get(name) {
            Some(ns) => ns.labels.clone(),
            None => Labels::new([(NAMESPACE_NAME_LABEL, name)]),
        }
    }

    /// The pod that owns an IP: among relevant pods claiming it, local pods first, then the
    /// smallest namespace/name (claims by two live pods mean stale data; be deterministic).
    fn owner_of(&self, ip: &IpAddr) -> Option<&ObjectKey> {
        match self.ip_claims.get(ip)? {
            Claims::One(key) => Some(key),
            Claims::Many(claims) => claims.iter().min_by_key(|k| {
                let local = self.pods.get(*k).is_some_and(|p| self.is_local(p));
                (!local, (*k).clone())
            }),
        }
    }

    /// IPs of a pod that it owns.
    fn owned_ips<'a>(
        &'a self,
        key: &'a ObjectKey,
        pod: &'a Pod,
    ) -> impl Iterator<Item = IpAddr> + 'a {
        pod.ips
            .iter()
            .copied()
            .filter(move |ip| self.owner_of(ip) == Some(key))
    }

    fn dirty_namespace_pods(&mut self, ns: &str) {
        if let Some(names) = self.local_pods_by_ns.get(ns) {
            self.dirty_pods
                .extend(names.iter().map(|name| ObjectKey::new(ns, name.clone())));
        }
    }

    fn namespace_labels_changed(&mut self, ns: &str, old: &Labels) {
        let new = self.ns_labels(ns);
        if &new == old {
            return;
        }
        let pod_names: Vec<Str> = self
            .pods_by_ns
            .get(ns)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut changed = Vec::new();
        for (g, group) in self.groups.iter_mut() {
            let GroupKey::Pods {
                namespaces: Namespaces::Matching(nsel),
                pods: psel,
            } = g
            else {
                continue;
            };
            if nsel.matches(old) == nsel.matches(&new) {
                continue;
            }
            let now_in = nsel.matches(&new);
            for name in &pod_names {
                let key = ObjectKey::new(ns, name.clone());
                let Some(pod) = self.pods.get(&key) else {
                    continue;
                };
                if !pod.is_policy_relevant() || !psel.matches(&pod.labels) {
                    continue;
                }
                if now_in {
                    group.members.insert(key);
                } else {
                    group.members.remove(&key);
                }
            }
            changed.push(g.clone());
        }
        self.dirty_groups.extend(changed);
    }

    fn group_contains(&self, g: &GroupKey, pod: &Pod) -> bool {
        if !pod.is_policy_relevant() {
            return false;
        }
        match g {
            GroupKey::Pods {
                namespaces: Namespaces::Named(ns),
                pods,
            } => *ns == pod.namespace && pods.matches(&pod.labels),
            GroupKey::Pods {
                namespaces: Namespaces::Matching(nsel),
                pods,
            } => pods.matches(&pod.labels) && nsel.matches(&self.ns_labels(&pod.namespace)),
            GroupKey::Block(b) => pod.ips.iter().any(|ip| b.contains(*ip)),
        }
    }

    fn scan_members(&self, g: &GroupKey) -> BTreeSet<ObjectKey> {
        let in_ns = |ns: &str| -> Vec<ObjectKey> {
            self.pods_by_ns
                .get(ns)
                .into_iter()
                .flatten()
                .map(|name| ObjectKey::new(ns, name.clone()))
                .filter(|k| self.pods.get(k).is_some_and(|p| self.group_contains(g, p)))
                .collect()
        };
        match g {
            GroupKey::Pods {
                namespaces: Namespaces::Named(ns),
                ..
            } => in_ns(ns).into_iter().collect(),
            GroupKey::Pods {
                namespaces: Namespaces::Matching(nsel),
                ..
            } => self
                .pods_by_ns
                .keys()
                .filter(|ns| nsel.matches(&self.ns_labels(ns)))
                .flat_map(|ns| in_ns(ns))
                .collect(),
            GroupKey::Block(_) => self
                .pods
                .iter()
                .filter(|(_, p)| self.group_contains(g, p))
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    /// Ensures a group exists (resolving its members on first use) and returns whether it is
    /// big.
    fn ensure_group(&mut self, g: &GroupKey) -> bool {
        if let Some(group) = self.groups.get(g) {
            return group.big;
        }
        let members = self.scan_members(g);
        let big = members.len() > self.cfg.inline_peer_limit;
        self.groups.insert(
            g.clone(),
            Group {
                members,
                users: BTreeSet::new(),
                big,
            },
        );
        big
    }

    /// Stores (or removes) a pod and works out what its change touches: IP ownership, group
    /// membership, dirty local pods.
    fn pod_changed(&mut self, key: &ObjectKey, new: Option<Pod>) {
        let relevant_ips = |p: Option<&Pod>| -> Vec<IpAddr> {
            p.filter(|p| p.is_policy_relevant())
                .map(|p| p.ips.clone())
                .unwrap_or_default()
        };
        let old_ips = relevant_ips(self.pods.get(key).map(|p| &**p));
        let new_ips = relevant_ips(new.as_ref());
        // Ownership can change even for an IP the pod keeps (it prefers local pods), so look
        // at every IP the pod had or has. Owners are computed while the old pod is stored.
        let mut touched_ips: Vec<IpAddr> = old_ips.clone();
        touched_ips.extend(new_ips.iter().filter(|ip| !old_ips.contains(ip)));
        let owners_before: Vec<Option<ObjectKey>> = touched_ips
            .iter()
            .map(|ip| self.owner_of(ip).cloned())
            .collect();
        for ip in old_ips.iter().filter(|ip| !new_ips.contains(ip)) {
            let emptied = match self.ip_claims.get_mut(ip) {
                Some(claims) => claims.remove(key),
                None => false,
            };
            if emptied {
                self.ip_claims.remove(ip);
            }
        }
        for ip in new_ips.iter().filter(|ip| !old_ips.contains(ip)) {
            match self.ip_claims.entry(*ip) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Claims::One(key.clone()));
                }
                std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().add(key.clone()),
            }
        }
        let old = match new {
            Some(p) => self.pods.insert(key.clone(), Box::new(p)),
            None => self.pods.remove(key),
        };
        let new = self.pods.get(key);
        let was_local = old.as_ref().is_some_and(|p| self.is_local(p));
        let is_local = new.is_some_and(|p| self.is_local(p));
        if was_local || is_local || self.outputs.contains_key(key) {
            self.dirty_pods.insert(key.clone());
        }
        if was_local != is_local {
            if is_local {
                self.local_pods_by_ns
                    .entry(key.namespace.clone())
                    .or_default()
                    .insert(key.name.clone());
            } else if let Some(names) = self.local_pods_by_ns.get_mut(&key.namespace) {
                names.remove(&key.name);
                if names.is_empty() {
                    self.local_pods_by_ns.remove(&key.namespace);
                }
            }
        }

        // Pods (this one included) whose ownership of an IP changed.
        let mut others: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut own_ips_changed = false;
        for (ip, before) in touched_ips.iter().zip(owners_before) {
            let after = self.owner_of(ip).cloned();
            if before != after {
                own_ips_changed |= before.as_ref() == Some(key) || after.as_ref() == Some(key);
                others.extend(before.into_iter().filter(|k| k != key));
                others.extend(after.into_iter().filter(|k| k != key));
            }
        }

        // Membership of existing groups.
        let changed_attrs = own_ips_changed
            || match (&old, new) {
                (Some(o), Some(n)) => o.ips != n.ips || o.named_ports != n.named_ports,
                _ => true,
            };
        let mut dirty = Vec::new();
        for (g, group) in self.groups.iter_mut() {
            let was_in = group.members.contains(key);
            let now_in = new.is_some_and(|p| group_contains_static(g, p, &self.namespaces));
            if was_in != now_in {
                if now_in {
                    group.members.insert(key.clone());
                } else {
                    group.members.remove(key);
                }
                dirty.push(g.clone());
            } else if (now_in && changed_attrs) || others.iter().any(|o| group.members.contains(o))
            {
                dirty.push(g.clone());
            }
        }
        self.dirty_groups.extend(dirty);
        for o in others {
            if self.pods.get(&o).is_some_and(|p| self.is_local(p)) {
                self.dirty_pods.insert(o);
            }
        }
    }

    /// The contents of a shared set.
    fn shared_set(&self, name: &Name, spec: &SharedSpec) -> Set {
        let mut set = Set::new(name.clone(), spec.key_types());
        set.comment = Some(layout::comment(spec.describe()));
        if let Some(group) = self.groups.get(&spec.group) {
            for member in &group.members {
                let Some(pod) = self.pods.get(member) else {
                    continue;
                };
                for ip in self.owned_ips(member, pod) {
                    if layout::Family::of(&ip) != spec.family {
                        continue;
                    }
                    if let GroupKey::Block(b) = &spec.group
                        && !b.contains(ip)
                    {
                        continue;
                    }
                    if let Some(k) = spec.element(&ip, pod) {
                        set.elements.insert(k, None);
                    }
                }
            }
        }
        set
    }
}

/// The pods claiming one IP: almost always one, so no allocation for the common case.
#[derive(Debug)]
enum Claims {
    One(ObjectKey),
    Many(Vec<ObjectKey>),
}

impl Claims {
    fn add(&mut self, key: ObjectKey) {
        match self {
            Claims::One(first) => *self = Claims::Many(vec![first.clone(), key]),
            Claims::Many(keys) => keys.push(key),
        }
    }

    /// Removes a claim; true when none is left.
    fn remove(&mut self, key: &ObjectKey) -> bool {
        match self {
            Claims::One(k) => k == key,
            Claims::Many(keys) => {
                keys.retain(|k| k != key);
                let left = keys.len();
                if left == 1 {
                    let last = keys.remove(0);
                    *self = Claims::One(last);
                }
                left == 0
            }
        }
    }
}

/// Group membership test usable while `groups` is mutably borrowed.
fn group_contains_static(g: &GroupKey, pod: &Pod, namespaces: &FxHashMap<Str, Namespace>) -> bool {
    if !pod.is_policy_relevant() {
        return false;
    }
    match g {
        GroupKey::Pods {
            namespaces: Namespaces::Named(ns),
            pods,
        } => *ns == pod.namespace && pods.matches(&pod.labels),
        GroupKey::Pods {
            namespaces: Namespaces::Matching(nsel),
            pods,
        } => {
            if !pods.matches(&pod.labels) {
                return false;
            }
            match namespaces.get(&pod.namespace) {
                Some(ns) => nsel.matches(&ns.labels),
                None => nsel.matches(&Labels::new([(NAMESPACE_NAME_LABEL, &*pod.namespace)])),
            }
        }
        GroupKey::Block(b) => pod.ips.iter().any(|ip| b.contains(*ip)),
    }
}

/// Net element changes of one commit, per set.
#[derive(Default)]
struct ElementChanges {
    delete: BTreeMap<Name, Vec<Key>>,
    add: BTreeMap<Name, Vec<(Key, Option<Verdict>)>>,
}

impl ElementChanges {
    fn delete(&mut self, set: &Name, key: Key) {
        self.delete.entry(set.clone()).or_default().push(key);
    }

    fn add(&mut self, set: &Name, key: Key, value: Option<Verdict>) {
        self.add.entry(set.clone()).or_default().push((key, value));
    }

    fn into_transaction(self, tx: &mut Transaction) {
        for (set, keys) in self.delete {
            tx.delete_elements.entry(set).or_default().extend(keys);
        }
        for (set, elems) in self.add {
            tx.add_elements.entry(set).or_default().extend(elems);
        }
    }
}

static EMPTY_OUTPUT: std::sync::LazyLock<PodOutput> = std::sync::LazyLock::new(PodOutput::default);

/// Emits the chain changes between a pod's old and new output and applies them to the table.
fn diff_pod_chains(
    tx: &mut Transaction,
    table: &mut Table,
    old: Option<&PodOutput>,
    new: Option<&PodOutput>,
) {
    let old = old.unwrap_or(&EMPTY_OUTPUT);
    let new = new.unwrap_or(&EMPTY_OUTPUT);
    for (name, chain) in &new.chains {
        match old.chains.get(name) {
            Some(old_chain) if old_chain == chain => continue,
            Some(_) => {
                tx.flush_chains.push(name.clone());
                tx.add_rules.push((name.clone(), chain.rules.clone()));
            }
            None => {
                tx.add_chains.push(Chain {
                    rules: Vec::new(),
                    ..chain.clone()
                });
                tx.add_rules.push((name.clone(), chain.rules.clone()));
            }
        }
        table.chains.insert(name.clone(), chain.clone());
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            tx.flush_chains.push(name.clone());
            tx.delete_chains.push(name.clone());
            table.chains.remove(name);
        }
    }
}

/// Elements of the old output that the new one lacks (or maps elsewhere).
fn remove_pod_elements(
    table: &mut Table,
    elems: &mut ElementChanges,
    old: Option<&PodOutput>,
    new: Option<&PodOutput>,
) {
    let old = old.unwrap_or(&EMPTY_OUTPUT);
    let new = new.unwrap_or(&EMPTY_OUTPUT);
    for (set, o) in &old.elements {
        let n = new.elements.get(set);
        let Some(target) = table.sets.get_mut(set) else {
            continue;
        };
        for (key, v) in o {
            if n.and_then(|n| n.get(key)) != Some(v) {
                elems.delete(set, key.clone());
                target.elements.remove(key);
            }
        }
    }
}

/// Elements of the new output that the old one lacked (or mapped elsewhere).
fn add_pod_elements(
    table: &mut Table,
    elems: &mut ElementChanges,
    old: Option<&PodOutput>,
    new: Option<&PodOutput>,
) {
    let old = old.unwrap_or(&EMPTY_OUTPUT);
    let new = new.unwrap_or(&EMPTY_OUTPUT);
    for (set, n) in &new.elements {
        let o = old.elements.get(set);
        let Some(target) = table.sets.get_mut(set) else {
            continue;
        };
        for (key, v) in n {
            if o.and_then(|o| o.get(key)) != Some(v) {
                elems.add(set, key.clone(), v.clone());
                target.elements.insert(key.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
