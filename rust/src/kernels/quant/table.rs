//! Integer-indexed tables: which integers a tensor holds, and a lookup of one value per
//! integer.
//!
//! An element-wise function of a quantized tensor depends only on each element's integer
//! (its float is `dequantize(q)`), so calibration evaluates such a function once per integer
//! of the tensor's range and then maps every element through the table. `presence` gives the
//! integers that occur (the statistics of the function are those of its present entries),
//! `lookup` maps the elements.
//!
//! Both kernels read the integers in their stored dtype (no widening copy) and work on fixed
//! chunks of [`CHUNK`] elements in parallel. Each chunk first takes its min and max in its
//! own dtype (one vector pass that also checks the table's range), then:
//!
//! * `presence` marks the chunk's integers in a table over the chunk's span `[min, max]`
//!   only. Once at most 8 integers of the span are unmarked (usually a few thousand elements
//!   in: the min and max are present by definition, the rare values are tails), it stops
//!   marking and looks for those integers only, with one vectorized compare pass each,
//!   dropping each one found; it stops when none is left. The marks are the same as
//!   marking every element. The marks of the chunks are OR-ed, so the result does not
//!   depend on the split.
//! * `lookup` of int8 integers through a table whose entries fit int8 uses the AVX2
//!   byte-shuffle (`vpshufb`, 16 entries per shuffle, up to 16 shuffles for 256 entries) on
//!   32 elements at a time, then widens to the table's dtype; other cases index a table
//!   rebased on the chunk's min without bounds checks (the range was checked).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::dequantize::QInt;
use super::CHUNK;
use crate::error::{Error, Result};
use crate::kernels::simd::{self, Switch};

/// Integer element types that index a table.
pub trait Index: QInt + Ord {
    /// The values as int8 when the type is int8 (the byte-indexed paths).
    fn as_i8(values: &[Self]) -> Option<&[i8]>;
    /// The value `v` of the type's range in the type.
    fn from_i64(v: i64) -> Self;
    /// The smallest and largest value of a non-empty slice (a vector pass in the type).
    #[inline(always)]
    fn min_max(values: &[Self]) -> (Self, Self) {
        let first = values[0];
        values
            .iter()
            .fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }
}

impl Index for i8 {
    #[inline(always)]
    fn as_i8(values: &[Self]) -> Option<&[i8]> {
        Some(values)
    }
    #[inline(always)]
    fn from_i64(v: i64) -> Self {
        v as i8
    }
}

macro_rules! impl_index {
    ($($t:ty),*) => {$(
        impl Index for $t {
            #[inline(always)]
            fn as_i8(_: &[Self]) -> Option<&[i8]> {
                None
            }
            #[inline(always)]
            fn from_i64(v: i64) -> Self {
                v as $t
            }
        }
    )*};
}
impl_index!(i16, i32, i64);

/// Table entry types (what a lookup writes).
pub trait Entry: Copy + Send + Sync + 'static {
    /// The entry as i64 (exact).
    fn to_i64(self) -> i64;
    /// An int8 value in this type (exact).
    fn from_i8(v: i8) -> Self;
}

macro_rules! impl_entry {
    ($($t:ty),*) => {$(
        impl Entry for $t {
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self as i64
            }
            #[inline(always)]
            fn from_i8(v: i8) -> Self {
                v as $t
            }
        }
    )*};
}
impl_entry!(i8, i16, i32, i64);

fn out_of_range(v: i64, lo: i64, size: usize) -> Error {
    Error::InvalidArgument(format!(
        "table index: the value {v} lies outside the table's range [{lo}, {}]",
        lo as i128 + size as i128 - 1
    ))
}

/// The min and max of a non-empty chunk, checked against the table range `[lo, lo + size)`.
#[inline(always)]
fn checked_span<I: Index>(chunk: &[I], lo: i64, size: usize) -> Result<(i64, i64)> {
    let (min, max) = I::min_max(chunk);
    let (min, max) = (min.to_i64(), max.to_i64());
    let hi = lo as i128 + size as i128 - 1;
    if min < lo {
        return Err(out_of_range(min, lo, size));
    }
    if i128::from(max) > hi {
        return Err(out_of_range(max, lo, size));
    }
    Ok((min, max))
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> bool {
    false
}

/// A chunk's min and its marks over `[min, max]` (None for an empty chunk).
type ChunkMarks = Option<(i64, Vec<bool>)>;

// --- presence --------------------------------------------------------------------------------

/// Mark in `seen` (entry `v - lo`) every integer `v` of `q`.
///
/// Errors: `InvalidArgument` if some value lies outside `[lo, lo + seen.len())`.
pub fn presence<I: Index>(q: &[I], lo: i64, seen: &mut [bool]) -> Result<()> {
    let size = seen.len();
    let fast = avx2();
    let parts: Vec<Result<ChunkMarks>> = q
        .par_chunks(CHUNK)
        .map(|chunk| {
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: `avx2` checked that the CPU has the feature.
                return unsafe { presence_chunk_avx2(chunk, lo, size) };
            }
            presence_chunk(chunk, lo, size)
        })
        .collect();
    for part in parts {
        if let Some((min, marks)) = part? {
            let start = (min - lo) as usize; // in range: checked by the chunk
            for (s, m) in seen[start..start + marks.len()].iter_mut().zip(marks) {
                *s |= m;
            }
        }
    }
    Ok(())
}

/// The chunk's min and its marks over `[min, max]` (None for an empty chunk).
#[inline(always)]
fn presence_chunk<I: Index>(chunk: &[I], lo: i64, size: usize) -> Result<ChunkMarks> {
    if chunk.is_empty() {
        return Ok(None);
    }
    let (min, max) = checked_span(chunk, lo, size)?;
    let span = (max - min + 1) as usize;
    let mut marks = vec![false; span];
    // Mark element by element, checking the span every `step` elements (at most one extra
    // read per element), until at most FEW integers of the span are still missing.
    let step = span.max(1024);
    let mut done = 0;
    let mut missing: Vec<usize> = Vec::new();
    if let Some(bytes) = I::as_i8(chunk) {
        let mut byte_marks = [false; 256];
        let base = min as u8;
        for part in bytes.chunks(step) {
            for &v in part {
                byte_marks[(v as u8).wrapping_sub(base) as usize] = true;
            }
            done += part.len();
            if few_missing(&byte_marks[..span], &mut missing) {
                break;
            }
        }
        marks.copy_from_slice(&byte_marks[..span]);
    } else {
        for part in chunk.chunks(step) {
            for &v in part {
                let i = (v.to_i64() - min) as usize;
                // SAFETY: min <= v <= max (checked_span), so i < span = marks.len().
                unsafe { *marks.get_unchecked_mut(i) = true };
            }
            done += part.len();
            if few_missing(&marks, &mut missing) {
                break;
            }
        }
    }
    // Then look for the few missing integers only: one compare-and-OR pass per integer
    // over each 4096 elements (vectorized), dropping the integers found.
    for part in chunk[done..].chunks(4096) {
        if missing.is_empty() {
            break;
        }
        missing.retain(|&i| {
            let want = I::from_i64(min + i as i64);
            let found = part.iter().fold(false, |any, &v| any | (v == want));
            marks[i] |= found;
            !found
        });
    }
    Ok(Some((min, marks)))
}

/// How many missing integers the marking hands over to the compare passes.
const FEW: usize = 8;

/// Whether at most [`FEW`] entries of `marks` are false; then `missing` lists them.
#[inline(always)]
fn few_missing(marks: &[bool], missing: &mut Vec<usize>) -> bool {
    let absent = marks.iter().filter(|&&m| !m).count();
    if absent > FEW {
        return false;
    }
    missing.clear();
    missing.extend(
        marks
            .iter()
            .enumerate()
            .filter(|(_, &m)| !m)
            .map(|(i, _)| i),
    );
    true
}

/// [`presence_chunk`] compiled for AVX2 (the same operations).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn presence_chunk_avx2<I: Index>(chunk: &[I], lo: i64, size: usize) -> Result<ChunkMarks> {
    presence_chunk(chunk, lo, size)
}

// --- lookup ----------------------------------------------------------------------------------

/// `out[i] = table[q[i] - lo]`.
///
/// Errors: `Shape` if `out` and `q` differ in length; `InvalidArgument` if some value lies
/// outside `[lo, lo + table.len())` (then `out` is only partly written).
pub fn lookup<I: Index, O: Entry>(
    q: &[I],
    lo: i64,
    table: &[O],
    out: &mut [MaybeUninit<O>],
) -> Result<()> {
    if q.len() != out.len() {
        return Err(Error::Shape(format!(
            "table lookup: {} values for an output of {}",
            q.len(),
            out.len()
        )));
    }
    let fast = avx2();
    out.par_chunks_mut(CHUNK)
        .zip(q.par_chunks(CHUNK))
        .try_for_each(|(dst, src)| {
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: `avx2` checked that the CPU has the feature.
                return unsafe { lookup_chunk_avx2(src, lo, table, dst) };
            }
            lookup_chunk(src, lo, table, dst)
        })
}

/// The entries `table[min - lo ..= max - lo]` rebased on the byte `(v - min) as u8`, as
/// 256 entries (the rest repeat the first), for int8 values of `[min, max]`.
#[inline(always)]
fn byte_table<O: Entry>(table: &[O], lo: i64, min: i64, max: i64) -> [O; 256] {
    let used = &table[(min - lo) as usize..=(max - lo) as usize];
    let mut bytes = [used[0]; 256];
    bytes[..used.len()].copy_from_slice(used);
    bytes
}

#[inline(always)]
fn lookup_chunk<I: Index, O: Entry>(
    src: &[I],
    lo: i64,
    table: &[O],
    dst: &mut [MaybeUninit<O>],
) -> Result<()> {
    if src.is_empty() {
        return Ok(());
    }
    let (min, max) = checked_span(src, lo, table.len())?;
    if let Some(bytes) = I::as_i8(src) {
        let rebased = byte_table(table, lo, min, max);
        let base = min as u8;
        for (d, &v) in dst.iter_mut().zip(bytes) {
            d.write(rebased[(v as u8).wrapping_sub(base) as usize]);
        }
        return Ok(());
    }
    let used = &table[(min - lo) as usize..=(max - lo) as usize];
    for (d, &v) in dst.iter_mut().zip(src) {
        let i = (v.to_i64() - min) as usize;
        // SAFETY: min <= v <= max (checked_span), so i < used.len().
        d.write(unsafe { *used.get_unchecked(i) });
    }
    Ok(())
}

/// [`lookup_chunk`] compiled for AVX2, with the byte-shuffle path for int8 values whose
/// entries fit int8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lookup_chunk_avx2<I: Index, O: Entry>(
    src: &[I],
    lo: i64,
    table: &[O],
    dst: &mut [MaybeUninit<O>],
) -> Result<()> {
    let Some(bytes) = I::as_i8(src) else {
        return lookup_chunk(src, lo, table, dst);
    };
    if bytes.is_empty() {
        return Ok(());
    }
    let (min, max) = checked_span(src, lo, table.len())?;
    let rebased = byte_table(table, lo, min, max);
    let span = (max - min + 1) as usize;
    let mut small = [0i8; 256];
    for (s, e) in small.iter_mut().zip(&rebased[..span]) {
        let v = e.to_i64();
        if v < i64::from(i8::MIN) || v > i64::from(i8::MAX) {
            return lookup_chunk(src, lo, table, dst);
        }
        *s = v as i8;
    }
    if VBMI.available() {
        // SAFETY: the switch's CPU check found AVX-512 F/BW/VBMI.
        unsafe { permute_lookup(bytes, min as i8, &small, span, dst) };
    } else {
        shuffle_lookup(bytes, min as i8, &small, span.div_ceil(16), dst);
    }
    Ok(())
}

/// Whether the int8 lookups may use `vpermb`/`vpermi2b` (AVX-512 VBMI; a switch for
/// benchmarks and differential tests: the same values either way).
pub static VBMI: Switch = Switch::new(true, simd::byte_permutes);

/// [`shuffle_lookup`] with byte permutes, 64 values a step: one `vpermb` for up to 64
/// entries, one `vpermi2b` for up to 128, two and a blend on the index's top bit for up to
/// 256 (`small` holds the entries from index 0, `span` of them).
///
/// # Safety
/// The CPU has AVX-512 F/BW/VBMI; the values lie in `[base, base + span)`, `span <= 256`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn permute_lookup<O: Entry>(
    bytes: &[i8],
    base: i8,
    small: &[i8; 256],
    span: usize,
    dst: &mut [MaybeUninit<O>],
) {
    use std::arch::x86_64::*;
    // SAFETY: four 64-byte quarters of `small`.
    let t: [__m512i; 4] =
        std::array::from_fn(|q| unsafe { _mm512_loadu_si512(small.as_ptr().add(64 * q).cast()) });
    let base_v = _mm512_set1_epi8(base);
    let whole = bytes.len() / 64 * 64;
    let steps = bytes[..whole]
        .chunks_exact(64)
        .zip(dst.chunks_exact_mut(64));
    let map = |vals: &[i8]| {
        // SAFETY: `vals` holds 64 bytes; AVX-512 (this function's features).
        let v = unsafe { _mm512_loadu_si512(vals.as_ptr().cast()) };
        let index = _mm512_sub_epi8(v, base_v);
        if span <= 64 {
            _mm512_permutexvar_epi8(index, t[0])
        } else if span <= 128 {
            _mm512_permutex2var_epi8(t[0], index, t[1])
        } else {
            let low = _mm512_permutex2var_epi8(t[0], index, t[1]);
            let high = _mm512_permutex2var_epi8(t[2], index, t[3]);
            _mm512_mask_blend_epi8(_mm512_movepi8_mask(index), low, high)
        }
    };
    if size_of::<O>() == 1 {
        for (vals, d) in steps {
            // SAFETY: 64 one-byte entries at `d` (an int8 entry: `from_i8` is the identity).
            unsafe { _mm512_storeu_si512(d.as_mut_ptr().cast(), map(vals)) };
        }
    } else {
        let mut out = [0i8; 64];
        for (vals, d) in steps {
            // SAFETY: `out` holds 64 bytes.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), map(vals)) };
            widen_into(d, &out);
        }
    }
    lookup_bytes(&bytes[whole..], base, small, &mut dst[whole..]);
}

/// `dst[i] = small[(v - base) as u8]` one value at a time (the tail of the vector lookups).
#[inline(always)]
fn lookup_bytes<O: Entry>(bytes: &[i8], base: i8, small: &[i8; 256], dst: &mut [MaybeUninit<O>]) {
    for (o, &v) in dst.iter_mut().zip(bytes) {
        o.write(O::from_i8(
            small[(v as u8).wrapping_sub(base as u8) as usize],
        ));
    }
}

/// Write int8 entries `out` into `dst` as `O`.
#[inline(always)]
fn widen_into<O: Entry>(dst: &mut [MaybeUninit<O>], out: &[i8]) {
    for (o, &e) in dst.iter_mut().zip(out) {
        o.write(O::from_i8(e));
    }
}

/// `dst[i] = small[(v - base) as u8]` for int8 values of `[base, base + 16 * groups)`, 32 at a
/// time with `vpshufb`: group g's 16 entries answer the bytes whose index minus 16g,
/// saturated up by 0x70, keeps the high bit clear (indices 16g..16g+15); the others give 0
/// and the groups are OR-ed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn shuffle_lookup<O: Entry>(
    bytes: &[i8],
    base: i8,
    small: &[i8; 256],
    groups: usize,
    dst: &mut [MaybeUninit<O>],
) {
    use std::arch::x86_64::*;
    let mut tables = [_mm256_setzero_si256(); 16];
    for (g, t) in tables.iter_mut().enumerate().take(groups) {
        // SAFETY: 16 * g + 16 <= 256 bytes of `small`.
        let lane = unsafe { _mm_loadu_si128(small.as_ptr().add(16 * g).cast()) };
        *t = _mm256_broadcastsi128_si256(lane);
    }
    let base_v = _mm256_set1_epi8(base);
    let lift = _mm256_set1_epi8(0x70);
    let mut out = [0i8; 32];
    let whole = bytes.len() / 32 * 32;
    for (vals, d) in bytes[..whole]
        .chunks_exact(32)
        .zip(dst.chunks_exact_mut(32))
    {
        // SAFETY: `vals` holds 32 bytes.
        let v = unsafe { _mm256_loadu_si256(vals.as_ptr().cast()) };
        let index = _mm256_sub_epi8(v, base_v);
        let mut r = _mm256_setzero_si256();
        for (g, t) in tables.iter().enumerate().take(groups) {
            let shifted = _mm256_sub_epi8(index, _mm256_set1_epi8((16 * g) as i8));
            let select = _mm256_adds_epu8(shifted, lift);
            r = _mm256_or_si256(r, _mm256_shuffle_epi8(*t, select));
        }
        // SAFETY: `out` holds 32 bytes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), r) };
        widen_into(d, &out);
    }
    lookup_bytes(&bytes[whole..], base, small, &mut dst[whole..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_marks_each_value_across_chunks() {
        let q: Vec<i16> = (0..3 * CHUNK as i64 + 5)
            .map(|i| ((i * 7) % 11 - 3) as i16)
            .filter(|&v| v != 4)
            .collect();
        let mut seen = vec![false; 12];
        presence(&q, -3, &mut seen).unwrap();
        let want: Vec<bool> = (-3..9).map(|v| v != 4 && v < 8).collect();
        assert_eq!(seen, want);
        let mut small = vec![false; 5];
        assert!(matches!(
            presence(&q, -3, &mut small),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            presence(&[i64::MIN], 1, &mut small),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn presence_sees_a_late_value_and_a_late_outlier() {
        // the span fills early, but a value outside the table comes last: still an error
        let mut q: Vec<i8> = (0..CHUNK).map(|i| (i % 3) as i8).collect();
        let mut seen = vec![false; 4];
        presence(&q, 0, &mut seen).unwrap();
        assert_eq!(seen, [true, true, true, false]);
        q[CHUNK - 1] = 5;
        assert!(presence(&q, 0, &mut seen).is_err());
        // a value missing from the span until the very end is still marked
        let mut q: Vec<i8> = (0..CHUNK).map(|i| (i % 2) as i8 * 2).collect();
        q[CHUNK - 1] = 1;
        let mut seen = vec![false; 3];
        presence(&q, 0, &mut seen).unwrap();
        assert_eq!(seen, [true, true, true]);
    }

    #[test]
    fn lookup_maps_and_checks() {
        let q: Vec<i8> = (0..CHUNK + 9).map(|i| (i % 5) as i8 - 2).collect();
        let table = [10i64, 20, 30, 40, 50];
        let mut out = vec![MaybeUninit::<i64>::uninit(); q.len()];
        lookup(&q, -2, &table, &mut out).unwrap();
        for (o, &v) in out.iter().zip(&q) {
            // SAFETY: lookup succeeded, so every element was written.
            assert_eq!(unsafe { o.assume_init() }, table[(v + 2) as usize]);
        }
        assert!(matches!(
            lookup(&q, -1, &table, &mut out),
            Err(Error::InvalidArgument(_))
        ));
        let mut short = vec![MaybeUninit::<i64>::uninit(); 3];
        assert!(matches!(
            lookup(&q, -2, &table, &mut short),
            Err(Error::Shape(_))
        ));
    }

    /// The permute path against the shuffle path and the scalar one, for every span from 1
    /// to 256 entries, bases across the int8 range, lengths with and without a tail, int8
    /// and int16 entries.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn permute_lookup_matches_shuffle_and_scalar() {
        if !VBMI.available() || !avx2() {
            return;
        }
        let mut rng = crate::kernels::test_rng::Rng(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next();
        let mut small = [0i8; 256];
        for e in small.iter_mut() {
            *e = next() as i8;
        }
        for span in 1..=256usize {
            let base = (next() % (257 - span as u64)) as i64 - 128;
            let len = [5, 64, 200, 1000][span % 4];
            let bytes: Vec<i8> = (0..len)
                .map(|_| (base + (next() % span as u64) as i64) as i8)
                .collect();
            let want: Vec<i16> = bytes
                .iter()
                .map(|&v| i16::from(small[(i64::from(v) - base) as usize]))
                .collect();
            let mut p8 = vec![MaybeUninit::<i8>::uninit(); len];
            let mut p16 = vec![MaybeUninit::<i16>::uninit(); len];
            let mut s8 = vec![MaybeUninit::<i8>::uninit(); len];
            // SAFETY: AVX-512 VBMI and AVX2 checked above; the values lie in the span.
            unsafe {
                permute_lookup(&bytes, base as i8, &small, span, &mut p8);
                permute_lookup(&bytes, base as i8, &small, span, &mut p16);
                shuffle_lookup(&bytes, base as i8, &small, span.div_ceil(16), &mut s8);
            }
            for i in 0..len {
                // SAFETY: every lookup writes all `len` outputs.
                let (a, b, c) = unsafe {
                    (
                        p8[i].assume_init(),
                        p16[i].assume_init(),
                        s8[i].assume_init(),
                    )
                };
                assert_eq!(
                    (i16::from(a), b, i16::from(c)),
                    (want[i], want[i], want[i]),
                    "span {span} at {i}"
                );
            }
        }
    }

    #[test]
    fn lookup_of_full_byte_range_through_byte_and_wide_tables() {
        let q: Vec<i8> = (0..CHUNK + 77)
            .map(|i| (i * 37 % 256) as u8 as i8)
            .collect();
        let narrow: Vec<i8> = (0..256).map(|i| (255 - i) as u8 as i8).collect();
        let wide: Vec<i16> = (0..256).map(|i: i32| (i * 120 - 7) as i16).collect();
        let mut out8 = vec![MaybeUninit::<i8>::uninit(); q.len()];
        let mut out16 = vec![MaybeUninit::<i16>::uninit(); q.len()];
        lookup(&q, -128, &narrow, &mut out8).unwrap();
        lookup(&q, -128, &wide, &mut out16).unwrap();
        for ((a, b), &v) in out8.iter().zip(&out16).zip(&q) {
            let i = (i64::from(v) + 128) as usize;
            // SAFETY: lookup succeeded, so every element was written.
            unsafe {
                assert_eq!(a.assume_init(), narrow[i]);
                assert_eq!(b.assume_init(), wide[i]);
            }
        }
    }
}
