//! The packed right operand shared by the SIMD integer kernels: a (K, N) matrix cut into
//! panels of `LANES` columns (one vector of i32 lanes), each panel holding, for every group
//! of `DEPTH` consecutive k, `LANES` lanes of `DEPTH` values (the values one i32 lane of a
//! multiply-add instruction sums). K and N tails are zero.
//!
//! `vnni` uses 16 lanes of 4 bytes (`vpdpbusd`), `madd` 8 lanes of 2 i16 (`vpmaddwd`) and
//! `maddubs` 8 lanes of 4 bytes (`vpmaddubsw`).

/// A (K, N) matrix packed into panels of `LANES` columns and groups of `DEPTH` rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panels<T, const LANES: usize, const DEPTH: usize> {
    /// panels · groups · LANES lanes · DEPTH values, where value q of lane l of group g of
    /// panel p is B[DEPTH·g + q, LANES·p + l] (0 outside the matrix).
    data: Vec<T>,
    groups: usize,
    panels: usize,
    n: usize,
}

impl<T: Copy + Default, const LANES: usize, const DEPTH: usize> Panels<T, LANES, DEPTH> {
    /// A zero (K, N) matrix, to fill with `put_row`, `put_group` or at `slot` indices.
    pub fn zeros(k: usize, n: usize) -> Self {
        let groups = k.div_ceil(DEPTH);
        let panels = n.div_ceil(LANES);
        Panels {
            data: vec![T::default(); panels * groups * LANES * DEPTH],
            groups,
            panels,
            n,
        }
    }

    /// Pack a row-major (K, N) matrix whose values are converted with `conv` (the caller
    /// has checked that they fit; the conversion truncates).
    pub fn pack<S: Copy>(b: &[S], k: usize, n: usize, conv: impl Fn(S) -> T) -> Self {
        let mut packed = Self::zeros(k, n);
        if b.len() >= k * n {
            for (kk, row) in b.chunks_exact(n.max(1)).take(k).enumerate() {
                packed.put_row(kk, row, &conv);
            }
        }
        packed
    }

    /// Set row `kk` (< K) to `conv(v)` of the values of `row` (at most N are used).
    #[inline]
    pub fn put_row<S: Copy>(&mut self, kk: usize, row: &[S], conv: impl Fn(S) -> T) {
        let (g, q) = (kk / DEPTH, kk % DEPTH);
        if g >= self.groups {
            return;
        }
        let stride = self.panel_len();
        let row = &row[..row.len().min(self.n)];
        for (p, chunk) in row.chunks(LANES).enumerate() {
            let base = p * stride + g * LANES * DEPTH + q;
            // Lanes 0..len of value q: every DEPTH-th value from `base` (chunks are never
            // empty).
            let dst = &mut self.data[base..base + DEPTH * (chunk.len() - 1) + 1];
            for (d, &v) in dst.iter_mut().step_by(DEPTH).zip(chunk) {
                *d = conv(v);
            }
        }
    }

    /// Set the rows DEPTH·g.. of group g (< K/DEPTH rounded up) to `conv(v)` of the values
    /// of `rows` (rows past K must be zero; at most N values of each are used): one lane of
    /// DEPTH values per column.
    #[inline]
    pub fn put_group<S: Copy>(&mut self, g: usize, rows: [&[S]; DEPTH], conv: impl Fn(S) -> T) {
        if g >= self.groups {
            return;
        }
        let stride = self.panel_len();
        let n = rows.iter().map(|r| r.len()).min().unwrap_or(0).min(self.n);
        for (p, start) in (0..n).step_by(LANES).enumerate() {
            let len = LANES.min(n - start);
            let base = p * stride + g * LANES * DEPTH;
            let dst = &mut self.data[base..base + DEPTH * len];
            for (lane, values) in dst.chunks_exact_mut(DEPTH).enumerate() {
                for (d, row) in values.iter_mut().zip(&rows) {
                    *d = conv(row[start + lane]);
                }
            }
        }
    }

    /// The index in `data()` of B[kk, j] (kk < K rounded up to DEPTH, j < N rounded up to
    /// LANES).
    #[inline(always)]
    pub fn slot(&self, kk: usize, j: usize) -> usize {
        ((j / LANES * self.groups + kk / DEPTH) * LANES + j % LANES) * DEPTH + kk % DEPTH
    }

    /// The packed values.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The packed values, to be written at `slot` indices (builders such as the conv's
    /// im2col write straight into the layout).
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Groups of DEPTH rows (K rounded up to DEPTH, divided by DEPTH).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Panels of LANES columns.
    pub fn panels(&self) -> usize {
        self.panels
    }

    /// Rows covered by the groups (K rounded up to DEPTH): the row length of a left operand.
    pub fn padded_k(&self) -> usize {
        self.groups * DEPTH
    }

    /// Columns covered by the panels (N rounded up to LANES).
    pub fn padded_n(&self) -> usize {
        self.panels * LANES
    }

    /// Values of one panel.
    pub fn panel_len(&self) -> usize {
        self.groups * LANES * DEPTH
    }

    /// The values of panel p.
    pub fn panel(&self, p: usize) -> &[T] {
        let len = self.panel_len();
        &self.data[p * len..(p + 1) * len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_rows_and_groups_agree() {
        // K = 7 (a group of 4 and a padded one), N = 37 (panels of 8 with a tail).
        let b: Vec<i64> = (0..7 * 37).map(|i| i % 200 - 100).collect();
        let p = Panels::<i16, 8, 4>::pack(&b, 7, 37, |v| v as i16);
        assert_eq!(
            (p.groups(), p.panels(), p.padded_k(), p.padded_n()),
            (2, 5, 8, 40)
        );
        for kk in 0..8 {
            for j in 0..40 {
                let want = if kk < 7 && j < 37 {
                    b[kk * 37 + j] as i16
                } else {
                    0
                };
                assert_eq!(p.data()[p.slot(kk, j)], want, "{kk} {j}");
            }
        }
        let mut by_group = Panels::<i16, 8, 4>::zeros(7, 37);
        let zero = vec![0i64; 37];
        let row = |r: usize| {
            if r < 7 {
                &b[r * 37..(r + 1) * 37]
            } else {
                &zero[..]
            }
        };
        for g in 0..2 {
            let rows = [row(4 * g), row(4 * g + 1), row(4 * g + 2), row(4 * g + 3)];
            by_group.put_group(g, rows, |v| v as i16);
        }
        by_group.put_group(9, [&b[..], &b[..], &b[..], &b[..]], |v| v as i16); // beyond K
        assert_eq!(by_group, p);
        assert_eq!(p.panel(1), &p.data()[p.panel_len()..2 * p.panel_len()]);
        let empty = Panels::<u8, 16, 4>::pack(&[] as &[i64], 0, 0, |v| v as u8);
        assert_eq!(
            (empty.groups(), empty.panels(), empty.data().len()),
            (0, 0, 0)
        );
    }
}
