//! The per-row measures D and Block Influence are made of, over the f32 copies of outputs and
//! stream values: squared error and per-token cosine, each over a row's counted positions only.

use anyhow::{anyhow, Result};

use crate::runtime::Activations;

fn check_same(a: &Activations, b: &Activations, counted: &[usize]) -> Result<()> {
    if a.shape != b.shape || a.shape.first() != Some(&counted.len()) {
        return Err(anyhow!(
            "output shape {:?} differs from the dense output {:?} ({} rows)",
            a.shape,
            b.shape,
            counted.len()
        ));
    }
    Ok(())
}

/// Squared error per row over its first `counted[r]` positions and all channels, in f64.
pub fn row_sse(out: &Activations, target: &Activations, counted: &[usize]) -> Result<Vec<f64>> {
    check_same(out, target, counted)?;
    let ch = out.channels();
    Ok(counted
        .iter()
        .enumerate()
        .map(|(r, &n)| {
            let n = n.min(out.positions()) * ch;
            out.row(r)[..n]
                .iter()
                .zip(&target.row(r)[..n])
                .map(|(&a, &b)| {
                    let d = f64::from(a) - f64::from(b);
                    d * d
                })
                .sum()
        })
        .collect())
}

/// Sum over rows and counted positions of cos(a, b) across channels.
pub fn row_cos_sum(a: &Activations, b: &Activations, counted: &[usize]) -> Result<f64> {
    check_same(a, b, counted)?;
    let ch = a.channels();
    let mut sum = 0.0;
    for (r, &n) in counted.iter().enumerate() {
        for t in 0..n.min(a.positions()) {
            let x = &a.row(r)[t * ch..(t + 1) * ch];
            let y = &b.row(r)[t * ch..(t + 1) * ch];
            let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
            for (&u, &v) in x.iter().zip(y) {
                let (u, v) = (f64::from(u), f64::from(v));
                xy += u * v;
                xx += u * u;
                yy += v * v;
            }
            let norm = (xx * yy).sqrt();
            sum += if norm > 0.0 { xy / norm } else { 1.0 };
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(shape: &[usize], data: &[f32]) -> Activations {
        Activations {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn sse_counts_only_the_counted_positions() {
        let a = d(&[2, 2, 2], &[1., 1., 9., 9., 0., 0., 0., 0.]);
        let b = d(&[2, 2, 2], &[0., 0., 0., 0., 1., 2., 5., 5.]);
        assert_eq!(row_sse(&a, &b, &[1, 2]).unwrap(), vec![2.0, 55.0]);
        assert!(row_sse(&a, &d(&[2, 2, 1], &[0.; 4]), &[1, 2]).is_err());
    }

    #[test]
    fn cos_of_parallel_and_orthogonal_tokens() {
        let a = d(&[1, 2, 2], &[1., 0., 0., 1.]);
        let b = d(&[1, 2, 2], &[2., 0., 1., 0.]);
        assert!((row_cos_sum(&a, &b, &[2]).unwrap() - 1.0).abs() < 1e-12);
        assert!((row_cos_sum(&a, &b, &[1]).unwrap() - 1.0).abs() < 1e-12);
    }
}
