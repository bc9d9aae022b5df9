//! Address and port range arithmetic for the interval maps.
//!
//! Interval maps must not hold overlapping elements (the kernel rejects some overlaps and
//! resolves others by insertion order), so every pod's ipBlock and port-range allowances are
//! partitioned here into disjoint pieces, each labelled with the first rule that allows it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::layout::Family;
use crate::core::policy::IpBlock;
use crate::nft::model::KeyPart;

/// An inclusive range of addresses of one family, as integers (IPv4 in the low 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub lo: u128,
    pub hi: u128,
}

impl AddrRange {
    pub fn single(ip: &IpAddr) -> (Family, AddrRange) {
        let v = addr_value(ip);
        (Family::of(ip), AddrRange { lo: v, hi: v })
    }

    /// The whole address space of a family (`0.0.0.0/0`, `::/0`).
    pub fn all(fam: Family) -> AddrRange {
        AddrRange {
            lo: 0,
            hi: max_of(fam),
        }
    }

    pub fn of_net(net: &IpNet) -> (Family, AddrRange) {
        let net = net.trunc();
        let fam = Family::of(&net.network());
        (
            fam,
            AddrRange {
                lo: addr_value(&net.network()),
                hi: addr_value(&net.broadcast()),
            },
        )
    }

    /// The key part for this range: an exact address when it holds one address.
    pub fn key_part(&self, fam: Family) -> KeyPart {
        match fam {
            Family::V4 => {
                let (lo, hi) = (
                    Ipv4Addr::from(self.lo as u32),
                    Ipv4Addr::from(self.hi as u32),
                );
                if lo == hi {
                    KeyPart::V4(lo)
                } else {
                    KeyPart::V4Range(lo, hi)
                }
            }
            Family::V6 => {
                let (lo, hi) = (Ipv6Addr::from(self.lo), Ipv6Addr::from(self.hi));
                if lo == hi {
                    KeyPart::V6(lo)
                } else {
                    KeyPart::V6Range(lo, hi)
                }
            }
        }
    }
}

pub fn addr_value(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn max_of(fam: Family) -> u128 {
    match fam {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

/// `cidr` minus every `except`, as sorted disjoint ranges.
pub fn block_ranges(block: &IpBlock) -> (Family, Vec<AddrRange>) {
    let (fam, whole) = AddrRange::of_net(&block.cidr);
    let mut out = vec![whole];
    for ex in &block.except {
        let (efam, e) = AddrRange::of_net(ex);
        if efam != fam {
            continue;
        }
        out = out.into_iter().flat_map(|r| subtract(r, e)).collect();
    }
    (fam, out)
}

fn subtract(r: AddrRange, e: AddrRange) -> Vec<AddrRange> {
    if e.hi < r.lo || e.lo > r.hi {
        return vec![r];
    }
    let mut out = Vec::with_capacity(2);
    if e.lo > r.lo {
        out.push(AddrRange {
            lo: r.lo,
            hi: e.lo - 1,
        });
    }
    if e.hi < r.hi {
        out.push(AddrRange {
            lo: e.hi + 1,
            hi: r.hi,
        });
    }
    out
}

/// Partitions labelled ranges into disjoint ranges; every point gets the smallest label of
/// the ranges that cover it; neighbouring pieces with the same label are merged.
pub fn partition<L: Ord + Copy>(ranges: &[(AddrRange, L)]) -> Vec<(AddrRange, L)> {
    // Sweep over boundaries. An end boundary is `hi + 1`, which only overflows for a range
    // reaching the top of the IPv6 space: those simply never end.
    let mut events: BTreeMap<u128, (Vec<L>, Vec<L>)> = BTreeMap::new();
    for (r, l) in ranges {
        events.entry(r.lo).or_default().0.push(*l);
        if let Some(end) = r.hi.checked_add(1) {
            events.entry(end).or_default().1.push(*l);
        }
    }
    let mut active: BTreeMap<L, usize> = BTreeMap::new();
    let mut out: Vec<(AddrRange, L)> = Vec::new();
    let mut open: Option<(u128, L)> = None;
    for (point, (starts, ends)) in events {
        for l in ends {
            if let Some(c) = active.get_mut(&l) {
                *c -= 1;
                if *c == 0 {
                    active.remove(&l);
                }
            }
        }
        for l in starts {
            *active.entry(l).or_insert(0) += 1;
        }
        let now = active.keys().next().copied();
        match (open, now) {
            (Some((_, ol)), Some(nl)) if ol == nl => {}
            _ => {
                if let Some((start, ol)) = open.take() {
                    push_merged(
                        &mut out,
                        AddrRange {
                            lo: start,
                            hi: point - 1,
                        },
                        ol,
                    );
                }
                open = now.map(|nl| (point, nl));
            }
        }
    }
    if let Some((start, l)) = open {
        push_merged(
            &mut out,
            AddrRange {
                lo: start,
                hi: u128::MAX,
            },
            l,
        );
    }
    out
}

fn push_merged<L: Ord + Copy>(out: &mut Vec<(AddrRange, L)>, r: AddrRange, l: L) {
    if let Some((last, ll)) = out.last_mut()
        && *ll == l
        && last.hi.checked_add(1) == Some(r.lo)
    {
        last.hi = r.hi;
        return;
    }
    out.push((r, l));
}

/// An inclusive port range.
pub type PortRange = (u16, u16);

/// A port slab's address partition, where its pieces start in the output, and its last port.
type Slab<L> = (Vec<(AddrRange, L)>, usize, u32);

/// Partitions labelled (address range x port range) rectangles into disjoint rectangles; every
/// point gets the smallest label covering it.
pub fn partition_2d<L: Ord + Copy>(
    rects: &[(AddrRange, PortRange, L)],
) -> Vec<(AddrRange, PortRange, L)> {
    let mut bounds: Vec<u32> = Vec::with_capacity(rects.len() * 2);
    for (_, (plo, phi), _) in rects {
        bounds.push(u32::from(*plo));
        bounds.push(u32::from(*phi) + 1);
    }
    bounds.sort_unstable();
    bounds.dedup();
    let mut out: Vec<(AddrRange, PortRange, L)> = Vec::new();
    // The previous port slab's partition and the index in `out` where its pieces start, to
    // merge consecutive slabs with identical address partitions.
    let mut prev: Option<Slab<L>> = None;
    for w in bounds.windows(2) {
        let (slo, shi) = (w[0], w[1] - 1);
        let covering: Vec<(AddrRange, L)> = rects
            .iter()
            .filter(|(_, (plo, phi), _)| u32::from(*plo) <= slo && shi <= u32::from(*phi))
            .map(|(a, _, l)| (*a, *l))
            .collect();
        let parts = partition(&covering);
        if let Some((pparts, start, pend)) = &prev
            && *pparts == parts
            && *pend + 1 == slo
            && !parts.is_empty()
        {
            for piece in &mut out[*start..] {
                piece.1.1 = shi as u16;
            }
            let start = *start;
            prev = Some((parts, start, shi));
            continue;
        }
        let start = out.len();
        for (a, l) in &parts {
            out.push((*a, (slo as u16, shi as u16), *l));
        }
        prev = Some((parts, start, shi));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lo: u128, hi: u128) -> AddrRange {
        AddrRange { lo, hi }
    }

    #[test]
    fn cidr_minus_except_leaves_the_gaps() {
        let block = IpBlock {
            cidr: "172.17.0.0/16".parse().unwrap(),
            except: vec!["172.17.1.0/24".parse().unwrap()],
        };
        let (fam, ranges) = block_ranges(&block);
        assert_eq!(fam, Family::V4);
        let base = u128::from(u32::from(Ipv4Addr::new(172, 17, 0, 0)));
        assert_eq!(
            ranges,
            vec![r(base, base + 255), r(base + 512, base + 65535)]
        );
    }

    #[test]
    fn partition_labels_each_point_with_the_smallest_rank() {
        let out = partition(&[(r(0, 100), 2), (r(50, 60), 1), (r(90, 200), 3)]);
        assert_eq!(
            out,
            vec![
                (r(0, 49), 2),
                (r(50, 60), 1),
                (r(61, 100), 2),
                (r(101, 200), 3)
            ]
        );
    }

    #[test]
    fn partition_merges_touching_pieces_with_equal_labels() {
        let out = partition(&[(r(0, 9), 1), (r(10, 19), 1), (r(5, 12), 1)]);
        assert_eq!(out, vec![(r(0, 19), 1)]);
    }

    #[test]
    fn partition_handles_the_whole_ipv6_space() {
        let out = partition(&[(AddrRange::all(Family::V6), 1), (r(5, 5), 0)]);
        assert_eq!(out, vec![(r(0, 4), 1), (r(5, 5), 0), (r(6, u128::MAX), 1)]);
    }

    #[test]
    fn partition_2d_is_disjoint_and_complete() {
        let rects = [
            (r(0, 255), (80, 90), 1),
            (r(10, 10), (85, 100), 0),
            (r(0, 255), (91, 91), 1),
        ];
        let out = partition_2d(&rects);
        // Every point is covered by exactly one output piece with the right label.
        for a in [0u128, 10, 11, 255] {
            for p in [79u16, 80, 84, 85, 90, 91, 92, 100, 101] {
                let want = rects
                    .iter()
                    .filter(|(ar, (lo, hi), _)| ar.lo <= a && a <= ar.hi && *lo <= p && p <= *hi)
                    .map(|x| x.2)
                    .min();
                let got: Vec<_> = out
                    .iter()
                    .filter(|(ar, (lo, hi), _)| ar.lo <= a && a <= ar.hi && *lo <= p && p <= *hi)
                    .map(|x| x.2)
                    .collect();
                assert!(got.len() <= 1, "overlap at {a}/{p}: {out:?}");
                assert_eq!(got.first().copied(), want, "at {a}/{p}: {out:?}");
            }
        }
        // Ports 85-90 and 91 have the same address partition, so they merge into one slab.
        assert!(out.contains(&(r(0, 9), (85, 91), 1)), "{out:?}");
        assert_eq!(out.len(), 5, "{out:?}");
    }
}
