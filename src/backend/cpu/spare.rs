//! Buffers a batched step hands back and takes again. A 512-token prompt step needs ~70 MB
//! of activations per layer; allocated fresh each time, those pages are faulted in and
//! zeroed by the kernel for every layer (with glibc, large blocks are mapped and unmapped
//! per allocation), which cost ~18% of prefill time. Reused, only the first layer pays.

use super::quant::activation::QuantizedRows;

/// Spare f32 buffers and quantized activation buffers of one step. Holds at most what the
/// step gave back, and is dropped with it.
#[derive(Debug, Default)]
pub struct Spare {
    f32s: Vec<Vec<f32>>,
    acts: Vec<QuantizedRows>,
}

impl Spare {
    /// `len` zeros, in the smallest kept buffer that holds them (a new one when none does).
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.empty(len);
        v.resize(len, 0.0);
        v
    }

    /// An empty buffer with room for `cap` values: the smallest kept one that has it, else
    /// a new one.
    pub fn empty(&mut self, cap: usize) -> Vec<f32> {
        let fit = (0..self.f32s.len())
            .filter(|&i| self.f32s[i].capacity() >= cap)
            .min_by_key(|&i| self.f32s[i].capacity());
        let mut v = fit
            .map(|i| self.f32s.swap_remove(i))
            .unwrap_or_else(|| Vec::with_capacity(cap));
        v.clear();
        v
    }

    /// Keeps `v` for a later [`Spare::take`].
    pub fn give(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 {
            self.f32s.push(v);
        }
    }

    /// A kept activation buffer (or an empty one) to quantize into.
    pub(crate) fn take_acts(&mut self) -> QuantizedRows {
        self.acts.pop().unwrap_or_default()
    }

    /// Keeps an activation buffer for a later [`Spare::take_acts`].
    pub(crate) fn give_acts(&mut self, a: QuantizedRows) {
        self.acts.push(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_zeroed_and_the_tightest_fit_first() {
        let mut s = Spare::default();
        let (mut big, small) = (s.take(1000), s.take(10));
        big.fill(3.0);
        let big_ptr = big.as_ptr();
        s.give(big);
        s.give(small);
        let again = s.take(500);
        assert_eq!(again.as_ptr(), big_ptr);
        assert!(again.len() == 500 && again.iter().all(|&v| v == 0.0));
        assert_eq!(s.take(8).capacity(), 10);
        assert_eq!(s.take(2000).len(), 2000);
        let e = s.empty(300);
        assert!(e.is_empty() && e.capacity() >= 300);
    }
}
