//! Unit tests on a hand-built toy encoder whose analysis is known exactly, with a tiny
//! interpreter so that the rewritten graph's *values* are checked against the plan's meaning
//! (skip = identity, re-use of q at p = q's function on p's stream with p's side inputs).

use std::collections::HashMap;

use bytes::Bytes;

use super::*;
use crate::blocks::{Kind, SubBlock};
use crate::onnx::{tensor_proto::data_type, NodeProto, ValueInfoProto};

const W: usize = 3;

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(name.to_string()),
        op_type: Some(op.to_string()),
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.to_string()),
        raw_data: Some(Bytes::copy_from_slice(bytemuck::cast_slice(values))),
        ..Default::default()
    }
}

fn vi(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        ..Default::default()
    }
}

/// `layers` layers of `h += (h·Wa) * s` (attention; side input `s` = `sigmoid(m·k)` on even
/// layers, `m·k` on odd ones, so a re-use must bind the target's side input) and
/// `h += h·Wf` (ffn), after `h0 = x * c`; epilogue `y = Relu(h)` or, without one, the last
/// stream value is the graph output itself.
fn toy(layers: usize, epilogue: bool) -> (ModelProto, Analysis) {
    let mut g = GraphProto {
        name: Some("toy".into()),
        input: vec![vi("x"), vi("m")],
        ..Default::default()
    };
    g.node.push(node("Mul", "embed", &["x", "c"], "h0"));
    // The mask branch has its own weight, like T5's position-bias table: it must go exactly
    // when no attention reads it any more.
    g.node.push(node("Mul", "mask_scale", &["m", "k"], "mk"));
    g.node.push(node("Sigmoid", "mask", &["mk"], "ms"));
    g.initializer
        .push(tensor("c", &[W as i64], &[1.0, 2.0, 0.5]));
    g.initializer
        .push(tensor("k", &[W as i64], &[0.5, -1.0, 3.0]));
    let prologue = vec![0, 1, 2];
    let mut sub_blocks = Vec::new();
    for p in 0..2 * layers {
        let (i, o) = (format!("h{p}"), format!("h{}", p + 1));
        let w = format!("w{p}");
        let vals: Vec<f32> = (0..W * W)
            .map(|k| ((k * 7 + p * 3) % 11) as f32 / 10.0 - 0.4)
            .collect();
        g.initializer.push(tensor(&w, &[W as i64, W as i64], &vals));
        let start = g.node.len();
        let mm = format!("mm{p}");
        g.node
            .push(node("MatMul", &format!("n_mm{p}"), &[&i, &w], &mm));
        g.value_info.push(vi(&mm));
        let (kind, side) = if p % 2 == 0 {
            let gated = format!("gated{p}");
            let side = if p % 4 == 0 { "ms" } else { "mk" };
            g.node
                .push(node("Mul", &format!("n_gate{p}"), &[&mm, side], &gated));
            g.node
                .push(node("Add", &format!("n_add{p}"), &[&i, &gated], &o));
            (Kind::Attention, vec![side.to_string()])
        } else {
            g.node
                .push(node("Add", &format!("n_add{p}"), &[&i, &mm], &o));
            (Kind::Ffn, vec![])
        };
        sub_blocks.push(SubBlock {
            index: p,
            layer: p / 2,
            kind,
            nodes: (start..g.node.len()).collect(),
            input: i,
            output: o,
            side_inputs: side,
            initializers: vec![w],
            params: (W * W) as u64,
            signature: format!("{kind:?}"),
        });
    }
    let last = format!("h{}", 2 * layers);
    let mut epi = vec![];
    if epilogue {
        epi.push(g.node.len());
        g.node.push(node("Relu", "final", &[&last], "y"));
        g.output.push(vi("y"));
    } else {
        g.output.push(vi(&last));
    }
    let model = ModelProto {
        ir_version: Some(8),
        graph: Some(g.clone()),
        metadata_props: vec![StringStringEntryProto::new("author", "toy")],
        ..Default::default()
    };
    let total = g
        .initializer
        .iter()
        .map(|t| element_count(t).unwrap())
        .sum();
    let analysis = Analysis {
        graph: g,
        sub_blocks,
        prologue,
        epilogue: epi,
        prologue_params: 2 * W as u64,
        epilogue_params: 0,
        shared_params: 0,
        total_params: total,
        layers,
        family: None,
        structure_signature: "toy".into(),
    };
    (model, analysis)
}

/// Evaluates the toy's op set on one token (vectors of width W).
fn eval(g: &GraphProto, x: &[f32], m: &[f32]) -> Vec<Vec<f32>> {
    let mut env: HashMap<String, Vec<f32>> = HashMap::new();
    env.insert("x".into(), x.to_vec());
    env.insert("m".into(), m.to_vec());
    for t in &g.initializer {
        env.insert(
            t.name().into(),
            bytemuck::cast_slice(t.raw_data.as_ref().unwrap()).to_vec(),
        );
    }
    for n in &g.node {
        let a = &env[&n.input[0]];
        let r: Vec<f32> = match n.op_type() {
            "Identity" => a.clone(),
            "Relu" => a.iter().map(|v| v.max(0.0)).collect(),
            "Sigmoid" => a.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            "Mul" => a
                .iter()
                .zip(&env[&n.input[1]])
                .map(|(a, b)| a * b)
                .collect(),
            "Add" => a
                .iter()
                .zip(&env[&n.input[1]])
                .map(|(a, b)| a + b)
                .collect(),
            "MatMul" => {
                let w = &env[&n.input[1]];
                (0..W)
                    .map(|j| (0..W).map(|k| a[k] * w[k * W + j]).sum())
                    .collect()
            }
            op => panic!("toy interpreter has no {op}"),
        };
        env.insert(n.output[0].clone(), r);
    }
    g.output.iter().map(|o| env[o.name()].clone()).collect()
}

/// The plan's meaning, computed directly from the dense graph's pieces: each position runs
/// its own or its source's function on the stream, or passes the stream through.
fn reference(
    model: &ModelProto,
    analysis: &Analysis,
    actions: &[Action],
    x: &[f32],
    m: &[f32],
) -> Vec<f32> {
    let g = model.graph.as_ref().unwrap();
    let w = |p: usize| -> Vec<f32> {
        let t = g
            .initializer
            .iter()
            .find(|t| t.name() == format!("w{p}"))
            .unwrap();
        bytemuck::cast_slice(t.raw_data.as_ref().unwrap()).to_vec()
    };
    let mk: Vec<f32> = m.iter().zip([0.5, -1.0, 3.0]).map(|(v, k)| v * k).collect();
    let ms: Vec<f32> = mk.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
    let mut h: Vec<f32> = x.iter().zip([1.0, 2.0, 0.5]).map(|(a, b)| a * b).collect();
    for (p, a) in actions.iter().enumerate() {
        let q = match *a {
            Action::Keep => p,
            Action::Skip => continue,
            Action::Reuse(q) => q,
        };
        let wq = w(q);
        let mm: Vec<f32> = (0..W)
            .map(|j| (0..W).map(|k| h[k] * wq[k * W + j]).sum())
            .collect();
        let delta: Vec<f32> = match analysis.sub_blocks[q].kind {
            Kind::Attention => {
                let side = if p % 4 == 0 { &ms } else { &mk };
                mm.iter().zip(side).map(|(a, b)| a * b).collect()
            }
            Kind::Ffn => mm,
        };
        h = h.iter().zip(&delta).map(|(a, b)| a + b).collect();
    }
    if analysis.epilogue.is_empty() {
        h
    } else {
        h.iter().map(|v| v.max(0.0)).collect()
    }
}

fn run(
    layers: usize,
    epilogue: bool,
    actions: &[Action],
    opts: &RewriteOptions,
) -> (ModelProto, RewriteReport) {
    let (model, analysis) = toy(layers, epilogue);
    let (out, report) = apply_plan(&model, &analysis, actions, opts).unwrap();
    let g = out.graph.as_ref().unwrap();
    check(g).unwrap();
    let (x, m) = ([0.3, -1.2, 0.7], [0.1, 2.0, -0.5]);
    let got = eval(g, &x, &m);
    let want = reference(&model, &analysis, actions, &x, &m);
    assert_eq!(got.len(), 1);
    for (a, b) in got[0].iter().zip(&want) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "{actions:?}: {:?} vs {want:?}",
            got[0]
        );
    }
    assert_eq!(
        report.params_removed,
        crate::action::removed_params(&analysis, actions),
        "{actions:?}"
    );
    (out, report)
}

use Action::{Keep as K, Reuse as R, Skip as S};

#[test]
fn keep_all_is_the_dense_graph() {
    let (model, _) = toy(2, true);
    let (out, report) = run(2, true, &[K, K, K, K], &RewriteOptions::default());
    assert_eq!(
        out.graph.as_ref().unwrap().node,
        model.graph.as_ref().unwrap().node
    );
    assert_eq!(report.params_removed, 0);
    assert_eq!(report.edits, 0);
}

#[test]
fn skips_bypass_and_free_weights() {
    for actions in [
        [S, K, K, K],
        [K, S, K, K],
        [K, K, S, S],
        [S, S, K, S],
        [S, S, S, S],
    ] {
        let (out, report) = run(2, true, &actions, &RewriteOptions::default());
        let g = out.graph.as_ref().unwrap();
        let skipped = actions.iter().filter(|a| **a == S).count() as u64;
        let mask_gone = actions[0] == S && actions[2] == S;
        let mask_params = if mask_gone { W as u64 } else { 0 };
        assert_eq!(
            g.node.iter().any(|n| n.name() == "mask"),
            actions[0] != S,
            "{actions:?}"
        );
        assert_eq!(
            report.params_removed,
            skipped * (W * W) as u64 + mask_params,
            "{actions:?}"
        );
        for (p, a) in actions.iter().enumerate() {
            let present = g.initializer.iter().any(|t| t.name() == format!("w{p}"));
            assert_eq!(present, *a != S, "{actions:?}: w{p}");
        }
        // The mask branch of the prologue goes once no attention reads it; inputs stay.
        assert_eq!(
            g.node.iter().any(|n| n.name() == "mask_scale"),
            !mask_gone,
            "{actions:?}"
        );
        assert_eq!(g.input.len(), 2);
        // The stream after a skipped position is whatever carried it before.
        let mut cur = "h0".to_string();
        for (p, a) in actions.iter().enumerate() {
            if *a == K {
                cur = format!("h{}", p + 1);
            }
            assert_eq!(report.stream_values[p], cur, "{actions:?}");
        }
        assert!(g
            .value_info
            .iter()
            .all(|v| g.node.iter().any(|n| n.output[0] == v.name())));
    }
}

#[test]
fn skipping_the_block_that_feeds_the_graph_output_keeps_the_output_name() {
    for actions in [[K, K, K, S], [K, K, S, S], [S, S, S, S], [K, K, K, R(1)]] {
        let (out, _) = run(2, false, &actions, &RewriteOptions::default());
        let g = out.graph.as_ref().unwrap();
        assert_eq!(g.output[0].name(), "h4");
        if actions[3] == S {
            let last = g.node.last().unwrap();
            assert_eq!(
                (last.op_type(), last.output[0].as_str()),
                ("Identity", "h4")
            );
        }
    }
}

#[test]
fn reuse_runs_the_source_weights_on_the_target_stream() {
    for actions in [
        [K, S, R(0), K],
        [R(2), K, K, S],
        [K, R(3), S, K],
        [K, K, R(0), R(1)],
        [R(2), K, K, K],
    ] {
        let (out, report) = run(2, true, &actions, &RewriteOptions::default());
        let g = out.graph.as_ref().unwrap();
        // Shared: the source's weights are stored once, no new initializer appears.
        let names: Vec<&str> = g.initializer.iter().map(|t| t.name()).collect();
        assert!(
            names
                .iter()
                .all(|n| ["c", "k"].contains(n) || n.starts_with('w') && !n.contains("skrr")),
            "{names:?}"
        );
        assert_eq!(report.params_copied, 0);
        assert_eq!(
            report.reused.len(),
            actions.iter().filter(|a| matches!(a, R(_))).count()
        );
    }
}

#[test]
fn reuse_with_copied_weights_reports_the_copies() {
    let opts = RewriteOptions {
        reuse_weights: ReuseWeights::Copy,
        ..Default::default()
    };
    let (out, report) = run(2, true, &[K, S, R(0), K], &opts);
    let g = out.graph.as_ref().unwrap();
    assert!(g.initializer.iter().any(|t| t.name() == "w0/skrr2"));
    assert_eq!(report.params_copied, (W * W) as u64);
    assert_eq!(report.bytes_copied, (W * W * 4) as u64);
    assert_eq!(report.params_removed, 2 * (W * W) as u64);
}

#[test]
fn output_keeps_the_header_and_records_the_plan() {
    let (model, _) = toy(2, true);
    let (out, _) = run(2, true, &[K, S, R(0), K], &RewriteOptions::default());
    assert_eq!(out.ir_version, model.ir_version);
    assert_eq!(out.opset_import, model.opset_import);
    let meta: HashMap<&str, &str> = out
        .metadata_props
        .iter()
        .map(|e| (e.key(), e.value()))
        .collect();
    assert_eq!(meta["author"], "toy");
    let plan: PlanFile = serde_json::from_str(meta[META_PLAN]).unwrap();
    let actions: Vec<&str> = plan.sub_blocks.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(actions, ["keep", "skip", "reuse", "keep"]);
    assert_eq!(plan.sub_blocks[2].source, Some(0));
    // Pruning the pruned model again keeps the earlier plans under numbered keys, oldest 1.
    let (_, analysis) = toy(2, true);
    let (again, _) =
        apply_plan(&out, &analysis, &[K, K, K, K], &RewriteOptions::default()).unwrap();
    let (third, _) =
        apply_plan(&again, &analysis, &[K, K, S, K], &RewriteOptions::default()).unwrap();
    let plans: HashMap<&str, Vec<&str>> = third
        .metadata_props
        .iter()
        .filter(|e| e.key().starts_with(META_PLAN))
        .map(|e| {
            let plan: PlanFile = serde_json::from_str(e.value()).unwrap();
            (
                e.key(),
                plan.sub_blocks.iter().map(|s| s.action.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(plans.len(), 3, "{plans:?}");
    assert_eq!(plans["skrr.plan.1"], ["keep", "skip", "reuse", "keep"]);
    assert_eq!(plans["skrr.plan.2"], ["keep"; 4]);
    assert_eq!(plans[META_PLAN], ["keep", "keep", "skip", "keep"]);
    let versions = third
        .metadata_props
        .iter()
        .filter(|e| e.key().starts_with(META_VERSION));
    assert_eq!(versions.count(), 3);
    // With a record deleted by hand (no `.1`), the next number is above the highest left.
    let mut gap = third.clone();
    gap.metadata_props.retain(|e| !e.key().ends_with(".1"));
    let (fourth, _) = apply_plan(&gap, &analysis, &[K; 4], &RewriteOptions::default()).unwrap();
    let keys: Vec<&str> = fourth.metadata_props.iter().map(|e| e.key()).collect();
    let unique: std::collections::HashSet<&&str> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "{keys:?}");
    assert!(
        keys.contains(&"skrr.plan.3") && keys.contains(&"skrr.version.3"),
        "{keys:?}"
    );
}

#[test]
fn invalid_plans_are_refused() {
    let (model, analysis) = toy(2, true);
    let opts = RewriteOptions::default();
    for actions in [
        vec![K, K, K],
        vec![R(1), K, K, K],
        vec![K, K, R(0), K]
            .into_iter()
            .map(|a| if a == K { S } else { a })
            .collect(),
    ] {
        assert!(
            apply_plan(&model, &analysis, &actions, &opts).is_err(),
            "{actions:?}"
        );
    }
}

#[test]
fn check_finds_broken_graphs() {
    let (_, analysis) = toy(1, true);
    let g = &analysis.graph;
    check(g).unwrap();
    let mut missing = g.clone();
    missing.node[3].input[0] = "nowhere".into();
    assert!(check(&missing).unwrap_err().to_string().contains("nowhere"));
    let mut twice = g.clone();
    twice.node[4].output[0] = "mm0".into();
    assert!(check(&twice).is_err());
    let mut unordered = g.clone();
    unordered.node.swap(3, 4);
    assert!(check(&unordered).is_err());
    let mut dangling = g.clone();
    dangling.output[0].name = Some("ghost".into());
    assert!(check(&dangling).unwrap_err().to_string().contains("ghost"));
}

#[test]
fn a_cycle_made_by_edits_is_an_error() {
    let (_, analysis) = toy(1, true);
    let edits = [
        Edit::Bypass {
            from: "h1".into(),
            to: "h2".into(),
        },
        Edit::Bypass {
            from: "h2".into(),
            to: "h1".into(),
        },
    ];
    assert!(apply_edits(&analysis.graph, &edits)
        .unwrap_err()
        .to_string()
        .contains("cycle"));
}

/// Initializers also listed as graph inputs (IR version < 4, `keep_initializers_as_inputs`):
/// a removed weight takes its declaration along, a copied one gets its own, and the rewritten
/// model is fed exactly what the dense one is fed.
#[test]
fn graph_inputs_declaring_initializers_follow_them() {
    let (mut model, mut analysis) = toy(2, true);
    let declared: Vec<ValueInfoProto> = analysis
        .graph
        .initializer
        .iter()
        .map(|t| vi(t.name()))
        .collect();
    analysis.graph.input.extend(declared.clone());
    model.graph.as_mut().unwrap().input.extend(declared);
    for (actions, reuse_weights) in [
        ([S, K, K, K], ReuseWeights::Share),
        ([S, S, K, S], ReuseWeights::Share),
        ([K, S, R(0), K], ReuseWeights::Share),
        ([K, S, R(0), K], ReuseWeights::Copy),
    ] {
        let opts = RewriteOptions {
            reuse_weights,
            ..Default::default()
        };
        let (out, report) = apply_plan(&model, &analysis, &actions, &opts).unwrap();
        let g = out.graph.as_ref().unwrap();
        let inputs: Vec<&str> = g.input.iter().map(|i| i.name()).collect();
        let inits: Vec<&str> = g.initializer.iter().map(|t| t.name()).collect();
        assert_eq!(inputs[..2], ["x", "m"], "{actions:?}");
        assert_eq!(inputs[2..], inits, "{actions:?} {reuse_weights:?}");
        assert!(report.params_removed > 0);
        assert!(inits.contains(&"w0/skrr2") == (reuse_weights == ReuseWeights::Copy));
    }
}

#[test]
fn check_interface_finds_an_input_left_without_its_initializer() {
    let (_, analysis) = toy(1, true);
    let mut before = analysis.graph.clone();
    before.input.push(vi("w0"));
    let mut after = before.clone();
    check_interface(&before, &after).unwrap();
    after.initializer.retain(|t| t.name() != "w0");
    // Structurally valid (the graph input defines what the node reads), yet a weight is gone
    // and callers would have to feed it.
    check(&after).unwrap();
    let e = check_interface(&before, &after).unwrap_err().to_string();
    assert!(e.contains("w0"), "{e}");
}

#[test]
fn an_output_map_computes_the_output_and_other_readers_keep_the_plain_value() {
    use crate::compensate::{Compensation, LinearMap, OutputMap};
    use crate::runtime::Activations;
    let (model, mut analysis) = toy(2, true);
    let g = &mut analysis.graph;
    g.output[0] = ValueInfoProto::fixed_tensor("y", data_type::FLOAT, &[1, W as i64]);
    // A second output computed from the compensated one, like a pooler.
    g.node.push(node("Sigmoid", "pool", &["y"], "pooled"));
    g.output.push(vi("pooled"));
    analysis.epilogue.push(g.node.len() - 1);
    let map = LinearMap {
        dim: W,
        weight: (0..W * W).map(|k| k as f64 / 4.0 - 1.0).collect(),
        bias: vec![0.5, -0.25, 2.0],
    };
    let compensation = Some(Compensation::Output(OutputMap {
        output: "y".into(),
        map: map.clone(),
    }));
    let actions = [K, S, R(0), K];
    let plain_opts = RewriteOptions::default();
    let opts = RewriteOptions {
        compensation: compensation.clone(),
        ..Default::default()
    };
    let (plain, _) = apply_plan(&model, &analysis, &actions, &plain_opts).unwrap();
    let (out, report) = apply_plan(&model, &analysis, &actions, &opts).unwrap();
    let g = out.graph.as_ref().unwrap();
    check(g).unwrap();
    assert_eq!(report.params_added, (W * W + W) as u64);
    let (x, m) = ([0.3, -1.2, 0.7], [0.1, 2.0, -0.5]);
    let (p, c) = (eval(plain.graph.as_ref().unwrap(), &x, &m), eval(g, &x, &m));
    let want = map.apply(&Activations {
        shape: vec![1, W],
        data: p[0].clone(),
    });
    for (a, b) in c[0].iter().zip(&want.data) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "{c:?} vs {want:?}"
        );
    }
    assert_ne!(c[0], p[0]);
    assert_eq!(c[1], p[1], "the pooler reads the uncompensated value");
    let adds: Vec<&str> = g.node.iter().rev().take(2).map(|n| n.op_type()).collect();
    assert!(
        adds.contains(&"MatMul") && adds.contains(&"Add"),
        "{adds:?}"
    );

    // A graph that declares its initializers as inputs declares the map's too.
    let declared: Vec<ValueInfoProto> = analysis
        .graph
        .initializer
        .iter()
        .map(|t| ValueInfoProto::fixed_tensor(t.name(), t.data_type(), &t.dims))
        .collect();
    analysis.graph.input.extend(declared);
    let (out, _) = apply_plan(&model, &analysis, &actions, &opts).unwrap();
    let g = out.graph.as_ref().unwrap();
    for t in g
        .initializer
        .iter()
        .filter(|t| t.name().contains("skrr_compensation"))
    {
        assert!(g.input.iter().any(|i| i.name() == t.name()), "{}", t.name());
    }
    check_interface(&analysis.graph, g).unwrap();
}
