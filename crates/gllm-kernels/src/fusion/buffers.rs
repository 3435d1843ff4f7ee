//! The scratchpad planner: one arena for every intermediate that has to touch
//! memory, with buffers reused as soon as their last reader has run.
//!
//! Lifetimes are measured in groups (a buffer is live from the group that
//! writes it to the last group that reads it, inclusive). An elementwise
//! group may write its output over an input of the same size that dies in
//! that group (in place: each element is read before it is written). The
//! remaining buffers are placed largest first, each at the lowest 64-byte
//! aligned offset that does not overlap a buffer live at the same time.

use super::{FusionGroup, FusionStrategy, ProducerPlacement, RowProducer};
use crate::graph::{SemanticGraph, TensorId};
use crate::trace::OpClass;

/// Buffers start on cache-line (and zmm) boundaries.
pub const BUFFER_ALIGN: usize = 64;

/// What a scratchpad region holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferPurpose {
    /// An intermediate tensor passed between groups (or read as an extra
    /// input inside its group).
    Tensor(TensorId),
    /// A tile-level-fused producer's MC-row tiles, private to group `group`.
    TileScratch { group: usize },
}

/// One region of the scratchpad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferAlloc {
    pub purpose: BufferPurpose,
    pub offset: usize,
    pub size_bytes: usize,
    /// First and last group (inclusive) during which the region is live.
    pub first_group: usize,
    pub last_group: usize,
    /// Buffers with the same slot share memory on purpose (in-place reuse);
    /// different slots never overlap while both are live.
    pub slot: usize,
    /// The input this buffer overwrites in place, if any.
    pub in_place_of: Option<TensorId>,
}

impl BufferAlloc {
    pub fn end(&self) -> usize {
        self.offset + self.size_bytes
    }
}

/// Where every intermediate lives.
#[derive(Debug, Clone, Default)]
pub struct BufferPlan {
    pub allocations: Vec<BufferAlloc>,
    /// Size of the arena the runtime allocates.
    pub scratchpad_bytes: usize,
    /// What the buffers would take without any reuse (the sum of aligned sizes).
    pub naive_bytes: usize,
    /// Free bytes reserved after every slot (`FusionOptions::arena_guard_bytes`).
    pub guard_bytes: usize,
}

impl BufferPlan {
    /// The reserved gaps after every slot, `(offset, bytes)` (empty without
    /// guards), less any part another buffer uses at another time: no
    /// buffer ever legitimately writes what is left, so it must keep its
    /// canary through a run.
    pub fn guard_regions(&self) -> Vec<(usize, usize)> {
        if self.guard_bytes == 0 {
            return Vec::new();
        }
        let mut slot_end: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
        for a in &self.allocations {
            let e = slot_end.entry(a.slot).or_insert((a.offset, 0));
            e.1 = e.1.max(a.size_bytes);
        }
        let used: Vec<(usize, usize)> = slot_end.values().map(|&(off, size)| (off, off + size)).collect();
        slot_end
            .values()
            .map(|&(off, size)| (off + size, off + align(size + self.guard_bytes)))
            .filter_map(|(mut start, end)| {
                // Trim the gap to its part before any other buffer's bytes.
                let mut stop = end;
                for &(u0, u1) in &used {
                    if u0 < stop && start < u1 {
                        if u0 <= start {
                            start = start.max(u1);
                        } else {
                            stop = stop.min(u0);
                        }
                    }
                }
                (start < stop).then(|| (start, stop - start))
            })
            .collect()
    }

    /// The region holding tensor `t`, if it is in the scratchpad.
    pub fn tensor(&self, t: TensorId) -> Option<&BufferAlloc> {
        self.allocations.iter().find(|a| a.purpose == BufferPurpose::Tensor(t))
    }
}

fn align(x: usize) -> usize {
    x.div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN
}

/// Groups that may overwrite an input with an output of the same size.
fn in_place_safe(sem: &SemanticGraph, g: &FusionGroup) -> bool {
    matches!(g.strategy, FusionStrategy::LoopFusion | FusionStrategy::Standalone)
        && g.nodes.iter().all(|&n| matches!(sem.nodes[n].class, OpClass::ElemWise | OpClass::Injective))
}

pub(super) fn plan_buffers(sem: &SemanticGraph, groups: &[FusionGroup], guard_bytes: usize) -> BufferPlan {
    let mut group_of = vec![0usize; sem.nodes.len()];
    for g in groups {
        for &n in &g.nodes {
            group_of[n] = g.id;
        }
    }
    let carried: std::collections::HashSet<TensorId> =
        groups.iter().flat_map(|g| g.carried.iter().copied()).collect();
    let mut allocs: Vec<BufferAlloc> = Vec::new();
    for t in &sem.tensors {
        if !t.is_intermediate() || carried.contains(&t.id) {
            continue;
        }
        let birth = group_of[t.producer.expect("intermediates have producers")];
        let death = t.consumers.iter().map(|&(c, _)| group_of[c]).max().unwrap_or(birth);
        allocs.push(BufferAlloc {
            purpose: BufferPurpose::Tensor(t.id),
            offset: 0,
            size_bytes: t.size_bytes(),
            first_group: birth,
            last_group: death,
            slot: allocs.len(),
            in_place_of: None,
        });
    }
    for g in groups {
        if let FusionStrategy::Gemm(f) = &g.strategy {
            if let Some(RowProducer {
                placement: ProducerPlacement::TileLevelFusion { scratch_bytes, .. },
                ..
            }) = f.producer
            {
                allocs.push(BufferAlloc {
                    purpose: BufferPurpose::TileScratch { group: g.id },
                    offset: 0,
                    size_bytes: scratch_bytes,
                    first_group: g.id,
                    last_group: g.id,
                    slot: allocs.len(),
                    in_place_of: None,
                });
            }
        }
    }
    assign_in_place(sem, groups, &mut allocs);
    let naive_bytes = allocs.iter().map(|a| align(a.size_bytes)).sum();
    let scratchpad_bytes = place_slots(&mut allocs, guard_bytes);
    BufferPlan { allocations: allocs, scratchpad_bytes, naive_bytes, guard_bytes }
}

/// Lets an in-place-safe group's output take the slot of a same-size input
/// that dies in that group.
fn assign_in_place(sem: &SemanticGraph, groups: &[FusionGroup], allocs: &mut [BufferAlloc]) {
    let index_of = |allocs: &[BufferAlloc], t: TensorId| {
        allocs.iter().position(|a| a.purpose == BufferPurpose::Tensor(t))
    };
    let mut taken = vec![false; allocs.len()];
    for g in groups.iter().filter(|g| in_place_safe(sem, g)) {
        for &out in &g.outputs {
            let Some(o) = index_of(allocs, out) else { continue };
            let candidate = g.inputs.iter().copied().find_map(|input| {
                let i = index_of(allocs, input)?;
                let a = &allocs[i];
                let fits = a.last_group == g.id && a.size_bytes == allocs[o].size_bytes;
                // Only the last member of a slot can hand it on.
                let slot_end = allocs.iter().filter(|b| b.slot == a.slot).all(|b| b.last_group <= g.id);
                (fits && slot_end && !taken[i]).then_some((i, input))
            });
            if let Some((i, input)) = candidate {
                taken[i] = true;
                allocs[o].slot = allocs[i].slot;
                allocs[o].in_place_of = Some(input);
            }
        }
    }
}

/// First-fit placement of slots, largest first. Returns the arena size.
fn place_slots(allocs: &mut [BufferAlloc], guard: usize) -> usize {
    struct Slot {
        id: usize,
        size: usize,
        first: usize,
        last: usize,
        offset: usize,
    }
    let mut slots: Vec<Slot> = Vec::new();
    for a in allocs.iter() {
        match slots.iter_mut().find(|s| s.id == a.slot) {
            Some(s) => {
                s.size = s.size.max(a.size_bytes);
                s.first = s.first.min(a.first_group);
                s.last = s.last.max(a.last_group);
            }
            None => slots.push(Slot {
                id: a.slot,
                size: a.size_bytes,
                first: a.first_group,
                last: a.last_group,
                offset: 0,
            }),
        }
    }
    slots.sort_by(|a, b| b.size.cmp(&a.size).then(a.first.cmp(&b.first)));
    let mut placed: Vec<usize> = Vec::new(); // indices into slots
    let mut arena = 0;
    for i in 0..slots.len() {
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .map(|&j| &slots[j])
            .filter(|s| s.first <= slots[i].last && slots[i].first <= s.last)
            .map(|s| (s.offset, s.offset + align(s.size + guard)))
            .collect();
        busy.sort_unstable();
        let mut offset = 0;
        for (start, end) in busy {
            if offset + slots[i].size + guard <= start {
                break;
            }
            offset = offset.max(end);
        }
        slots[i].offset = offset;
        arena = arena.max(offset + align(slots[i].size + guard));
        placed.push(i);
    }
    for a in allocs.iter_mut() {
        a.offset = slots.iter().find(|s| s.id == a.slot).expect("every slot placed").offset;
    }
    arena
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(offset: usize, size_bytes: usize, slot: usize) -> BufferAlloc {
        BufferAlloc {
            purpose: BufferPurpose::TileScratch { group: slot },
            offset,
            size_bytes,
            first_group: 0,
            last_group: 0,
            slot,
            in_place_of: None,
        }
    }

    #[test]
    fn guard_gaps_skip_bytes_another_buffer_uses_at_another_time() {
        // Slot 0: 160 B at 0 (gap 160..256); slot 1: 8 B at 0, alive at
        // another time (its gap 8..128 lies inside slot 0's bytes).
        let plan = BufferPlan {
            allocations: vec![alloc(0, 160, 0), alloc(0, 8, 1)],
            scratchpad_bytes: 256,
            naive_bytes: 0,
            guard_bytes: 64,
        };
        assert_eq!(plan.guard_regions(), vec![(160, 96)]);
        let none = BufferPlan { guard_bytes: 0, ..plan };
        assert!(none.guard_regions().is_empty());
    }
}
