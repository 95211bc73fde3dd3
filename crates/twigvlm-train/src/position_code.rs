//! How a projector-words target says where its patch is, so that the language model reads the row
//! and the column straight off the visual token through its own (tied) word embeddings.
//!
//! The row words (digits) and the column words (number words) span a small subspace of the
//! embedding space, 2 × (grid − 1) dimensions once each set's mean is taken out. A target keeps its
//! content (colour and shape words, or "empty") and the position words' common part outside that
//! subspace, and puts inside it one vector per row and per column chosen so that the dot product
//! with each row word's embedding is highest for its own row by exactly [`POSITION_MARGIN`] (the
//! same for columns), and equal for all columns (rows). Nothing else in the token moves those
//! dot products, so "row 3" and "column five" are read off without interference (measured against
//! the plain sum of the words in docs/training.md, "Projector-words targets").

/// Weight of the row and column words' common part (each set's mean embedding) in a target,
/// relative to its content words: it marks the token as carrying a position.
pub const POSITION_WORD_WEIGHT: f32 = 0.3;

/// How far the dot product of a target with its own row word's embedding stands above that with
/// any other row word's (the same for columns): the language model's own readout margin.
pub const POSITION_MARGIN: f32 = 1.0;

/// Added to the Gram matrix's diagonal, as a share of its largest entry, before it is inverted:
/// negligible for words that differ (SmolLM2's smallest eigenvalue is far above it), and it keeps
/// words a tokenizer cannot tell apart (the same tokens) from breaking the inverse: their
/// difference vectors are zero, so they get no code and nothing else changes.
const GRAM_RIDGE: f64 = 1e-9;

/// The position part of projector-words targets for a grid, built from the embeddings of its row
/// and column words.
#[derive(Debug, Clone)]
pub struct PositionCode {
    /// Spanning vectors of the position subspace (each set's words minus the set's mean, the
    /// last of each set left out: it is minus the sum of the others).
    spanning: Vec<Vec<f64>>,
    /// Their dual vectors: `dual[i] · spanning[j] = δ_ij`, inside the subspace.
    dual: Vec<Vec<f64>>,
    /// The common part, [`POSITION_WORD_WEIGHT`] × (mean row word + mean column word).
    common: Vec<f64>,
    /// Each row's and each column's vector inside the subspace, margin included.
    rows: Vec<Vec<f64>>,
    columns: Vec<Vec<f64>>,
}

impl PositionCode {
    /// `rows` and `columns` are the embeddings of the row and column words, in grid order.
    pub fn new(rows: &[Vec<f32>], columns: &[Vec<f32>]) -> Self {
        let d = rows.first().or(columns.first()).map_or(0, Vec::len);
        let (row_mean, row_distinct) = centred(rows, d);
        let (column_mean, column_distinct) = centred(columns, d);
        let leave_last = |v: &[Vec<f64>]| v[..v.len().saturating_sub(1)].to_vec();
        let spanning: Vec<Vec<f64>> =
            leave_last(&row_distinct).into_iter().chain(leave_last(&column_distinct)).collect();
        let gram: Vec<Vec<f64>> = spanning.iter().map(|a| spanning.iter().map(|b| dot(a, b)).collect()).collect();
        let inverse = invert(gram);
        let dual: Vec<Vec<f64>> = inverse.iter().map(|coefficients| combine(coefficients, &spanning, d)).collect();
        let row_dual = &dual[..rows.len().saturating_sub(1)];
        let column_dual = &dual[rows.len().saturating_sub(1)..];
        let common =
            row_mean.iter().zip(&column_mean).map(|(r, c)| f64::from(POSITION_WORD_WEIGHT) * (r + c)).collect();
        Self {
            rows: set_codes(row_dual, rows.len(), d),
            columns: set_codes(column_dual, columns.len(), d),
            spanning,
            dual,
            common,
        }
    }

    /// The target of a cell whose content words sum to `content`: content and common part with
    /// their share in the position subspace taken out, plus the row's and the column's vectors.
    pub fn target(&self, content: &[f32], row: usize, column: usize) -> Vec<f32> {
        let carried = self.outside(content.iter().zip(&self.common).map(|(&c, m)| f64::from(c) + m).collect());
        let (row, column) = (&self.rows[row], &self.columns[column]);
        (0..carried.len()).map(|i| (carried[i] + row[i] + column[i]) as f32).collect()
    }

    /// `v` without its share in the position subspace (`Σ_i dual[i] (spanning[i] · v)` is that share).
    fn outside(&self, mut v: Vec<f64>) -> Vec<f64> {
        for (dual, spanning) in self.dual.iter().zip(&self.spanning) {
            let share = dot(spanning, &v);
            v.iter_mut().zip(dual).for_each(|(x, u)| *x -= share * u);
        }
        v
    }
}

/// The set's mean and each vector's difference from it, in f64.
fn centred(vectors: &[Vec<f32>], d: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = vectors.len().max(1) as f64;
    let mean: Vec<f64> = (0..d).map(|i| vectors.iter().map(|v| f64::from(v[i])).sum::<f64>() / n).collect();
    let distinct = vectors.iter().map(|v| v.iter().zip(&mean).map(|(&x, m)| f64::from(x) - m).collect()).collect();
    (mean, distinct)
}

/// The code of each of a set's `n` words: [`POSITION_MARGIN`] × the combination of the set's dual
/// vectors whose dot product with word k's difference from the mean is `δ_wk − 1/n`, so that with
/// the word itself it is higher by the margin than with any other word of the set.
fn set_codes(dual: &[Vec<f64>], n: usize, d: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|word| {
            let coefficients: Vec<f64> = (0..dual.len())
                .map(|k| f64::from(POSITION_MARGIN) * (f64::from(u8::from(k == word)) - 1.0 / n as f64))
                .collect();
            combine(&coefficients, dual, d)
        })
        .collect()
}

/// `Σ coefficients[i] × vectors[i]`.
fn combine(coefficients: &[f64], vectors: &[Vec<f64>], d: usize) -> Vec<f64> {
    coefficients.iter().zip(vectors).fold(vec![0.0; d], |mut acc, (c, v)| {
        acc.iter_mut().zip(v).for_each(|(a, x)| *a += c * x);
        acc
    })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The inverse of a small Gram matrix with [`GRAM_RIDGE`] added to its diagonal (Gauss–Jordan with
/// partial pivoting).
fn invert(matrix: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = matrix.len();
    let scale = (0..n).map(|i| matrix[i][i].abs()).fold(0.0, f64::max);
    // All-zero differences: any positive ridge gives the zero code.
    let ridge = if scale > 0.0 { GRAM_RIDGE * scale } else { 1.0 };
    let mut rows: Vec<Vec<f64>> = matrix
        .into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            row[i] += ridge;
            row.extend((0..n).map(|j| f64::from(u8::from(i == j))));
            row
        })
        .collect();
    for column in 0..n {
        let pivot =
            (column..n).max_by(|&a, &b| rows[a][column].abs().total_cmp(&rows[b][column].abs())).expect("a row");
        rows.swap(column, pivot);
        let p = rows[column][column];
        rows[column].iter_mut().for_each(|x| *x /= p);
        let pivot_row = rows[column].clone();
        for (r, row) in rows.iter_mut().enumerate() {
            if r != column {
                let f = row[column];
                row.iter_mut().zip(&pivot_row).for_each(|(x, y)| *x -= f * y);
            }
        }
    }
    rows.into_iter().map(|row| row[n..].to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random vector (no RNG dependency needed for a test fixture).
    fn vector(seed: u64, d: usize) -> Vec<f32> {
        (0..d as u64)
            .map(|i| {
                let h = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add((i + 1).wrapping_mul(1_442_695_040_888_963_407));
                ((h ^ (h >> 29)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn dot32(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn the_word_embeddings_read_row_and_column_off_a_target_by_the_margin_whatever_its_content() {
        let (d, grid) = (32, 4);
        // Correlated words, as digits are: a shared part plus a small own part.
        let shared = vector(1, d);
        let word = |seed: u64| -> Vec<f32> { shared.iter().zip(vector(seed, d)).map(|(s, o)| s + 0.3 * o).collect() };
        let rows: Vec<Vec<f32>> = (0..grid).map(|k| word(10 + k as u64)).collect();
        let columns: Vec<Vec<f32>> = (0..grid).map(|k| word(20 + k as u64)).collect();
        let code = PositionCode::new(&rows, &columns);
        for (row, column, content_seed) in [(0, 3, 31), (2, 2, 32), (3, 0, 33)] {
            // Content that leans towards another row's and another column's words.
            let content: Vec<f32> = vector(content_seed, d)
                .iter()
                .zip(&rows[(row + 1) % grid])
                .zip(&columns[(column + 1) % grid])
                .map(|((c, r), k)| c + 2.0 * r + 2.0 * k)
                .collect();
            let target = code.target(&content, row, column);
            for (words, own) in [(&rows, row), (&columns, column)] {
                let scores: Vec<f32> = words.iter().map(|w| dot32(&target, w)).collect();
                for (k, score) in scores.iter().enumerate().filter(|&(k, _)| k != own) {
                    let margin = scores[own] - score;
                    assert!((margin - POSITION_MARGIN).abs() < 1e-3, "word {k} against {own}: margin {margin}");
                }
            }
        }
    }

    #[test]
    fn content_outside_the_position_words_passes_unchanged() {
        let (d, grid) = (16, 2);
        let rows: Vec<Vec<f32>> = (0..grid).map(|k| vector(40 + k as u64, d)).collect();
        let columns: Vec<Vec<f32>> = (0..grid).map(|k| vector(50 + k as u64, d)).collect();
        let code = PositionCode::new(&rows, &columns);
        let zero = vec![0.0; d];
        let baseline = code.target(&zero, 1, 0);
        // A content vector orthogonal to the position subspace: the target moves by exactly it.
        let content: Vec<f32> =
            code.outside(vector(60, d).iter().map(|&c| f64::from(c)).collect()).iter().map(|&c| c as f32).collect();
        let target = code.target(&content, 1, 0);
        for i in 0..d {
            assert!((target[i] - baseline[i] - content[i]).abs() < 1e-4, "dimension {i}");
        }
    }

    #[test]
    fn words_a_tokenizer_cannot_tell_apart_get_no_code_and_the_others_keep_theirs() {
        let (d, grid) = (8, 3);
        let rows = vec![vector(70, d); grid];
        let columns: Vec<Vec<f32>> = (0..grid).map(|k| vector(80 + k as u64, d)).collect();
        let code = PositionCode::new(&rows, &columns);
        let content = vector(90, d);
        let (first, last) = (code.target(&content, 0, 1), code.target(&content, 2, 1));
        assert!(
            first.iter().zip(&last).all(|(a, b)| (a - b).abs() < 1e-5),
            "rows that are the same words must give the same target"
        );
        let scores: Vec<f32> = columns.iter().map(|w| dot32(&first, w)).collect();
        assert!(
            (scores[1] - scores[0] - POSITION_MARGIN).abs() < 1e-3
                && (scores[1] - scores[2] - POSITION_MARGIN).abs() < 1e-3,
            "{scores:?}"
        );
    }
}
