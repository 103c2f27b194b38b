//! One function compiled for each vector unit, chosen at run time: the dispatch every
//! vectorised loop of the model shares.

/// `isa_dispatch!(fn name(a: A, b: B) -> R => body);` defines `name`, which runs `body` (an
/// `#[inline(always)]` function with the same arguments, written as plain loops) compiled
/// for AVX-512F where the CPU has it, else for AVX2 + FMA, else for the build's baseline.
/// The loops compile to the same operations in the same order on every unit (fused
/// multiply-adds only), so each gives the same bits; `body` is the portable reference.
/// Lifetime parameters may follow the name (`fn name<'a>(...)`), for a result that borrows.
macro_rules! isa_dispatch {
    ($(#[$attr:meta])* $vis:vis fn $name:ident $(<$($lt:lifetime),+>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path;) => {
        $(#[$attr])*
        $vis fn $name $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { narrow($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// `by_count!(n, f::<[4, 3, 2], X>(args))` calls `f::<N, X>(args)` for the `N` of the list
/// equal to `n`, and `f::<1, X>(args)` otherwise: a run-time count (vectors, heads) turned
/// into the const generic that sizes a kernel's registers. `f` is one name (bring a path
/// in with `use`); the generic arguments after the list are optional.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))] // used by the x86 kernels only
macro_rules! by_count {
    ($n:expr, $f:ident::<[$($k:literal),*] $(, $extra:tt)*> $args:tt) => {
        by_count!(@arms $n, $f, [$(, $extra)*], $args, [$($k),*])
    };
    (@arms $n:expr, $f:ident, $extra:tt, $args:tt, [$($k:literal),*]) => {
        match $n {
            $($k => by_count!(@call $f, $k, $extra, $args),)*
            _ => {
                debug_assert!($n == 1, "by_count!: a count outside the list");
                by_count!(@call $f, 1, $extra, $args)
            }
        }
    };
    (@call $f:ident, $k:literal, [$($extra:tt)*], $args:tt) => {
        $f::<$k $($extra)*> $args
    };
}

/// Runs `kernel(first, count)` over `0..heads` in runs of up to four heads, the most one
/// attention kernel call takes.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // used by the x86 kernels only
pub(super) fn in_fours(heads: usize, mut kernel: impl FnMut(usize, usize)) {
    for first in (0..heads).step_by(4) {
        kernel(first, (heads - first).min(4));
    }
}
