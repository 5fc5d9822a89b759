//! The ShortGPT baseline (method doc, "Baselines"): drop whole layers, lowest Block Influence
//! first, until the target sparsity is reached. Offered so users can compare on their model.

use anyhow::{ensure, Result};

use super::{check_targets, skip_actions, sparsity};
use crate::blocks::Analysis;

/// The skip order for each target: both sub-blocks of each dropped layer, layers in order of
/// increasing Block Influence (`bi[l]`, ties by layer index). Like the beam, the drop order does
/// not depend on the target, so a sweep is one ordering cut at several points.
pub fn shortgpt_orders(
    analysis: &Analysis,
    bi: &[f64],
    targets: &[f64],
) -> Result<Vec<Vec<usize>>> {
    check_targets(analysis, targets)?;
    ensure!(
        bi.len() == analysis.layers,
        "block influence has {} values for {} layers",
        bi.len(),
        analysis.layers
    );
    let mut layers: Vec<usize> = (0..analysis.layers).collect();
    layers.sort_by(|&a, &b| {
        let key = |x: f64| if x.is_nan() { f64::INFINITY } else { x };
        key(bi[a]).total_cmp(&key(bi[b])).then(a.cmp(&b))
    });
    let n = analysis.sub_blocks.len();
    let mut orders = vec![None; targets.len()];
    let mut order = Vec::new();
    for l in layers {
        order.extend(
            analysis
                .sub_blocks
                .iter()
                .filter(|s| s.layer == l)
                .map(|s| s.index),
        );
        let s = sparsity(analysis, &skip_actions(n, &order));
        for (t, slot) in targets.iter().zip(orders.iter_mut()) {
            if slot.is_none() && s >= *t {
                *slot = Some(order.clone());
            }
        }
    }
    // Dropping every layer skips every sub-block, which reaches every checked target.
    orders
        .into_iter()
        .map(|o| {
            o.ok_or_else(|| anyhow::anyhow!("internal error: ShortGPT did not reach a target"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::testutil::analysis;

    #[test]
    fn drops_lowest_influence_layers_until_each_target() {
        let a = analysis(&[10; 8], 20); // 4 layers of 20 params, 100 in all
        let bi = [0.3, 0.1, 0.3, 0.2];
        let o = shortgpt_orders(&a, &bi, &[0.2, 0.5, 0.35]).unwrap();
        assert_eq!(o[0], vec![2, 3]);
        assert_eq!(o[1], vec![2, 3, 6, 7, 0, 1]);
        assert_eq!(o[2], vec![2, 3, 6, 7]);
        assert!(shortgpt_orders(&a, &bi[..3], &[0.2]).is_err());
        assert!(shortgpt_orders(&a, &bi, &[0.81]).is_err());
    }
}
