//! Reading what the filter did: verdict counters (overall and per interface) and the sampled
//! drop events, and the per-slot hit counters.

use portcullis_common::HitKey;

use super::*;

impl Filter {
    /// Counters summed over CPUs, indexed by `common::counter`.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        let mut out = Counters::default();
        for slot in 0..common::IF_COUNTER_SLOTS {
            for (o, c) in out.iter_mut().zip(self.slot_counters(slot)?) {
                o.packets += c.packets;
                o.bytes += c.bytes;
            }
        }
        Ok(out)
    }

    /// Counters per interface this filter attached to (by name), plus `"other"` for packets
    /// on interfaces without a slot.
    pub fn counters_by_iface(&self) -> Result<Vec<(String, Counters)>, KernelError> {
        let mut out = vec![("other".to_owned(), self.slot_counters(0)?)];
        for (iface, slot) in &self.iface_slots {
            out.push((iface.clone(), self.slot_counters(*slot)?));
        }
        Ok(out)
    }

    pub(super) fn slot_counters(&self, slot: u32) -> Result<Counters, KernelError> {
        let arr: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.map(map_name::COUNTERS))
                .map_err(map_err("opening", map_name::COUNTERS))?;
        let mut out = Counters::default();
        for (i, o) in out.iter_mut().enumerate() {
            let index = slot * common::counter::COUNT + i as u32;
            let per_cpu = arr
                .get(&index, 0)
                .map_err(map_err("reading", map_name::COUNTERS))?;
            for c in per_cpu.iter() {
                o.packets += c.packets;
                o.bytes += c.bytes;
            }
        }
        Ok(out)
    }

    /// The kernel's hit counters: packets and bytes per deciding slot and list, summed over
    /// CPUs. Counts only grow while a key stays in the map; an evicted key starts again.
    pub fn hit_counts(&self) -> Result<Vec<(HitKey, Counter)>, KernelError> {
        let err = |source| KernelError::Map {
            op: "reading",
            map: map_name::HITS,
            source,
        };
        let cpus = sys::possible_cpus().map_err(err)?;
        let mut out = Vec::new();
        sys::for_each_percpu::<HitKey, Counter>(self.fd(map_name::HITS), cpus, |k, per_cpu| {
            let mut sum = Counter::default();
            for c in per_cpu {
                sum.packets += c.packets;
                sum.bytes += c.bytes;
            }
            out.push((k, sum));
        })
        .map_err(err)?;
        Ok(out)
    }

    /// Takes the sampled drop events waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Result<Vec<DropEvent>, KernelError> {
        let map = self
            .maps
            .get_mut(map_name::EVENTS)
            .ok_or(KernelError::Missing("EVENTS"))?;
        let mut ring: RingBuf<&mut MapData> =
            RingBuf::try_from(map).map_err(map_err("opening", map_name::EVENTS))?;
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<DropEvent>() {
                // SAFETY: the kernel wrote a whole DropEvent (repr(C), plain integers); the
                // ring buffer only guarantees byte alignment, hence read_unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
            }
        }
        Ok(out)
    }
}
