//! The difference between the table in the kernel and the table we want, as one
//! [`Transaction`], and the kernel's rules for applying a transaction, on plain data.
//!
//! [`diff`] is what keeps a node's ruleset converged: `nftpol apply` and the agent's periodic
//! reconcile read the live table, diff it against the desired one and send only the delta
//! (set elements added or removed, changed chains flushed and refilled). A set or base chain
//! whose definition changed cannot be altered in place, so that becomes a `replace` of the
//! whole table, still in one batch.
//!
//! [`apply_to`] applies a transaction to an in-memory table with the kernel's semantics:
//! all or nothing, and the same refusals the kernel makes (dangling jumps and lookups,
//! duplicate or missing elements, deleting objects still in use, keys of the wrong shape,
//! overlapping intervals). The dataplane's fake is built on it, so tests of the compiler and
//! the agent are honest without a kernel.
//!
//! [`validate_table`] checks a whole table against the same rules plus the ones that make the
//! model's text and netlink forms agree (a rule nft would print differently from the way we
//! render it is refused rather than silently rewritten).

use std::collections::{BTreeMap, BTreeSet};

use super::model::{
    Action, AnonSet, Chain, CtStates, Field, Key, KeyPart, KeyType, Match, Name, Rule, Set, SetRef,
    Table, Verdict,
};
use super::text;
use super::transaction::Transaction;

/// Why a table or transaction is not acceptable. The variants mirror the kernel's errnos
/// (EEXIST, ENOENT, EBUSY, EINVAL/ENOTEMPTY/ELOOP), so the fake and the kernel can be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Adding something that already exists (EEXIST).
    #[error("{object}: already exists")]
    Exists { object: String },
    /// Deleting or using something that does not exist (ENOENT).
    #[error("{object}: {missing} does not exist")]
    Missing { object: String, missing: String },
    /// Deleting something still in use (EBUSY).
    #[error("{object}: still in use by {user}")]
    Busy { object: String, user: String },
    /// An interval element overlapping another one of the same set.
    #[error("{object}: overlaps element {other}")]
    Overlap { object: String, other: String },
    /// Jumps that form a loop (ELOOP).
    #[error("{object}: jumps form a loop through chain {chain}")]
    Loop { object: String, chain: String },
    /// Anything else the kernel or nft would refuse (or nft would print differently).
    #[error("{object}: {reason}")]
    Invalid { object: String, reason: String },
}

/// Which errno-like class a [`ModelError`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Exists,
    Missing,
    Busy,
    Overlap,
    Loop,
    Invalid,
}

impl ModelError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ModelError::Exists { .. } => ErrorKind::Exists,
            ModelError::Missing { .. } => ErrorKind::Missing,
            ModelError::Busy { .. } => ErrorKind::Busy,
            ModelError::Overlap { .. } => ErrorKind::Overlap,
            ModelError::Loop { .. } => ErrorKind::Loop,
            ModelError::Invalid { .. } => ErrorKind::Invalid,
        }
    }
}

fn invalid(object: impl Into<String>, reason: impl Into<String>) -> ModelError {
    ModelError::Invalid {
        object: object.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// diff

/// The minimal transaction that turns `current` (the live table, `None` if absent) into
/// `desired`. Identical tables give an empty transaction.
pub fn diff(current: Option<&Table>, desired: &Table) -> Transaction {
    let current = current.filter(|c| c.name == desired.name && c.family == desired.family);
    let Some(cur) = current else {
        return full(desired, false);
    };
    let redefined_set = desired
        .sets
        .iter()
        .any(|(n, s)| cur.sets.get(n).is_some_and(|c| !c.same_definition(s)));
    let redefined_chain = desired
        .chains
        .iter()
        .any(|(n, c)| cur.chains.get(n).is_some_and(|cc| cc.base != c.base));
    if redefined_set || redefined_chain {
        return full(desired, true);
    }

    let mut tx = Transaction::new(desired.name.clone());
    for (name, chain) in &desired.chains {
        match cur.chains.get(name) {
            None => {
                tx.add_chains.push(declared_chain(chain));
                if !chain.rules.is_empty() {
                    tx.add_rules.push((name.clone(), chain.rules.clone()));
                }
            }
            Some(c) if c.rules != chain.rules => {
                if !c.rules.is_empty() {
                    tx.flush_chains.push(name.clone());
                }
                if !chain.rules.is_empty() {
                    tx.add_rules.push((name.clone(), chain.rules.clone()));
                }
            }
            Some(_) => {}
        }
    }
    for (name, chain) in &cur.chains {
        if !desired.chains.contains_key(name) {
            if !chain.rules.is_empty() {
                tx.flush_chains.push(name.clone());
            }
            tx.delete_chains.push(name.clone());
        }
    }
    for (name, set) in &desired.sets {
        match cur.sets.get(name) {
            None => {
                tx.add_sets.push(declared_set(set));
                if !set.elements.is_empty() {
                    tx.add_elements.insert(
                        name.clone(),
                        set.elements
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    );
                }
            }
            Some(c) => {
                let (del, add) = element_delta(&c.elements, &set.elements);
                if !del.is_empty() {
                    tx.delete_elements.insert(name.clone(), del);
                }
                if !add.is_empty() {
                    tx.add_elements.insert(name.clone(), add);
                }
            }
        }
    }
    for name in cur.sets.keys() {
        if !desired.sets.contains_key(name) {
            tx.delete_sets.push(name.clone());
        }
    }
    tx
}

/// A transaction that creates `desired` from nothing (deleting the old table first when
/// `replace`).
fn full(desired: &Table, replace: bool) -> Transaction {
    let mut tx = Transaction::new(desired.name.clone());
    tx.replace = replace;
    tx.create_table = true;
    for (name, chain) in &desired.chains {
        tx.add_chains.push(declared_chain(chain));
        if !chain.rules.is_empty() {
            tx.add_rules.push((name.clone(), chain.rules.clone()));
        }
    }
    for (name, set) in &desired.sets {
        tx.add_sets.push(declared_set(set));
        if !set.elements.is_empty() {
            tx.add_elements.insert(
                name.clone(),
                set.elements
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
        }
    }
    tx
}

fn declared_chain(chain: &Chain) -> Chain {
    Chain {
        name: chain.name.clone(),
        base: chain.base.clone(),
        rules: Vec::new(),
    }
}

fn declared_set(set: &Set) -> Set {
    Set {
        name: set.name.clone(),
        key: set.key.clone(),
        data: set.data,
        interval: set.interval,
        comment: set.comment.clone(),
        elements: BTreeMap::new(),
    }
}

type ElementDelta = (Vec<Key>, Vec<(Key, Option<Verdict>)>);

/// Elements to delete and to add, by one merge walk over both sorted maps. A map element
/// whose verdict changed is deleted and added again.
fn element_delta(
    cur: &BTreeMap<Key, Option<Verdict>>,
    want: &BTreeMap<Key, Option<Verdict>>,
) -> ElementDelta {
    let mut del = Vec::new();
    let mut add = Vec::new();
    let mut a = cur.iter().peekable();
    let mut b = want.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                del.push((*k).clone());
                a.next();
            }
            (None, Some((k, v))) => {
                add.push(((*k).clone(), (*v).clone()));
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    del.push((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    add.push(((*kb).clone(), (*vb).clone()));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        del.push((*ka).clone());
                        add.push(((*kb).clone(), (*vb).clone()));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    (del, add)
}

// ---------------------------------------------------------------------------------------------
// apply_to

/// Applies `tx` to an in-memory table with the kernel's semantics, all or nothing: on error
/// `table` is left exactly as it was.
pub fn apply_to(table: &mut Option<Table>, tx: &Transaction) -> Result<(), ModelError> {
    if tx.is_empty() {
        return Ok(());
    }
    if let Some(t) = table
        && t.name != tx.table
    {
        return Err(invalid(
            format!("table {}", tx.table),
            format!("transaction applied to table {}", t.name),
        ));
    }
    let mut work = if tx.replace { None } else { table.clone() };
    apply_steps(&mut work, tx)?;
    *table = work;
    Ok(())
}

fn apply_steps(work: &mut Option<Table>, tx: &Transaction) -> Result<(), ModelError> {
    let tname = &tx.table;
    let tobj = || format!("table {tname}");
    if let Some(p) = text::name_problem(tname) {
        return Err(invalid(tobj(), p));
    }
    if (tx.create_table || tx.replace) && work.is_none() {
        *work = Some(Table::new(tname.clone()));
    }
    let Some(t) = work.as_mut() else {
        return Err(ModelError::Missing {
            object: tobj(),
            missing: format!("table inet {tname}"),
        });
    };

    // 3. declare chains, then sets
    for chain in &tx.add_chains {
        let obj = format!("table {tname}: chain {}", chain.name);
        check_chain_definition(&obj, chain)?;
        if !chain.rules.is_empty() {
            return Err(invalid(
                obj,
                "a declared chain must be empty (rules go in add_rules)",
            ));
        }
        if t.chains.contains_key(&chain.name) {
            return Err(ModelError::Exists { object: obj });
        }
        t.chains.insert(chain.name.clone(), chain.clone());
    }
    for set in &tx.add_sets {
        let obj = format!("table {tname}: set {}", set.name);
        check_set_definition(&obj, set)?;
        if !set.elements.is_empty() {
            return Err(invalid(
                obj,
                "a declared set must be empty (elements go in add_elements)",
            ));
        }
        if t.sets.contains_key(&set.name) {
            return Err(ModelError::Exists { object: obj });
        }
        t.sets.insert(set.name.clone(), set.clone());
    }
    // 4. flush chains
    for name in &tx.flush_chains {
        match t.chains.get_mut(name) {
            Some(c) => c.rules.clear(),
            None => {
                return Err(ModelError::Missing {
                    object: format!("flush chain {name}"),
                    missing: format!("chain {name} in table {tname}"),
                });
            }
        }
    }
    // 5. delete elements, then add elements
    for (sname, keys) in &tx.delete_elements {
        let Some(set) = t.sets.get_mut(sname) else {
            if keys.is_empty() {
                continue;
            }
            return Err(ModelError::Missing {
                object: format!("table {tname}: delete elements"),
                missing: format!("set {sname}"),
            });
        };
        for key in keys {
            if set.elements.remove(key).is_none() {
                return Err(ModelError::Missing {
                    object: format!(
                        "table {tname}: set {sname}: delete element {}",
                        key_text(key)
                    ),
                    missing: format!("element {}", key_text(key)),
                });
            }
        }
    }
    let chains_snapshot: BTreeMap<Name, bool> = t
        .chains
        .iter()
        .map(|(n, c)| (n.clone(), c.base.is_some()))
        .collect();
    let mut grown_interval_sets = Vec::new();
    for (sname, elems) in &tx.add_elements {
        let Some(set) = t.sets.get_mut(sname) else {
            if elems.is_empty() {
                continue;
            }
            return Err(ModelError::Missing {
                object: format!("table {tname}: add elements"),
                missing: format!("set {sname}"),
            });
        };
        for (key, verdict) in elems {
            let obj = || format!("table {tname}: set {sname}: element {}", key_text(key));
            check_element(set, key, verdict.as_ref()).map_err(|r| invalid(obj(), r))?;
            if let Some(v) = verdict {
                check_target(&obj(), v, &chains_snapshot)?;
            }
            if set.elements.contains_key(key) {
                return Err(ModelError::Exists { object: obj() });
            }
            set.elements.insert(key.clone(), verdict.clone());
        }
        if set.interval && !elems.is_empty() {
            grown_interval_sets.push(sname.clone());
        }
    }
    for sname in grown_interval_sets {
        if let Some(set) = t.sets.get(&sname)
            && let Some((a, b)) = find_overlap(set.elements.keys())
        {
            return Err(ModelError::Overlap {
                object: format!("table {tname}: set {sname}: element {}", key_text(b)),
                other: key_text(a),
            });
        }
    }
    // 6. rules
    for (cname, rules) in &tx.add_rules {
        if !t.chains.contains_key(cname) {
            if rules.is_empty() {
                continue;
            }
            return Err(ModelError::Missing {
                object: format!("table {tname}: add rule"),
                missing: format!("chain {cname}"),
            });
        }
        for rule in rules {
            let index = t.chains.get(cname).map_or(0, |c| c.rules.len());
            let obj = format!("table {tname}: chain {cname}: rule {index}");
            check_rule_shape(rule).map_err(|r| invalid(obj.clone(), r))?;
            check_rule_refs(&obj, t, rule)?;
            if let Some(c) = t.chains.get_mut(cname) {
                c.rules.push(rule.clone());
            }
        }
    }
    // 7. delete sets, then chains
    for sname in &tx.delete_sets {
        let obj = format!("table {tname}: delete set {sname}");
        if !t.sets.contains_key(sname) {
            return Err(ModelError::Missing {
                object: obj,
                missing: format!("set {sname}"),
            });
        }
        if let Some(user) = set_user(t, sname) {
            return Err(ModelError::Busy { object: obj, user });
        }
        t.sets.remove(sname);
    }
    for cname in &tx.delete_chains {
        let obj = format!("table {tname}: delete chain {cname}");
        let Some(chain) = t.chains.get(cname) else {
            return Err(ModelError::Missing {
                object: obj,
                missing: format!("chain {cname}"),
            });
        };
        // Like the kernel, deleting a chain deletes its rules; only references keep it.
        let _ = chain;
        if let Some(user) = chain_user(t, cname) {
            return Err(ModelError::Busy { object: obj, user });
        }
        t.chains.remove(cname);
    }
    if !tx.add_rules.is_empty() || !tx.add_elements.is_empty() {
        find_loop(t).map_or(Ok(()), Err)?;
    }
    Ok(())
}

fn key_text(key: &Key) -> String {
    let mut s = String::new();
    let _ = text::write_key(key, &mut s);
    s
}

/// Who still refers to set `name` (a rule's lookup or vmap), if anyone.
fn set_user(t: &Table, name: &Name) -> Option<String> {
    for (cname, chain) in &t.chains {
        for (i, rule) in chain.rules.iter().enumerate() {
            let uses = rule
                .matches
                .iter()
                .any(|m| matches!(m, Match::Lookup { set: SetRef::Named(n), .. } if n == name))
                || matches!(&rule.action, Action::VMap { map, .. } if map == name);
            if uses {
                return Some(format!("chain {cname} rule {i}"));
            }
        }
    }
    None
}

/// Who still jumps to chain `name` (a rule or a map element), if anyone.
fn chain_user(t: &Table, name: &Name) -> Option<String> {
    let targets = |v: &Verdict| matches!(v, Verdict::Jump(c) | Verdict::Goto(c) if c == name);
    for (cname, chain) in &t.chains {
        for (i, rule) in chain.rules.iter().enumerate() {
            if matches!(&rule.action, Action::Verdict(v) if targets(v)) {
                return Some(format!("chain {cname} rule {i}"));
            }
        }
    }
    for (sname, set) in &t.sets {
        for (k, v) in &set.elements {
            if v.as_ref().is_some_and(targets) {
                return Some(format!("map {sname} element {}", key_text(k)));
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// validation

/// Checks a whole table: names, comments, definitions, elements, rules, references and
/// jump loops. A table that passes renders to text that nft loads and lists back the same way,
/// and encodes to the bytecode nft would generate for that text.
pub fn validate_table(table: &Table) -> Result<(), ModelError> {
    let tname = &table.name;
    if let Some(p) = text::name_problem(tname) {
        return Err(invalid(format!("table {tname}"), p));
    }
    let chains: BTreeMap<Name, bool> = table
        .chains
        .iter()
        .map(|(n, c)| (n.clone(), c.base.is_some()))
        .collect();
    for (name, set) in &table.sets {
        let obj = format!("table {tname}: set {name}");
        if *name != set.name {
            return Err(invalid(
                obj,
                format!("stored under another name than {}", set.name),
            ));
        }
        check_set_definition(&obj, set)?;
        for (key, verdict) in &set.elements {
            let eobj = || format!("{obj}: element {}", key_text(key));
            check_element(set, key, verdict.as_ref()).map_err(|r| invalid(eobj(), r))?;
            if let Some(v) = verdict {
                check_target(&eobj(), v, &chains)?;
            }
        }
        if set.interval
            && let Some((a, b)) = find_overlap(set.elements.keys())
        {
            return Err(ModelError::Overlap {
                object: format!("{obj}: element {}", key_text(b)),
                other: key_text(a),
            });
        }
    }
    for (name, chain) in &table.chains {
        let obj = format!("table {tname}: chain {name}");
        if *name != chain.name {
            return Err(invalid(
                obj,
                format!("stored under another name than {}", chain.name),
            ));
        }
        check_chain_definition(&obj, chain)?;
        for (i, rule) in chain.rules.iter().enumerate() {
            let robj = format!("{obj}: rule {i}");
            check_rule_shape(rule).map_err(|r| invalid(robj.clone(), r))?;
            check_rule_refs(&robj, table, rule)?;
        }
    }
    find_loop(table).map_or(Ok(()), Err)
}

fn check_chain_definition(obj: &str, chain: &Chain) -> Result<(), ModelError> {
    if let Some(p) = text::name_problem(&chain.name) {
        return Err(invalid(obj, p));
    }
    if let Some(base) = &chain.base
        && let super::model::Hook::Ingress { device } = &base.hook
        && let Some(p) = text::ifname_problem(device)
    {
        return Err(invalid(obj, format!("ingress device: {p}")));
    }
    Ok(())
}

/// Bytes a field takes in a concatenation (each field padded to a 32-bit register).
pub(crate) fn padded_len(t: KeyType) -> usize {
    match t {
        KeyType::Ipv6Addr | KeyType::Ifname => 16,
        _ => 4,
    }
}

/// The kernel has sixteen 32-bit registers for a concatenated key.
const MAX_KEY_BYTES: usize = 64;

fn check_key_types(types: &[KeyType], interval: bool) -> Result<(), String> {
    if types.is_empty() {
        return Err("key has no fields".into());
    }
    let width: usize = types.iter().map(|t| padded_len(*t)).sum();
    if width > MAX_KEY_BYTES {
        return Err(format!(
            "key is {width} bytes wide, more than the kernel's {MAX_KEY_BYTES}"
        ));
    }
    if interval && types.contains(&KeyType::Ifname) {
        return Err("interval sets of interface names are not supported".into());
    }
    Ok(())
}

fn check_set_definition(obj: &str, set: &Set) -> Result<(), ModelError> {
    if let Some(p) = text::name_problem(&set.name) {
        return Err(invalid(obj, p));
    }
    if let Some(c) = &set.comment
        && let Some(p) = text::comment_problem(c)
    {
        return Err(invalid(obj, p));
    }
    check_key_types(&set.key, set.interval).map_err(|r| invalid(obj, r))
}

fn part_type_ok(t: KeyType, p: &KeyPart) -> bool {
    matches!(
        (t, p),
        (KeyType::Ipv4Addr, KeyPart::V4(_) | KeyPart::V4Range(..))
            | (KeyType::Ipv6Addr, KeyPart::V6(_) | KeyPart::V6Range(..))
            | (KeyType::InetProto, KeyPart::Proto(_))
            | (
                KeyType::InetService,
                KeyPart::Port(_) | KeyPart::PortRange(..)
            )
            | (KeyType::Ifname, KeyPart::Ifname(_))
            | (KeyType::NfProto, KeyPart::NfProto(_))
            | (KeyType::Icmpv6Type, KeyPart::Icmpv6Type(_))
    )
}

fn is_range(p: &KeyPart) -> bool {
    matches!(
        p,
        KeyPart::V4Range(..) | KeyPart::V6Range(..) | KeyPart::PortRange(..)
    )
}

fn check_part(t: KeyType, p: &KeyPart) -> Result<(), String> {
    if !part_type_ok(t, p) {
        let mut s = String::new();
        let _ = text::write_part(p, &mut s);
        return Err(format!("value {s} is not of type {}", t.as_str()));
    }
    let (lo, hi) = bounds(p);
    if is_range(p) && lo >= hi {
        return Err(
            "range must have its start below its end (write a single value instead)".into(),
        );
    }
    match p {
        KeyPart::Ifname(n) => text::ifname_problem(n).map_or(Ok(()), |e| Err(e.into())),
        KeyPart::NfProto(v)
            if *v != super::model::nfproto::IPV4 && *v != super::model::nfproto::IPV6 =>
        {
            Err(format!(
                "meta nfproto value {v} is neither ipv4 (2) nor ipv6 (10)"
            ))
        }
        _ => Ok(()),
    }
}

pub(crate) fn check_key(types: &[KeyType], interval: bool, key: &Key) -> Result<(), String> {
    if key.0.len() != types.len() {
        return Err(format!(
            "key has {} fields, the set's type has {}",
            key.0.len(),
            types.len()
        ));
    }
    for (t, p) in types.iter().zip(&key.0) {
        check_part(*t, p)?;
        if !interval && is_range(p) {
            return Err("ranges need an interval set (flags interval)".into());
        }
    }
    Ok(())
}

fn check_element(set: &Set, key: &Key, verdict: Option<&Verdict>) -> Result<(), String> {
    check_key(&set.key, set.interval, key)?;
    match (set.data, verdict) {
        (Some(_), None) => Err("map element has no verdict".into()),
        (None, Some(_)) => Err("set element has a verdict but the set is not a map".into()),
        _ => Ok(()),
    }
}

fn check_target(obj: &str, v: &Verdict, chains: &BTreeMap<Name, bool>) -> Result<(), ModelError> {
    if let Verdict::Jump(c) | Verdict::Goto(c) = v {
        match chains.get(c) {
            None => {
                return Err(ModelError::Missing {
                    object: obj.to_string(),
                    missing: format!("chain {c}"),
                });
            }
            Some(true) => {
                return Err(invalid(obj, format!("cannot jump to base chain {c}")));
            }
            Some(false) => {}
        }
    }
    Ok(())
}

/// Numeric bounds of a key part, for overlap checks.
fn bounds(p: &KeyPart) -> (u128, u128) {
    match p {
        KeyPart::V4(a) => (u32::from(*a).into(), u32::from(*a).into()),
        KeyPart::V4Range(a, b) => (u32::from(*a).into(), u32::from(*b).into()),
        KeyPart::V6(a) => (u128::from(*a), u128::from(*a)),
        KeyPart::V6Range(a, b) => (u128::from(*a), u128::from(*b)),
        KeyPart::Proto(v) | KeyPart::NfProto(v) | KeyPart::Icmpv6Type(v) => {
            ((*v).into(), (*v).into())
        }
        KeyPart::Port(v) => ((*v).into(), (*v).into()),
        KeyPart::PortRange(a, b) => ((*a).into(), (*b).into()),
        // Interface names never appear in interval sets; compare them as points.
        KeyPart::Ifname(n) => {
            let mut b = [0u8; 16];
            let len = n.len().min(16);
            b[..len].copy_from_slice(&n.as_bytes()[..len]);
            let v = u128::from_be_bytes(b);
            (v, v)
        }
    }
}

/// Two keys of an interval set that overlap, if any (first the earlier one).
fn find_overlap<'a>(keys: impl Iterator<Item = &'a Key>) -> Option<(&'a Key, &'a Key)> {
    let mut items: Vec<(Vec<(u128, u128)>, &Key)> = keys
        .map(|k| (k.0.iter().map(bounds).collect(), k))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    // Sweep over the first field; compare only with elements whose first field still reaches.
    let mut active: Vec<usize> = Vec::new();
    for i in 0..items.len() {
        let lo0 = items[i].0.first().map_or(0, |b| b.0);
        active.retain(|&a| items[a].0.first().map_or(0, |b| b.1) >= lo0);
        for &a in &active {
            let overlap = items[a]
                .0
                .iter()
                .zip(&items[i].0)
                .all(|(x, y)| x.0 <= y.1 && y.0 <= x.1);
            if overlap {
                return Some((items[a].1, items[i].1));
            }
        }
        active.push(i);
    }
    None
}

fn is_v4_field(f: Field) -> bool {
    matches!(f, Field::IpSaddr | Field::IpDaddr)
}

fn is_v6_field(f: Field) -> bool {
    matches!(f, Field::Ip6Saddr | Field::Ip6Daddr | Field::Icmpv6Type)
}

/// The fields a match (or, past the last match, the vmap action) reads, in order.
fn match_fields(m: &Match) -> &[Field] {
    match m {
        Match::CtState(_) | Match::TcpFlags { .. } => &[],
        Match::Cmp { field, .. } => std::slice::from_ref(field),
        Match::Lookup { key, .. } => key,
    }
}

/// Checks a rule on its own (without the table): the shape rules that make its text, its
/// bytecode and what nft lists back agree.
pub(crate) fn check_rule_shape(rule: &Rule) -> Result<(), String> {
    if let Some(c) = &rule.comment
        && let Some(p) = text::comment_problem(c)
    {
        return Err(p.into());
    }
    if rule.matches.is_empty() && !rule.counter && rule.action == Action::Continue {
        return Err("rule is empty".into());
    }
    let mut all: Vec<&[Field]> = rule.matches.iter().map(match_fields).collect();
    if let Action::VMap { key, .. } = &rule.action {
        if key.is_empty() {
            return Err("vmap key has no fields".into());
        }
        check_key_types(&key.iter().map(|f| f.key_type()).collect::<Vec<_>>(), false)?;
        all.push(key);
    }
    let flat: Vec<Field> = all.iter().flat_map(|f| f.iter().copied()).collect();
    if flat.iter().any(|f| is_v4_field(*f)) && flat.iter().any(|f| is_v6_field(*f)) {
        return Err("rule mixes IPv4 and IPv6 fields".into());
    }
    for (i, m) in rule.matches.iter().enumerate() {
        let later = || all[i + 1..].iter().flat_map(|f| f.iter().copied());
        match m {
            Match::CtState(s) => {
                let known = CtStates::INVALID
                    .union(CtStates::ESTABLISHED)
                    .union(CtStates::RELATED)
                    .union(CtStates::NEW)
                    .union(CtStates::UNTRACKED);
                if s.0 == 0 || s.0 & !known.0 != 0 {
                    return Err(format!("ct state bits {:#x} are empty or unknown", s.0));
                }
            }
            Match::TcpFlags { mask, value, .. } => {
                // The shapes nft lists as `tcp flags [!=] <value> / <mask>`.
                if mask.count_ones() < 2 || *value == 0 || value & !mask != 0 {
                    return Err(format!(
                        "tcp flags {value:#04x} / {mask:#04x}: the mask needs two bits or more, \
                         the value some bits of the mask"
                    ));
                }
                // `tcp flags` implies `meta l4proto tcp`; nft folds or drops protocol checks
                // and prints later ports as `tcp dport`.
                if flat
                    .iter()
                    .any(|f| matches!(f, Field::L4Proto | Field::ThDport | Field::Icmpv6Type))
                {
                    return Err(
                        "tcp flags cannot share a rule with meta l4proto, th dport or icmpv6 type"
                            .into(),
                    );
                }
            }
            Match::Cmp {
                field,
                negate,
                value,
            } => {
                check_part(field.key_type(), value)?;
                if *field == Field::NfProto
                    && !*negate
                    && later().any(|f| is_v4_field(f) || is_v6_field(f))
                {
                    return Err(
                        "meta nfproto before an ip/ip6/icmpv6 field is implied by it (nft drops it)"
                            .into(),
                    );
                }
                if let (Field::L4Proto, false, KeyPart::Proto(p)) = (field, negate, value) {
                    if later().any(|f| f == Field::Icmpv6Type) {
                        return Err(
                            "meta l4proto before icmpv6 type is implied by it or conflicts with it"
                                .into(),
                        );
                    }
                    let dport_later = all[i + 1..].iter().any(|f| f.contains(&Field::ThDport));
                    if dport_later && text::dport_protocol_name(*p).is_none() {
                        return Err(format!(
                            "th dport after meta l4proto {p}: only tcp, udp and sctp have a destination port"
                        ));
                    }
                    if all[i + 1..]
                        .iter()
                        .any(|f| f.iter().skip(1).any(|g| *g == Field::ThDport))
                    {
                        return Err(
                            "th dport after meta l4proto must lead its concatenation".into()
                        );
                    }
                    // nft prints `tcp dport` and puts the protocol check right before the
                    // port load, so the model must have it there too.
                    let next_is_dport = if i + 1 < rule.matches.len() {
                        all[i + 1].first() == Some(&Field::ThDport)
                    } else {
                        !rule.counter
                            && all.get(i + 1).and_then(|f| f.first()) == Some(&Field::ThDport)
                    };
                    if dport_later && !next_is_dport {
                        return Err(
                            "meta l4proto must come right before the th dport it qualifies".into(),
                        );
                    }
                }
            }
            Match::Lookup { key, set, .. } => {
                let types: Vec<KeyType> = key.iter().map(|f| f.key_type()).collect();
                match set {
                    SetRef::Named(_) => check_key_types(&types, false)?,
                    SetRef::Anonymous(anon) => check_anon(&types, anon)?,
                }
            }
        }
    }
    Ok(())
}

fn check_anon(types: &[KeyType], anon: &AnonSet) -> Result<(), String> {
    check_key_types(types, anon.interval)?;
    if anon.elements.is_empty() {
        return Err("anonymous set is empty".into());
    }
    if types.len() == 1 && anon.elements.len() == 1 {
        return Err(
            "anonymous set with one element: nft turns it into a comparison, use Cmp".into(),
        );
    }
    let has_range = anon.elements.iter().any(|k| k.0.iter().any(is_range));
    if anon.interval != has_range {
        return Err(
            "anonymous set: interval must be set exactly when an element holds a range".into(),
        );
    }
    for k in &anon.elements {
        check_key(types, anon.interval, k).map_err(|e| format!("anonymous set element: {e}"))?;
    }
    if anon.elements.windows(2).any(|w| w[0] >= w[1]) {
        return Err("anonymous set elements must be sorted and unique".into());
    }
    if anon.interval
        && let Some((a, b)) = find_overlap(anon.elements.iter())
    {
        return Err(format!(
            "anonymous set element {} overlaps {}",
            key_text(b),
            key_text(a)
        ));
    }
    Ok(())
}

/// Checks what a rule refers to: named sets and maps of the right type, chains to jump to.
fn check_rule_refs(obj: &str, t: &Table, rule: &Rule) -> Result<(), ModelError> {
    let find_set = |name: &Name| {
        t.sets.get(name).ok_or_else(|| ModelError::Missing {
            object: obj.to_string(),
            missing: format!("set {name}"),
        })
    };
    let types_of = |key: &[Field]| key.iter().map(|f| f.key_type()).collect::<Vec<_>>();
    for m in &rule.matches {
        if let Match::Lookup {
            key,
            set: SetRef::Named(name),
            ..
        } = m
        {
            let set = find_set(name)?;
            if set.data.is_some() {
                return Err(invalid(obj, format!("lookup in map {name}: use vmap")));
            }
            if set.key != types_of(key) {
                return Err(invalid(
                    obj,
                    format!("lookup key does not match the type of set {name}"),
                ));
            }
        }
    }
    match &rule.action {
        Action::Continue => Ok(()),
        Action::Verdict(v) => {
            let chains: BTreeMap<Name, bool> = match v {
                Verdict::Jump(c) | Verdict::Goto(c) => t
                    .chains
                    .get(c)
                    .map(|ch| (c.clone(), ch.base.is_some()))
                    .into_iter()
                    .collect(),
                _ => BTreeMap::new(),
            };
            check_target(obj, v, &chains)
        }
        Action::VMap { key, map } => {
            let set = find_set(map)?;
            if set.data.is_none() {
                return Err(invalid(obj, format!("vmap on {map}, which is not a map")));
            }
            if set.key != types_of(key) {
                return Err(invalid(
                    obj,
                    format!("vmap key does not match the type of map {map}"),
                ));
            }
            Ok(())
        }
    }
}

/// A loop of jumps (the kernel refuses those with ELOOP), if any.
fn find_loop(t: &Table) -> Option<ModelError> {
    // Chains each map can send a packet to.
    let mut map_targets: BTreeMap<&Name, BTreeSet<&Name>> = BTreeMap::new();
    for (name, set) in &t.sets {
        if set.data.is_some() {
            let targets = set
                .elements
                .values()
                .filter_map(|v| match v {
                    Some(Verdict::Jump(c) | Verdict::Goto(c)) => Some(c),
                    _ => None,
                })
                .collect();
            map_targets.insert(name, targets);
        }
    }
    fn edges<'t>(
        chain: &'t Chain,
        map_targets: &BTreeMap<&Name, BTreeSet<&'t Name>>,
    ) -> Vec<&'t Name> {
        let mut out = Vec::new();
        for rule in &chain.rules {
            match &rule.action {
                Action::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => out.push(c),
                Action::VMap { map, .. } => {
                    if let Some(ts) = map_targets.get(map) {
                        out.extend(ts.iter().copied());
                    }
                }
                _ => {}
            }
        }
        out
    }
    // Iterative DFS with colours: 1 = on stack, 2 = done.
    let mut colour: BTreeMap<&Name, u8> = BTreeMap::new();
    for start in t.chains.keys() {
        if colour.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(&Name, Vec<&Name>)> = Vec::new();
        colour.insert(start, 1);
        stack.push((
            start,
            t.chains
                .get(start)
                .map(|c| edges(c, &map_targets))
                .unwrap_or_default(),
        ));
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            match next.pop() {
                Some(n) => match colour.get(n) {
                    Some(1) => {
                        return Some(ModelError::Loop {
                            object: format!("table {}: chain {node}", t.name),
                            chain: n.to_string(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        colour.insert(n, 1);
                        let e = t
                            .chains
                            .get(n)
                            .map(|c| edges(c, &map_targets))
                            .unwrap_or_default();
                        stack.push((n, e));
                    }
                },
                None => {
                    colour.insert(node, 2);
                    stack.pop();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    //! Address plan: local pods 10.0.0.0/24, peers 10.1.0.0/16; chains `np_*` are policy rule
    //! chains, `forward` the base chain.
    use super::*;
    use crate::nft::model::{BaseChain, ChainPolicy, Hook, KeyType as T, Set};
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> KeyPart {
        KeyPart::V4(s.parse().unwrap())
    }
    fn net(a: &str, b: &str) -> KeyPart {
        KeyPart::V4Range(a.parse::<Ipv4Addr>().unwrap(), b.parse().unwrap())
    }
    fn key(parts: Vec<KeyPart>) -> Key {
        Key(parts)
    }
    fn goto(c: &str) -> Option<Verdict> {
        Some(Verdict::Goto(c.into()))
    }

    fn table() -> Table {
        let mut t = Table::new("nftpol");
        let mut fwd = Chain::base(
            "forward",
            BaseChain {
                hook: Hook::Forward,
                priority: 0,
                policy: ChainPolicy::Accept,
            },
        );
        fwd.rules.push(Rule::new(
            vec![],
            Action::VMap {
                key: vec![
                    Field::IpDaddr,
                    Field::IpSaddr,
                    Field::L4Proto,
                    Field::ThDport,
                ],
                map: "ingress_peer_port_v4".into(),
            },
        ));
        t.chains.insert("forward".into(), fwd);
        for c in ["np_a", "np_b"] {
            let mut ch = Chain::regular(c);
            ch.rules
                .push(Rule::new(vec![], Action::Verdict(Verdict::Accept)).counted());
            t.chains.insert(c.into(), ch);
        }
        let mut m = Set::verdict_map(
            "ingress_peer_port_v4",
            vec![T::Ipv4Addr, T::Ipv4Addr, T::InetProto, T::InetService],
        );
        m.elements.insert(
            key(vec![
                ip("10.0.0.1"),
                ip("10.1.0.1"),
                KeyPart::Proto(6),
                KeyPart::Port(80),
            ]),
            goto("np_a"),
        );
        m.elements.insert(
            key(vec![
                ip("10.0.0.1"),
                ip("10.1.0.2"),
                KeyPart::Proto(6),
                KeyPart::Port(80),
            ]),
            goto("np_b"),
        );
        t.sets.insert(m.name.clone(), m);
        let mut c = Set::new("cidrs", vec![T::Ipv4Addr]).with_interval();
        c.elements
            .insert(key(vec![net("10.1.0.0", "10.1.255.255")]), None);
        t.sets.insert(c.name.clone(), c);
        t
    }

    fn map_mut<'a>(t: &'a mut Table, name: &str) -> &'a mut Set {
        t.sets.get_mut(name).unwrap()
    }

    #[test]
    fn fixture_is_valid() {
        validate_table(&table()).unwrap();
    }

    #[test]
    fn identical_tables_give_an_empty_transaction() {
        let t = table();
        let tx = diff(Some(&t), &t);
        assert!(tx.is_empty(), "{tx:?}");
    }

    #[test]
    fn missing_table_is_created_in_full() {
        let t = table();
        let tx = diff(None, &t);
        assert!(tx.create_table && !tx.replace);
        assert_eq!(tx.stats().elements_added, 3);
        assert_eq!(tx.stats().rules_added, 3);
        assert!(tx.add_chains.iter().all(|c| c.rules.is_empty()));
        let mut live = None;
        apply_to(&mut live, &tx).unwrap();
        assert_eq!(live.as_ref(), Some(&t));
    }

    #[test]
    fn changed_verdict_is_delete_plus_add_of_that_element_only() {
        let cur = table();
        let mut want = cur.clone();
        let k = key(vec![
            ip("10.0.0.1"),
            ip("10.1.0.1"),
            KeyPart::Proto(6),
            KeyPart::Port(80),
        ]);
        map_mut(&mut want, "ingress_peer_port_v4")
            .elements
            .insert(k.clone(), goto("np_b"));
        let tx = diff(Some(&cur), &want);
        assert_eq!(
            tx.delete_elements.get("ingress_peer_port_v4"),
            Some(&vec![k.clone()])
        );
        assert_eq!(
            tx.add_elements.get("ingress_peer_port_v4"),
            Some(&vec![(k, goto("np_b"))])
        );
        let s = tx.stats();
        assert_eq!(
            (s.rules_added, s.chains_flushed, s.elements_added),
            (0, 0, 1)
        );
        let mut live = Some(cur);
        apply_to(&mut live, &tx).unwrap();
        assert_eq!(live, Some(want));
    }

    #[test]
    fn changed_chain_is_flushed_and_refilled_and_dropped_chain_deleted() {
        let cur = table();
        let mut want = cur.clone();
        want.chains.get_mut("np_a").unwrap().rules[0].comment = Some("ns/p ingress rule 0".into());
        map_mut(&mut want, "ingress_peer_port_v4")
            .elements
            .retain(|_, v| *v != goto("np_b"));
        want.chains.remove("np_b");
        let tx = diff(Some(&cur), &want);
        assert_eq!(
            tx.flush_chains,
            vec![Name::from("np_a"), Name::from("np_b")]
        );
        assert_eq!(tx.delete_chains, vec![Name::from("np_b")]);
        assert_eq!(tx.add_rules.len(), 1);
        let mut live = Some(cur);
        apply_to(&mut live, &tx).unwrap();
        assert_eq!(live, Some(want));
    }

    #[test]
    fn redefined_set_or_base_chain_replaces_the_table() {
        let cur = table();
        let mut want = cur.clone();
        map_mut(&mut want, "cidrs").comment = Some("ipBlocks".into());
        let tx = diff(Some(&cur), &want);
        assert!(tx.replace && tx.create_table);
        let mut live = Some(cur.clone());
        apply_to(&mut live, &tx).unwrap();
        assert_eq!(live.as_ref(), Some(&want));

        let mut want = cur.clone();
        want.chains
            .get_mut("forward")
            .unwrap()
            .base
            .as_mut()
            .unwrap()
            .policy = ChainPolicy::Drop;
        assert!(diff(Some(&cur), &want).replace);
    }

    fn expect_err(live: &Option<Table>, tx: &Transaction, kind: ErrorKind, needle: &str) {
        let mut work = live.clone();
        let err = apply_to(&mut work, tx).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        assert_eq!(&work, live, "a failed transaction must change nothing");
    }

    #[test]
    fn kernel_refusals_are_reproduced_all_or_nothing() {
        let live = Some(table());
        let mk = || Transaction::new("nftpol");
        let k = |a: &str| {
            key(vec![
                ip("10.0.0.9"),
                ip(a),
                KeyPart::Proto(6),
                KeyPart::Port(80),
            ])
        };

        // An element added first, then a failure later: nothing may stick.
        let mut tx = mk();
        tx.add_elements.insert(
            "ingress_peer_port_v4".into(),
            vec![(k("10.1.0.7"), goto("np_missing"))],
        );
        expect_err(&live, &tx, ErrorKind::Missing, "chain np_missing");

        let mut tx = mk();
        tx.add_elements.insert(
            "ingress_peer_port_v4".into(),
            vec![(
                key(vec![
                    ip("10.0.0.1"),
                    ip("10.1.0.1"),
                    KeyPart::Proto(6),
                    KeyPart::Port(80),
                ]),
                goto("np_a"),
            )],
        );
        expect_err(
            &live,
            &tx,
            ErrorKind::Exists,
            "element 10.0.0.1 . 10.1.0.1 . tcp . 80",
        );

        let mut tx = mk();
        tx.delete_elements
            .insert("ingress_peer_port_v4".into(), vec![k("10.1.0.7")]);
        expect_err(
            &live,
            &tx,
            ErrorKind::Missing,
            "element 10.0.0.9 . 10.1.0.7 . tcp . 80",
        );

        let mut tx = mk();
        tx.add_rules.push((
            "np_a".into(),
            vec![Rule::new(
                vec![Match::Lookup {
                    key: vec![Field::IpSaddr],
                    set: SetRef::Named("nope".into()),
                    negate: false,
                }],
                Action::Verdict(Verdict::Drop),
            )],
        ));
        expect_err(&live, &tx, ErrorKind::Missing, "set nope");

        let mut tx = mk();
        tx.delete_sets.push("ingress_peer_port_v4".into());
        expect_err(&live, &tx, ErrorKind::Busy, "chain forward rule 0");

        let mut tx = mk();
        tx.delete_chains.push("np_a".into());
        tx.flush_chains.push("np_a".into());
        expect_err(&live, &tx, ErrorKind::Busy, "map ingress_peer_port_v4");

        let mut tx = mk();
        tx.add_elements.insert(
            "ingress_peer_port_v4".into(),
            vec![(key(vec![ip("10.0.0.9"), ip("10.1.0.1")]), goto("np_a"))],
        );
        expect_err(&live, &tx, ErrorKind::Invalid, "key has 2 fields");

        let mut tx = mk();
        tx.add_elements.insert(
            "ingress_peer_port_v4".into(),
            vec![(
                key(vec![
                    ip("10.0.0.9"),
                    net("10.2.0.0", "10.2.0.255"),
                    KeyPart::Proto(6),
                    KeyPart::Port(80),
                ]),
                goto("np_a"),
            )],
        );
        expect_err(&live, &tx, ErrorKind::Invalid, "interval set");

        let mut tx = mk();
        tx.add_elements.insert(
            "cidrs".into(),
            vec![(key(vec![net("10.1.128.0", "10.2.0.255")]), None)],
        );
        expect_err(
            &live,
            &tx,
            ErrorKind::Overlap,
            "overlaps element 10.1.0.0/16",
        );

        let mut tx = mk();
        tx.add_rules.push((
            "np_b".into(),
            vec![Rule::new(
                vec![],
                Action::Verdict(Verdict::Jump("np_b".into())),
            )],
        ));
        expect_err(&live, &tx, ErrorKind::Loop, "np_b");

        let mut tx = mk();
        tx.add_chains.push(Chain::regular("np_a"));
        expect_err(&live, &tx, ErrorKind::Exists, "chain np_a");

        let mut tx = Transaction::new("other");
        tx.flush_chains.push("x".into());
        expect_err(&None, &tx, ErrorKind::Missing, "table inet other");
    }

    #[test]
    fn rules_nft_would_print_differently_are_refused() {
        let cmp = |field, value| Match::Cmp {
            field,
            negate: false,
            value,
        };
        let bad = [
            vec![
                cmp(Field::NfProto, KeyPart::NfProto(2)),
                cmp(Field::IpSaddr, ip("1.2.3.4")),
            ],
            vec![
                cmp(Field::L4Proto, KeyPart::Proto(58)),
                cmp(Field::Icmpv6Type, KeyPart::Icmpv6Type(1)),
            ],
            vec![
                cmp(Field::L4Proto, KeyPart::Proto(1)),
                cmp(Field::ThDport, KeyPart::Port(80)),
            ],
            vec![
                cmp(Field::IpSaddr, ip("1.2.3.4")),
                cmp(Field::Icmpv6Type, KeyPart::Icmpv6Type(1)),
            ],
            vec![Match::Lookup {
                key: vec![Field::IpSaddr],
                set: SetRef::Anonymous(AnonSet {
                    interval: false,
                    elements: vec![key(vec![ip("1.1.1.1")])],
                }),
                negate: false,
            }],
            vec![Match::Lookup {
                key: vec![Field::IpSaddr],
                set: SetRef::Anonymous(AnonSet {
                    interval: false,
                    elements: vec![key(vec![ip("1.1.1.2")]), key(vec![ip("1.1.1.1")])],
                }),
                negate: false,
            }],
            vec![cmp(Field::ThDport, KeyPart::PortRange(80, 80))],
            vec![
                cmp(Field::L4Proto, KeyPart::Proto(6)),
                cmp(Field::IpSaddr, ip("1.2.3.4")),
                cmp(Field::ThDport, KeyPart::Port(80)),
            ],
            // tcp flags: nft lists these in other shapes, or folds the protocol away.
            vec![Match::TcpFlags {
                mask: 0x02,
                value: 0x02,
                negate: false,
            }],
            vec![Match::TcpFlags {
                mask: 0x12,
                value: 0x00,
                negate: false,
            }],
            vec![Match::TcpFlags {
                mask: 0x12,
                value: 0x01,
                negate: false,
            }],
            vec![
                Match::TcpFlags {
                    mask: 0x12,
                    value: 0x02,
                    negate: false,
                },
                cmp(Field::L4Proto, KeyPart::Proto(6)),
            ],
            vec![
                Match::TcpFlags {
                    mask: 0x12,
                    value: 0x02,
                    negate: false,
                },
                cmp(Field::ThDport, KeyPart::Port(80)),
            ],
        ];
        for m in bad {
            let r = Rule::new(m.clone(), Action::Verdict(Verdict::Accept));
            assert!(check_rule_shape(&r).is_err(), "{m:?} accepted");
        }
        let good = Rule::new(
            vec![
                cmp(Field::L4Proto, KeyPart::Proto(6)),
                cmp(Field::ThDport, KeyPart::Port(80)),
            ],
            Action::Verdict(Verdict::Accept),
        );
        check_rule_shape(&good).unwrap();
        let good = Rule::new(
            vec![
                Match::CtState(CtStates::ESTABLISHED),
                Match::TcpFlags {
                    mask: 0x12,
                    value: 0x02,
                    negate: true,
                },
                cmp(Field::IpSaddr, ip("1.2.3.4")),
            ],
            Action::Verdict(Verdict::Accept),
        );
        check_rule_shape(&good).unwrap();
    }
}
