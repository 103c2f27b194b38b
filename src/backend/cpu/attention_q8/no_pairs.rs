//! Off x86 no chunk is converted into pairs: the rows read each block in place. The
//! signatures of the x86 [`pairs`](self) module, with no kernel behind them.

use super::ValueBlock;

/// `false`: there is no kernel.
pub fn converts_fast() -> bool {
    false
}

/// Holds nothing.
#[derive(Debug, Default)]
pub struct Pairs;

impl Pairs {
    /// `None`: there is no kernel.
    pub fn start(&mut self, _: usize, _: (usize, usize), _: usize) -> Option<ChunkPairs<'_>> {
        None
    }

    /// `false`, nothing added: there is no kernel.
    pub fn add_lone(
        &mut self,
        _: &[(ValueBlock, usize)],
        _: (usize, usize),
        _: (&[f32], usize, usize),
        _: usize,
        _: &mut [f32],
    ) -> bool {
        false
    }

    /// `false`, nothing added: there is no kernel.
    pub fn add_lone_nibbles(
        &mut self,
        _: &[(NibbleBlock, usize)],
        _: usize,
        _: (&[f32], usize, usize),
        _: usize,
        _: &mut [f32],
    ) -> bool {
        false
    }
}

/// Values per scale of [`NibbleBlock`]s.
pub const NIBBLE_GROUP: usize = 32;

/// One block's 4-bit values of one KV head (llama.cpp's q4_0 layout).
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // callers build it; no kernel reads it off x86
pub struct NibbleBlock<'a> {
    /// `n * d / 2` bytes.
    pub q: &'a [u8],
    /// `[n, d / 32]` scales as f16 bits.
    pub scales: &'a [u16],
}

/// A chunk being converted: none exists off x86.
#[derive(Debug)]
pub struct ChunkPairs<'a>(std::convert::Infallible, std::marker::PhantomData<&'a mut Pairs>);

impl ChunkPairs<'_> {
    /// Unreachable: no chunk exists.
    pub fn push(&mut self, _: ValueBlock, _: usize) {
        match self.0 {}
    }

    /// Unreachable: no chunk exists.
    pub fn add_row(&mut self, _: (&[f32], usize, usize), _: usize, _: usize, _: &mut [f32]) {
        match self.0 {}
    }
}
