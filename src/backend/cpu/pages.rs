//! Zeroed buffers for the packed weights, asked for in transparent huge pages.
//!
//! A decoding step reads every weight once; with 4 KiB pages each page of it costs a TLB
//! miss (under a hypervisor, a two-level walk) and a restart of the hardware prefetchers.
//! An anonymous mapping advised `MADV_HUGEPAGE` before its first write gets 2 MiB pages
//! where the system allows them on request (Linux's `madvise` mode, the common default).
//! Where the mapping or the advice is refused the buffer is the same, in small pages.

use std::ops::{Deref, DerefMut};

use bytemuck::Pod;
use memmap2::MmapMut;

/// `len` zeroed values of `T`: an anonymous mapping (advised into huge pages on Linux),
/// or a vector where the mapping is refused or empty.
pub enum Buffer<T> {
    /// An anonymous mapping of exactly `len * size_of::<T>()` bytes.
    Mapped(MmapMut),
    /// A plain vector.
    Heap(Vec<T>),
}

impl<T: Pod> Buffer<T> {
    /// `len` zeroed values, their pages not yet touched where mapped (so that the first
    /// writes, from every packing thread, fault them in as huge pages).
    pub fn zeroed(len: usize) -> Self {
        let Some(bytes) = len.checked_mul(std::mem::size_of::<T>()).filter(|&b| b > 0) else {
            return Self::Heap(vec![T::zeroed(); len]);
        };
        match MmapMut::map_anon(bytes) {
            Ok(map) => {
                // A hint: refused where transparent huge pages are off, and then the
                // mapping keeps small pages.
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                Self::Mapped(map)
            }
            Err(_) => Self::Heap(vec![T::zeroed(); len]),
        }
    }
}

impl<T: Pod> Deref for Buffer<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            // A mapping is page-aligned and `len * size_of::<T>()` long: the cast holds.
            Self::Mapped(map) => bytemuck::cast_slice(&map[..]),
            Self::Heap(v) => v,
        }
    }
}

impl<T: Pod> DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Self::Mapped(map) => bytemuck::cast_slice_mut(&mut map[..]),
            Self::Heap(v) => v,
        }
    }
}

impl<T: Pod> std::fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self, Self::Mapped(_)) {
            "mapped"
        } else {
            "heap"
        };
        write!(f, "Buffer({} x {} bytes, {kind})", self.len(), std::mem::size_of::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::Buffer;
    use crate::backend::cpu::quant::Line;

    #[test]
    fn buffers_are_zeroed_writable_and_as_long_as_asked() {
        for len in [0, 1, 3, 40_000] {
            let mut lines = Buffer::<Line>::zeroed(len);
            assert_eq!(lines.len(), len);
            assert!(lines.iter().all(|l| l.0 == [0; 64]));
            if let Some(last) = lines.last_mut() {
                last.0[63] = 7;
            }
            assert_eq!(lines.last().map(|l| l.0[63]), (len > 0).then_some(7));
            let bytes = Buffer::<u8>::zeroed(len * 3);
            assert_eq!(bytes.len(), len * 3);
            assert!(bytes.iter().all(|&b| b == 0));
        }
    }
}
