//! The GPU backend's buffer: a range of a device allocation, either the whole of its own
//! allocation or one tensor of a group arena (`Backend::alloc_group`: every parameter, gradient or
//! moment tensor of the model in ONE allocation, so a single launch can zero or update them all).
//!
//! Soundness: a `GpuBuf` owns its range exclusively (`alloc_group` hands out disjoint ranges and
//! `GpuBuf` is not `Clone`), so a writable view of it needs `&mut self`, and a writable view of a
//! whole arena needs `&mut` to every member of the group ([`arena_view_mut`] checks that all of
//! them are there).

use std::sync::Arc;

use crate::device::{DeviceBuffer, Elem, View, ViewMut};

/// Tensors of a group start at multiples of this many elements (16 bytes for f32), so every
/// tensor is aligned for vector loads.
pub const GROUP_ALIGN: usize = 4;

/// A buffer of the GPU backend (see the module docs).
pub struct GpuBuf<T: Elem> {
    mem: Arc<DeviceBuffer<T>>,
    off: usize,
    len: usize,
}

impl<T: Elem> std::fmt::Debug for GpuBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuBuf[{}..{}] of {:?}",
            self.off,
            self.off + self.len,
            self.mem
        )
    }
}

impl<T: Elem> GpuBuf<T> {
    /// A buffer that owns all of `mem`.
    pub fn whole(mem: DeviceBuffer<T>) -> Self {
        let len = mem.len();
        GpuBuf {
            mem: Arc::new(mem),
            off: 0,
            len,
        }
    }

    /// Splits one allocation into disjoint buffers of `lens` elements, each starting at a multiple
    /// of [`GROUP_ALIGN`]. `mem` must hold [`group_len`]`(lens)` elements.
    pub fn group(mem: DeviceBuffer<T>, lens: &[usize]) -> Vec<Self> {
        assert!(
            mem.len() >= group_len(lens),
            "GpuBuf::group: allocation too small"
        );
        let mem = Arc::new(mem);
        group_offsets(lens)
            .into_iter()
            .zip(lens)
            .map(|(off, &len)| GpuBuf {
                mem: Arc::clone(&mem),
                off,
                len,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Offset of this tensor in its allocation (elements).
    pub fn offset(&self) -> usize {
        self.off
    }

    /// The buffer, read-only.
    pub fn view(&self) -> View<'_, T> {
        self.mem.slice(self.off..self.off + self.len)
    }

    /// The buffer, writable.
    pub fn view_mut(&mut self) -> ViewMut<'_, T> {
        // SAFETY: this GpuBuf owns its range exclusively (module docs) and `&mut self` keeps every
        // other view of the range from being created while this one lives.
        unsafe { self.mem.slice_mut_unchecked(self.off..self.off + self.len) }
    }
}

impl<T: Elem> GpuBuf<T> {
    /// This buffer as a `GpuBuf<U>` when `T` is `U` (for ops generic over the activation type
    /// that have a path for one element type only, e.g. the f32 fused bias + GELU).
    pub fn typed<U: Elem>(&self) -> Option<&GpuBuf<U>> {
        (self as &dyn std::any::Any).downcast_ref()
    }
    /// `typed`, writable.
    pub fn typed_mut<U: Elem>(&mut self) -> Option<&mut GpuBuf<U>> {
        (self as &mut dyn std::any::Any).downcast_mut()
    }

    /// Elements `range` of the buffer, writable. Panics when out of bounds, like slice indexing.
    pub fn slice_mut(&mut self, range: std::ops::Range<usize>) -> ViewMut<'_, T> {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "GpuBuf::slice_mut {range:?} out of bounds for length {}",
            self.len
        );
        // SAFETY: as `view_mut`: a sub-range of the range this GpuBuf owns exclusively.
        unsafe {
            self.mem
                .slice_mut_unchecked(self.off + range.start..self.off + range.end)
        }
    }
}

/// Offsets of a group's tensors (each aligned to [`GROUP_ALIGN`]).
pub fn group_offsets(lens: &[usize]) -> Vec<usize> {
    let mut off = 0;
    lens.iter()
        .map(|&n| {
            let o = off;
            off += n.next_multiple_of(GROUP_ALIGN);
            o
        })
        .collect()
}

/// Elements of the allocation behind a group of `lens`.
pub fn group_len(lens: &[usize]) -> usize {
    lens.iter().map(|n| n.next_multiple_of(GROUP_ALIGN)).sum()
}

/// The whole allocation behind `bufs`, writable, when `bufs` is exactly every member of one group
/// (then nothing else can view any of it); `None` otherwise (callers fall back to per-tensor work).
pub fn arena_view_mut<T: Elem>(bufs: &mut [GpuBuf<T>]) -> Option<ViewMut<'_, T>> {
    let first = bufs.first()?;
    let mem = &first.mem;
    let all_here =
        bufs.iter().all(|b| Arc::ptr_eq(&b.mem, mem)) && Arc::strong_count(mem) == bufs.len();
    if !all_here {
        return None;
    }
    // SAFETY: every GpuBuf sharing this allocation is in `bufs`, which is exclusively borrowed for
    // the returned view's lifetime, so no other view of the allocation can exist meanwhile.
    Some(unsafe { mem.slice_mut_unchecked(..) })
}

/// The whole allocation behind `bufs`, read-only, when `bufs` is every member of one group.
pub fn arena_view<T: Elem>(bufs: &[GpuBuf<T>]) -> Option<View<'_, T>> {
    let first = bufs.first()?;
    let mem = &first.mem;
    let all_here =
        bufs.iter().all(|b| Arc::ptr_eq(&b.mem, mem)) && Arc::strong_count(mem) == bufs.len();
    all_here.then(|| mem.view())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    #[test]
    fn group_members_are_aligned_disjoint_views_and_the_arena_needs_all_of_them() {
        let dev = Device::emu().unwrap();
        let lens = [3usize, 8, 1, 0, 5];
        let mem = dev.alloc::<f32>(group_len(&lens)).unwrap();
        let mut bufs = GpuBuf::group(mem, &lens);
        assert_eq!(group_offsets(&lens), vec![0, 4, 12, 16, 16]);
        for (b, &n) in bufs.iter().zip(&lens) {
            assert_eq!(b.len(), n);
            assert_eq!(b.offset() % GROUP_ALIGN, 0);
        }
        dev.htod(&[1.0, 2.0, 3.0], bufs[0].view_mut()).unwrap();
        dev.htod(&[9.0], bufs[2].view_mut()).unwrap();
        let whole = dev.download(arena_view(&bufs).unwrap()).unwrap();
        assert_eq!(&whole[..4], &[1.0, 2.0, 3.0, 0.0]);
        assert_eq!(whole[12], 9.0);
        // without every member, no arena view
        assert!(arena_view_mut(&mut bufs[1..]).is_none());
        assert!(arena_view_mut(&mut bufs).is_some());
    }
}
